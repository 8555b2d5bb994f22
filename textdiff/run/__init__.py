"""The run layer: what evaluates, checkpoints and reloads a *built* model, with no Hydra.

* :mod:`textdiff.run.evaluation`: sample, score and write ``samples.jsonl`` / ``metrics.json``.
* :mod:`textdiff.run.callbacks`: Lightning callbacks (periodic sample-and-score, the step progress bar).
* :mod:`textdiff.run.checkpoint`: atomic checkpoint writes, ``last.ckpt``, finding a run's checkpoint.
* :mod:`textdiff.run.compilation`: ``torch.compile`` of a model's networks.

Layers (imports point down): core < nn < data < metrics < families < run < cli. The Hydra work
(composing a config, instantiating it, rebuilding a run from its ``config.yaml``) lives in
:mod:`textdiff.cli`. Re-exports are lazy: importing ``textdiff.run`` loads nothing heavy.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "evaluate": "textdiff.run.evaluation",
    "evaluate_conditional": "textdiff.run.evaluation",
    "evaluate_unconditional": "textdiff.run.evaluation",
    "generate_texts": "textdiff.run.evaluation",
    "sampler_of": "textdiff.run.evaluation",
    "score_with_judges": "textdiff.run.evaluation",
    "write_outputs": "textdiff.run.evaluation",
    "SampleAndScore": "textdiff.run.callbacks",
    "StepProgressBar": "textdiff.run.callbacks",
    "AtomicCheckpointIO": "textdiff.run.checkpoint",
    "LastCheckpoint": "textdiff.run.checkpoint",
    "atomic_torch_save": "textdiff.run.checkpoint",
    "find_checkpoint": "textdiff.run.checkpoint",
    "checkpoint_family": "textdiff.run.checkpoint",
    "compile_networks": "textdiff.run.compilation",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'textdiff.run' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
