"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper of the sampler's denoise function.

A conditional model trained with its condition dropped some of the time predicts both
``out_c = f(x_t, c)`` and ``out_u = f(x_t, null)``; sampling uses

    out = w * out_c + (1 - w) * out_u                       (Ho & Salimans 2022, eq. 6, with w = 1 + their w)

on the network output, whatever it parameterises (eps, v or x0 — linear in each other at fixed x_t
and t). w = 1 is the conditional model, w = 0 the unconditional one, w > 1 extrapolates away from
the unconditional prediction. LD4LG uses this form on its v-prediction (w = 2 for seq2seq).
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from textdiff.core.types import DenoiseFn


def guidance_combine(cond: Tensor, uncond: Tensor, weight: float) -> Tensor:
    """w * cond + (1 - w) * uncond (Ho & Salimans 2022 eq. 6). Both (B, ...) of one shape."""
    if cond.shape != uncond.shape:
        raise ValueError(f"conditional and unconditional outputs differ in shape: {tuple(cond.shape)} vs "
                         f"{tuple(uncond.shape)}")
    return uncond + weight * (cond - uncond)


class ClassifierFreeGuidance:
    """A ``DenoiseFn`` that combines a conditional and an unconditional denoise function.

    Args:
        cond: ``(x_t, t, self_cond) -> out`` with the condition (class, source text...).
        uncond: the same network with the condition replaced by its null value.
        weight: w; with w == 1 only ``cond`` is called (no extra network evaluation).

    Calling it returns the guided output (B, L, D); ``nfe`` counts the network calls made.
    """

    def __init__(self, cond: DenoiseFn, uncond: DenoiseFn, weight: float = 1.0) -> None:
        self.cond, self.uncond, self.weight = cond, uncond, float(weight)
        self.nfe = 0

    def __call__(self, x_t: Tensor, t: Tensor, self_cond: Optional[Tensor]) -> Tensor:
        out = self.cond(x_t, t, self_cond)
        self.nfe += 1
        if self.weight == 1.0:
            return out
        self.nfe += 1
        return guidance_combine(out, self.uncond(x_t, t, self_cond), self.weight)
