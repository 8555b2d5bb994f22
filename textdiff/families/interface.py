"""What a model may offer beyond ``TextModule``, declared: each optional capability is a small
``Protocol`` that the run layer and the CLI test with ``isinstance`` (attribute presence, checked at run
time) instead of probing names with ``hasattr``. A family offers a capability by defining the method with
this signature; nothing needs registering.

Every ``TextModule`` has ``compute_loss``, ``sampling()``, ``load_weights`` and the ``conditional`` flag
(``families/base.py``); every ``DiffusionModule`` also has ``build_sampler`` and ``generate``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Protocol, Sequence, Union, runtime_checkable

from torch import Tensor

from textdiff.core.sampler import Sampler
from textdiff.core.types import Batch


@runtime_checkable
class Generates(Protocol):
    """Draws token ids: ``generate(num_samples, ...) -> (N, L)`` (unconditional) or
    ``generate(src_ids (B, S), src_mask (B, S), ...) -> (B, L)`` when ``conditional`` is True."""

    conditional: bool

    def generate(self, *args: Any, **kwargs: Any) -> Any: ...


@runtime_checkable
class BuildsSampler(Protocol):
    """A diffusion model: its configured ``Sampler`` with overrides (e.g. ``num_steps=2000``)."""

    def build_sampler(self, **overrides: Any) -> Sampler: ...


@runtime_checkable
class ReportsSampling(Protocol):
    """After ``generate``, what the run used beyond the sampler's settings (network evaluations per sequence,
    candidates, guidance weight, ...): written under ``sampler`` in ``metrics.json``."""

    last_sample_stats: dict[str, Any]


@runtime_checkable
class LabelsSamples(Protocol):
    """A class-conditional sampler: the class id asked of each row of the last ``generate`` (None before)."""

    last_labels: Optional[list[int]]


@runtime_checkable
class HasBound(Protocol):
    """A likelihood bound: ``nll_bound(batch) -> {"nll": (B,) nats, "tokens": (B,) counts[, "steps": K]}``."""

    def nll_bound(self, batch: Batch, **kwargs: Any) -> dict[str, Tensor]: ...


@runtime_checkable
class EvaluatesItself(Protocol):
    """A model whose evaluation is not sampling (classifiers, autoencoders): records and metrics on ``split``."""

    def evaluate_on(self, datamodule: Any, *, split: str = "test", num_examples: Optional[int] = None,
                    batch_size: int = 64, seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, Any]]: ...


@runtime_checkable
class ClassifiesTexts(Protocol):
    """A judge of class-conditional samples: the predicted class id (ids into ``classes``) of each raw text,
    under its own tokenizer."""

    classes: Optional[Sequence[str]]

    def classify_texts(self, texts: Sequence[str], tokenizer: Any, batch_size: int = 128,
                       max_len: Optional[int] = None) -> list[int]: ...


@runtime_checkable
class Reranks(Protocol):
    """Takes an autoregressive model that reranks its candidates (Difformer's ``select=rerank``)."""

    def set_reranker(self, model: Any) -> None: ...


@runtime_checkable
class Infills(Protocol):
    """Generates the blanks of templates: ``infill(context_ids (N, L), fill (N, L) bool, ...) -> (N, L)``."""

    def infill(self, context_ids: Tensor, fill: Tensor, **kwargs: Any) -> Tensor: ...


@runtime_checkable
class SavesArtifacts(Protocol):
    """Exports something beside its checkpoint after fit (LD4LG stage 0: the BART and its tokenizer)."""

    def save_artifacts(self, run_dir: Union[str, Path], tokenizer: Any = None) -> Path: ...


@runtime_checkable
class GuidesLatents(Protocol):
    """A classifier on a diffusion model's noisy latents: ``nll(label)`` is ClassifierGuidance's objective."""

    diffusion: Any

    def nll(self, label: Any) -> Any: ...
