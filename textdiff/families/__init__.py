"""One LightningModule per paper; each composes the shared core. Importing this loads Lightning
(DiffusionBERT, MDLM and the LD4LG stages, which need transformers, load on first use)."""
from typing import Any

from textdiff.families.autoregressive import Autoregressive
from textdiff.families.base import EMA, DiffusionModule, TextModule
from textdiff.families.classifier import TextClassifier
from textdiff.families.difformer import Difformer
from textdiff.families.diffusion_lm import DiffusionLM
from textdiff.families.interface import SamplingRun
from textdiff.families.reference import DegenerateReference

__all__ = ["EMA", "Autoregressive", "BartDenoiser", "DegenerateReference", "DiffusionBERT", "DiffusionLM", "Difformer",
           "DiffusionModule", "LD4LG", "LatentAutoencoder", "MDLM", "NoisyClassifier", "SamplingRun", "TextClassifier",
           "TextModule"]


def __getattr__(name: str) -> Any:
    if name == "DiffusionBERT":
        from textdiff.families.diffusion_bert import DiffusionBERT

        return DiffusionBERT
    if name == "MDLM":
        from textdiff.families.mdlm import MDLM

        return MDLM
    if name == "NoisyClassifier":
        from textdiff.families.control import NoisyClassifier

        return NoisyClassifier
    if name in ("BartDenoiser", "LatentAutoencoder", "LD4LG"):
        from textdiff.families import ld4lg

        return getattr(ld4lg, name)
    raise AttributeError(f"module 'textdiff.families' has no attribute {name!r}")
