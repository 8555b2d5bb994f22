"""textdiff: diffusion models of text on one shared core.

Importing the package is cheap: the heavy pieces (Lightning, transformers) load on first use, and
nothing here imports Hydra or touches the network.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (loaded lazily on first attribute access)
_EXPORTS = {
    # core (pure torch)
    "NoiseSchedule": "textdiff.core.schedules",
    "SqrtSchedule": "textdiff.core.schedules",
    "CosineSchedule": "textdiff.core.schedules",
    "CosineSquaredSchedule": "textdiff.core.schedules",
    "DDPMLinearSchedule": "textdiff.core.schedules",
    "VPLinearSchedule": "textdiff.core.schedules",
    "LogLinearSchedule": "textdiff.core.schedules",
    "MutualSchedule": "textdiff.core.schedules",
    "DiscreteSchedule": "textdiff.core.schedules",
    "SpindleSchedule": "textdiff.core.schedules",
    "GaussianProcess": "textdiff.core.gaussian",
    "AbsorbingProcess": "textdiff.core.absorbing",
    "Sampler": "textdiff.core.sampler",
    "SampleOutput": "textdiff.core.sampler",
    "ClampToEmbeddings": "textdiff.core.hooks",
    "L2Renormalize": "textdiff.core.hooks",
    "LogitFilter": "textdiff.core.hooks",
    # networks
    "TransformerDenoiser": "textdiff.nn.transformer",
    "TimeConditionedBert": "textdiff.nn.bert",
    "DifformerNet": "textdiff.nn.difformer",
    "LengthPredictor": "textdiff.nn.length",
    "ARTransformer": "textdiff.nn.autoregressive",
    # families
    "TextModule": "textdiff.families.base",
    "DiffusionModule": "textdiff.families.base",
    "Difformer": "textdiff.families.difformer",
    "Autoregressive": "textdiff.families.autoregressive",
    "DiffusionLM": "textdiff.families.diffusion_lm",
    "DiffusionBERT": "textdiff.families.diffusion_bert",
    "MDLM": "textdiff.families.mdlm",
    "DegenerateReference": "textdiff.families.reference",
    "SamplingRun": "textdiff.families.interface",
    # data
    "TextDataModule": "textdiff.data.datamodule",
    "Seq2SeqDataModule": "textdiff.data.seq2seq",
    "WordTokenizer": "textdiff.data.tokenizers",
    "HFTokenizer": "textdiff.data.tokenizers",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'textdiff' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
