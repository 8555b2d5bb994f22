"""Shared types: the batch layout every DataModule yields (and ``pad_sequences``, which builds it), the
callables the sampler takes and what it returns (``SampleOutput``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Sequence, TypedDict

import torch
from torch import Tensor


class Batch(TypedDict, total=False):
    """One collated batch. Shapes: B examples, L target positions, S source positions.

    Keys:
        ids: (B, L) long — the text to model (the target side for seq2seq).
        mask: (B, L) bool — True on real tokens (including BOS/EOS), False on padding.
        src_ids: (B, S) long — source tokens (seq2seq only).
        src_mask: (B, S) bool — True on real source tokens (seq2seq only).
        index: (B,) long — position of each example in its split (for references and order checks).
        labels: (B,) long — class ids (data with ``label_field``; class-conditional models, classifiers).
    """

    ids: Tensor
    mask: Tensor
    src_ids: Tensor
    src_mask: Tensor
    index: Tensor
    labels: Tensor


def pad_sequences(
    seqs: Sequence[Sequence[int]], pad_id: int, length: int | None = None
) -> tuple[Tensor, Tensor]:
    """Pad to ``length`` (default: the longest). Returns ids (B, L) long and mask (B, L) bool."""
    length = max(len(s) for s in seqs) if length is None else length
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.bool)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = True
    return ids, mask


class DenoiseFn(Protocol):
    """The network as the sampler sees it: ``(x_t, t, self_cond) -> model_out``.

    Shapes: ``x_t`` (B, L, D) float for Gaussian processes or (B, L) long for absorbing ones;
    ``t`` (B,) float in [0, 1]; ``self_cond`` the previous step's x0 estimate (same shape as the
    process's x0 estimate) or None; output (B, L, D) (x0/eps/v) or (B, L, V) logits.
    """

    def __call__(self, x_t: Tensor, t: Tensor, self_cond: Optional[Tensor]) -> Tensor: ...


X0Hook = Callable[[Tensor, Tensor], Tensor]
"""``(x0_hat, t) -> x0_hat``: post-processes the process's x0 estimate at time ``t`` (B,).

For a Gaussian process x0_hat is (B, L, D); for an absorbing process it is (B, L, V) log-probs."""


class StepHook(Protocol):
    """``(x_s, s, t, x0_hat, x_t) -> x_s``: runs after each reverse step x_t -> x_s (infilling, classifier
    guidance; ``textdiff.core.control``). s, t: (B,); x_t, x_s: the states before and after the step. A hook
    that ignores x0_hat says so with ``reads_x0 = False`` (a sampler then need not build it)."""

    def __call__(self, x_s: Tensor, s: Tensor, t: Tensor, x0_hat: Tensor, x_t: Tensor) -> Tensor: ...


@dataclass
class SampleOutput:
    """What ``Sampler.sample`` returns.

    Attributes:
        x: the final state: (B, L, D) float for Gaussian processes (equal to ``x0`` after the last step),
            (B, L) long for absorbing ones. With ``early_stop`` it is the state where the loop stopped.
        x0: the last x0 estimate after hooks: (B, L, D) or (B, L, V) log-probs. The absorbing
            reveal-first sampler computes it on first access (from the last network outputs it keeps),
            not at every step; the values are the same.
        nfe: number of denoiser calls made.
        row_evals: sequences passed through the denoiser, summed over calls (B x nfe without
            ``reuse_unchanged``; fewer with it, which recomputes only the sequences that changed).
        times: (K + 1,) the time grid (float64), from 1 to 0.
        trajectory: with ``keep_trajectory``, the state before each step and after the last (on CPU).
        x0_trajectory: with ``keep_trajectory``, each step's x0 estimate (on CPU).
    """

    x: Tensor
    x0: Tensor
    nfe: int
    times: Tensor
    trajectory: Optional[list[Tensor]] = None
    x0_trajectory: Optional[list[Tensor]] = field(default=None)
    row_evals: int = 0

    def __getattribute__(self, name: str) -> object:
        value = object.__getattribute__(self, name)
        if name == "x0" and type(value) is _Deferred:  # computed once, on first access
            value = value.compute()
            object.__setattr__(self, "x0", value)
        return value


class _Deferred:
    """A ``SampleOutput`` field computed on first access: ``compute()`` returns the tensor."""

    __slots__ = ("compute",)

    def __init__(self, compute: Callable[[], Tensor]) -> None:
        self.compute = compute
