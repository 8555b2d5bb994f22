"""Learning-rate schedules as plain factories ``(optimizer, ...) -> LambdaLR``, and ``param_groups``
(weight decay only on weight matrices).

``total_steps=None`` lets ``DiffusionModule`` pass the trainer's estimated number of optimiser steps.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional

from torch import nn
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


#: wrapper modules that insert a level into parameter names (FSDP units, activation checkpointing)
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def clean_param_name(name: str) -> str:
    """A parameter's name as in the unwrapped module (FSDP / checkpoint wrappers' levels removed)."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def param_groups(module: nn.Module, weight_decay: Optional[float] = None, no_decay_below_ndim: int = 2,
                 decay: Iterable[str] = (), ndims: Optional[Mapping[str, int]] = None) -> list[dict[str, Any]]:
    """Optimizer parameter groups of ``module``'s trainable parameters: those with ``ndim >=
    no_decay_below_ndim`` (weight matrices, embedding tables) first, decayed; the rest (biases, LayerNorm
    gains, other vectors and scalars) second, with ``weight_decay`` 0. Frozen parameters
    (``requires_grad=False``) are left out; a parameter shared by several submodules appears once.

    Args:
        module: the model.
        weight_decay: the decayed group's weight decay; None = the optimizer's own ``weight_decay``.
        no_decay_below_ndim: parameters with fewer dimensions get no decay (2: LD4LG's
            ``separate_weight_decayable_params``, the usual transformer recipe).
        decay: names (as in the unwrapped module's ``named_parameters``) decayed whatever their ndim; names
            the module does not have are ignored (e.g. an optional null vector that is switched off).
        ndims: each parameter's ndim by name, noted before a sharding wrapper flattened it (FSDP with
            ``use_orig_params=True`` shows the optimizer 1-D views of the shards); default ``p.ndim``.

    Empty groups are dropped, so the result always suits ``torch.optim`` (a module with no trainable
    parameter gives ``[]``, which it rejects as before).
    """
    forced = set(decay)
    known = ndims or {}
    decayed: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for raw, p in module.named_parameters():
        if not p.requires_grad:
            continue
        name = clean_param_name(raw)
        (decayed if known.get(name, p.ndim) >= no_decay_below_ndim or name in forced else plain).append(p)
    first: dict[str, Any] = {"params": decayed}
    if weight_decay is not None:
        first["weight_decay"] = float(weight_decay)
    return [g for g in (first, {"params": plain, "weight_decay": 0.0}) if g["params"]]
