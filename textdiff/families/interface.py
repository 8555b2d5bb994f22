"""What a model may offer beyond ``TextModule``, declared: each optional capability is a small
``Protocol`` that the run layer and the CLI test with ``isinstance`` (attribute presence, checked at run
time) instead of probing names with ``hasattr``. A family offers a capability by defining the method with
this signature; nothing needs registering.

Every ``TextModule`` has ``compute_loss``, ``sampling()``, ``load_weights`` and the ``conditional`` flag
(``families/base.py``); every ``DiffusionModule`` also has ``build_sampler``, ``generate_run`` (-> ``SamplingRun``)
and ``generate`` (its ids).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence, Union, runtime_checkable

from torch import Tensor

from textdiff.core.absorbing import AbsorbingProcess
from textdiff.core.sampler import SampleOutput, Sampler
from textdiff.core.types import Batch


@dataclass
class SamplingRun:
    """What one ``generate_run`` call made and how.

    Attributes:
        ids: (N, L) long token ids (BOS/EOS/PAD as the family frames its outputs).
        sampler: the ``Sampler`` that ran (its settings: ``num_steps``, ``eta``, ``spacing``, ...); None for the
            autoregressive baseline.
        nfe: network evaluations per generated sequence (K for a plain K-step run; fewer with the absorbing
            cache; twice K under classifier-free guidance; the decoding steps of the AR baseline).
        seconds: wall-clock seconds of the call.
        labels: the class id asked of each row (class-conditional sampling), else None.
        details: the family's other settings of this call, JSON-ready (candidates, guidance weight, ...).
        output: the last batch's ``SampleOutput`` (final state, x0 estimate, trajectory), None without one.
        extras: tensors beside the ids (Difformer: "candidates"; LD4LG: "latents" (N, n, d)).
    """

    ids: Tensor
    sampler: Optional[Sampler] = None
    nfe: Optional[float] = None
    seconds: float = 0.0
    labels: Optional[list[int]] = None
    details: dict[str, Any] = field(default_factory=dict)
    output: Optional[SampleOutput] = None
    extras: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        """``metrics.json``'s ``sampler`` entry: the sampler's settings, the network evaluations per sequence and
        the family's details ({} details and no settings for a model without a sampler)."""
        s = self.sampler
        settings = {} if s is None else {"num_steps": s.num_steps, "eta": s.eta, "spacing": s.spacing,
                                         "variance": s.variance, "early_stop": s.early_stop}
        if s is not None and isinstance(s.process, AbsorbingProcess):
            settings.update(reuse_unchanged=s.reuse_unchanged, reveal_first=s.reveal_first,
                            closed_form_posterior=s.closed_form_posterior and s.unmask == "schedule",
                            unmask=s.unmask, float64=s.float64)
            if s.unmask != "schedule":  # a parallel-decoding policy (textdiff.core.unmasking)
                settings.update(confidence=s.confidence, block_length=s.block_length, draw=s.draw,
                                **({"threshold": s.threshold} if s.unmask == "threshold" else {}))
        elif s is not None:
            settings["solver"] = s.solver or "ddim"
        return {**settings, **({"nfe_per_sequence": round(self.nfe, 3)} if self.nfe is not None else {}),
                **self.details}


@runtime_checkable
class Generates(Protocol):
    """Draws token ids: ``generate_run(num_samples, ...) -> SamplingRun`` of (N, L) ids (unconditional) or
    ``generate_run(src_ids (B, S), src_mask (B, S), ...)`` of (B, L) ids when ``conditional`` is True;
    ``generate(...)`` returns the run's ids only."""

    conditional: bool

    def generate_run(self, *args: Any, **kwargs: Any) -> SamplingRun: ...

    def generate(self, *args: Any, **kwargs: Any) -> Tensor: ...


@runtime_checkable
class BuildsSampler(Protocol):
    """A diffusion model: its configured ``Sampler`` with overrides (e.g. ``num_steps=2000``), which
    ``generate_run(..., sampler=...)`` takes."""

    def build_sampler(self, **overrides: Any) -> Sampler: ...


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
