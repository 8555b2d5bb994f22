"""Categorical draws of the samplers, in one place: ``sample_categorical``.

Every token the absorbing samplers (``Sampler``: the schedule's ancestral and posterior steps, the reveal-first
step, the parallel-unmasking policies) and the autoregressive baseline (``Autoregressive.sample``) draw goes
through it, by one of two methods, each the one its path used before, so that the default draws are unchanged:

- "multinomial": ``torch.multinomial`` on exp(logits), one draw per row: torch's exponential race, argmax_v p_v / q_v
  with q_v ~ Exp(1) (one value per entry from the generator);
- "inverse_cdf": softmax, cumulative sum, one uniform per draw scaled to the row's total (or to the mass of the
  first ``support`` entries), the first entry whose cumulative probability reaches it (one value per draw).

``float64=True`` casts the logits to float64 before they are exponentiated or normalised and draws the uniforms
in float64 (LLaDA's ``generate.py`` ``add_gumbel_noise`` does the same for its Gumbel-max, citing Zheng et al.
2024, arXiv:2409.02908: low-precision Gumbel-max lowers the effective temperature, which flatters perplexity and
costs diversity). In float32:

- "inverse_cdf" rounds cumulative probabilities near 1 to float32's 2^-24 ~ 6e-8 grid (and its uniforms lie on
  that grid everywhere), so a token of ~2e-8 after the bulk of the mass gets an interval of zero or one grid step:
  never drawn, or three times too often (measured in ``tests/core/test_categorical.py``). The total of a stretch
  of such tokens stays right on the CPU, whose cumsum accumulates in float64; a float32 accumulation (CUDA) can
  drop it altogether.
- "multinomial" is exact up to rounding on the CPU, where torch draws the Exp(1) values at float64 precision: the
  float32 and float64 draws were the same ids for the same seed in every case measured. On CUDA the float32 Exp(1)
  values are -log u of float32 uniforms u (PyTorch's ``exponential_kernel_cuda``), which near 0 take multiples of
  ~6e-8 only, so tokens below ~1e-7 of the peak are mis-sampled, as with a float32 Gumbel-max.

float64 "inverse_cdf" draws use float64 uniforms (other ids for the same seed); float64 "multinomial" draws consume
the generator as float32 ones do (on the CPU: the same ids). Both cost twice the memory of the rows they touch.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

METHODS = ("multinomial", "inverse_cdf")


def sample_categorical(logits: Tensor, *, generator: Optional[torch.Generator] = None, float64: bool = False,
                       method: str = "multinomial", support: Optional[Tensor] = None,
                       num_samples: Optional[int] = None) -> Tensor:
    """Draw from the categoricals whose log-weights are the rows of ``logits``.

    Args:
        logits: (n, m) unnormalised log-probabilities of n categoricals over m outcomes; log-probabilities (the
            samplers' x0 rows) are fine. "multinomial" exponentiates them as they are (no max subtracted, as
            before this helper), so they must stay below ~88 in float32.
        generator: the ``torch.Generator`` of the draws (None: the global one).
        float64: cast ``logits`` to float64 before ``exp`` / ``softmax`` and draw the uniforms in float64 (see the
            module docstring); False keeps the draws (and the generator's consumption) as before.
        method: "multinomial" or "inverse_cdf" (see the module docstring).
        support: "inverse_cdf" only: (n,) long in [1, m], row i is drawn among its first ``support[i]`` entries,
            renormalised (DiffusionBERT's filtered posterior when [MASK] is among the k largest); None: all m.
        num_samples: S independent draws per row, returned as (n, S); None: one draw per row, returned as (n,).

    Returns: (n,) or (n, S) long ids in [0, m).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if logits.dim() != 2:
        raise ValueError(f"logits must be (n, m), got shape {tuple(logits.shape)}")
    draws = 1 if num_samples is None else int(num_samples)
    if draws < 1:
        raise ValueError(f"num_samples must be >= 1 (or None), got {num_samples}")
    if method == "multinomial":
        if support is not None:
            raise ValueError("support applies to method='inverse_cdf' only")
        probs = (logits.double() if float64 else logits).exp()
        if draws > 1:  # S rows per categorical, one exponential race each
            probs = probs.repeat_interleave(draws, 0)
        ids = torch.multinomial(probs, 1, generator=generator).view(-1, draws)
    else:
        dtype = torch.float64 if float64 else torch.float32
        cdf = torch.softmax(logits.to(dtype), -1).cumsum(-1)  # (n, m), non-decreasing
        limit = cdf[:, -1:] if support is None else cdf.gather(1, support.view(-1, 1) - 1)
        w = torch.rand(cdf.shape[0], draws, generator=generator, device=cdf.device, dtype=dtype) * limit
        # the number of entries whose cumulative probability is below w: the first one that reaches it
        ids = torch.searchsorted(cdf, w).clamp_max_(cdf.shape[-1] - 1)
    return ids.squeeze(1) if num_samples is None else ids
