"""One LightningModule per paper; each composes the shared core. Importing this loads Lightning
(DiffusionBERT, which needs transformers, loads on first use)."""
from typing import Any

from textdiff.families.autoregressive import Autoregressive
from textdiff.families.base import EMA, DiffusionModule, TextModule
from textdiff.families.difformer import Difformer
from textdiff.families.diffusion_lm import DiffusionLM

__all__ = ["EMA", "Autoregressive", "DiffusionBERT", "DiffusionLM", "Difformer", "DiffusionModule", "TextModule"]


def __getattr__(name: str) -> Any:
    if name == "DiffusionBERT":
        from textdiff.families.diffusion_bert import DiffusionBERT

        return DiffusionBERT
    raise AttributeError(f"module 'textdiff.families' has no attribute {name!r}")
