"""Learning-rate schedules as plain factories ``(optimizer, ...) -> LambdaLR``.

``total_steps=None`` lets ``DiffusionModule`` pass the trainer's estimated number of optimiser steps.
"""
from __future__ import annotations

import math
from typing import Optional

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _need(total_steps: Optional[int]) -> int:
    if total_steps is None or total_steps < 0:
        raise ValueError("total_steps is unknown: pass it, or let DiffusionModule fill it from the trainer")
    return max(1, int(total_steps))  # 0 (e.g. max_steps=0, evaluation only) never steps the schedule


def linear_warmup_decay(optimizer: Optimizer, warmup_steps: int = 0, total_steps: Optional[int] = None,
                        final_ratio: float = 0.0) -> LambdaLR:
    """Linear warm-up from 0 over ``warmup_steps``, then linear decay to ``final_ratio`` x lr at
    ``total_steps`` (Diffusion-LM's "linear" anneal; LD4LG's autoencoder)."""
    total = _need(total_steps)

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        frac = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
        return 1.0 - (1.0 - final_ratio) * frac

    return LambdaLR(optimizer, f)


def cosine_warmup_decay(optimizer: Optimizer, warmup_steps: int = 0, total_steps: Optional[int] = None,
                        final_ratio: float = 0.0) -> LambdaLR:
    """Linear warm-up, then cosine decay to ``final_ratio`` x lr (LD4LG's diffusion model)."""
    total = _need(total_steps)

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        frac = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * frac))

    return LambdaLR(optimizer, f)


def inverse_sqrt(optimizer: Optimizer, warmup_steps: int = 4000, warmup_init_ratio: float = 0.0) -> LambdaLR:
    """fairseq's inverse_sqrt (Difformer): linear warm-up from ``warmup_init_ratio`` x lr, then
    lr * sqrt(warmup_steps / step)."""

    def f(step: int) -> float:
        step = step + 1
        if step < warmup_steps:
            return warmup_init_ratio + (1 - warmup_init_ratio) * step / warmup_steps
        return math.sqrt(warmup_steps / step)

    return LambdaLR(optimizer, f)


def constant_warmup(optimizer: Optimizer, warmup_steps: int = 0) -> LambdaLR:
    """Linear warm-up, then constant (MDLM)."""
    return LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, warmup_steps)))
