"""The core's schedules against the official code that each family uses, written out here independently in
float64 Python: improved-diffusion's ``betas_for_alpha_bar`` over Diffusion-LM's / Difformer's sqrt and cosine
curves, Difformer's variance-preserving rescaling (``--vp-rf``), D3PM's mutual-information chain and LD4LG's
continuous cos^2 schedule with its logSNR clamp and shift."""
from __future__ import annotations

import math

import pytest
import torch

from textdiff.core import (
    CosineSchedule, CosineSquaredSchedule, DiscreteSchedule, GaussianProcess, MutualSchedule, SqrtSchedule,
)

T = 2000


def betas_for_alpha_bar(num_steps, alpha_bar, max_beta=0.999):
    """improved-diffusion ``gaussian_diffusion.betas_for_alpha_bar``: beta_i = min(1 - abar((i+1)/T) / abar(i/T),
    max_beta)."""
    return [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)]


def cumprod(betas):
    out, p = [], 1.0
    for b in betas:
        p *= 1 - b
        out.append(p)
    return out


def official_curve(name, rescaling_factor=1.0):
    """Difformer ``utils.get_named_beta_schedule`` (Diffusion-LM's sqrt is the same curve), as alpha_bar(t)."""
    if name == "sqrt":
        def alpha_bar(t):
            return 1 - math.sqrt(t + 0.0001)
    elif name == "cosine":
        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    else:
        raise ValueError(name)
    f2 = rescaling_factor**2
    return lambda t: alpha_bar(t) / (f2 - (f2 - 1) * alpha_bar(t))


def _ours(schedule, idx):
    return schedule.alpha_bar(torch.tensor([(i + 1) / T for i in idx], dtype=torch.float64)).double()


IDX = [0, 1, 9, 99, 199, 999, 1500, 1998, 1999]


@pytest.mark.parametrize("name,ours", [("sqrt", SqrtSchedule()), ("cosine", CosineSchedule())])
def test_discretised_curves_match_betas_for_alpha_bar(name, ours):
    official = cumprod(betas_for_alpha_bar(T, official_curve(name)))
    got = _ours(DiscreteSchedule(ours, T), IDX)
    want = torch.tensor([official[i] for i in IDX], dtype=torch.float64)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-15)
    if name == "sqrt":  # Diffusion-LM's numbers (ALGORITHMS.md §2)
        assert float(got[0]) == pytest.approx(0.9854, abs=1e-4) and float(got[-1]) < 3e-7


@pytest.mark.parametrize("name,ours", [("sqrt", SqrtSchedule()), ("cosine", CosineSchedule())])
@pytest.mark.parametrize("factor", [4.0, 3.5])
def test_variance_preserving_factor_rescales_before_discretising(name, ours, factor):
    """Difformer ``--vp-rf --rescaling-factor F``: abar / (F^2 - (F^2 - 1) abar) on the raw continuous curve,
    then ``betas_for_alpha_bar``; the process is variance-preserving (sigma^2 = 1 - abar)."""
    official = cumprod(betas_for_alpha_bar(T, official_curve(name, factor)))
    proc = GaussianProcess(DiscreteSchedule(ours, T), noise_factor=factor, variance_preserving=True)
    t = torch.tensor([(i + 1) / T for i in IDX])
    a, sigma = proc.coefs(t)
    want = torch.tensor([official[i] for i in IDX])
    assert torch.allclose(a.double() ** 2, want.double(), rtol=2e-5, atol=1e-12)
    assert torch.allclose(a**2 + sigma**2, torch.ones_like(a), atol=1e-6)
    # the sampling twin with another factor (Difformer's decoding --decoding-rescaling-factor) gets its own chain
    twin = GaussianProcess(DiscreteSchedule(ours, T), noise_factor=factor, sample_noise_factor=1.0,
                           variance_preserving=True).for_sampling()
    plain = cumprod(betas_for_alpha_bar(T, official_curve(name, 1.0)))
    assert torch.allclose(twin.coefs(t)[0].double() ** 2, torch.tensor([plain[i] for i in IDX]).double(),
                          rtol=2e-5, atol=1e-12)


def test_mutual_chain_is_d3pm_mutual_information():
    """D3PM / DiffusionBERT ``create_discrete_diffusion_schedule("mutual")``: beta_k = 1 / (T - k), so the state
    (cumulative keep-probability) is 1 - k / T, with state[T] = 0 (``_create_state``)."""
    n = 2048
    sched = DiscreteSchedule(MutualSchedule(), n, max_beta=1.0)
    state = [1.0]
    for k in range(n):
        state.append(state[-1] * (1 - 1 / (n - k)))
    state[-1] = 0.0
    ks = [0, 1, 16, 512, 1024, 2000, 2047, 2048]
    got = sched.alpha_bar(torch.tensor([k / n for k in ks], dtype=torch.float64)).double()
    assert torch.allclose(got, torch.tensor([state[k] for k in ks], dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_cosine_squared_is_ld4lg_time_to_alpha(scale):
    """LD4LG ``time_to_alpha``: ``cosine_schedule`` (clamped at 1e-9) -> ``alpha_to_shifted_log_snr`` (log-SNR
    clamped to +-15, then + 2 ln scale) -> ``log_snr_to_alpha`` (sigmoid); continuous time, no discretisation."""
    ts = [0.0, 1e-4, 0.01, 0.25, 0.5, 0.75, 0.99, 1.0]

    def official(t):
        a = max(math.cos(t * math.pi / 2) ** 2, 1e-9)
        log_snr = min(max(math.log(a) - math.log(max(1 - a, 1e-300)), -15.0), 15.0) + 2 * math.log(scale)
        return 1 / (1 + math.exp(-log_snr))

    got = CosineSquaredSchedule(scale=scale).alpha_bar(torch.tensor(ts, dtype=torch.float64)).double()
    assert torch.allclose(got, torch.tensor([official(t) for t in ts], dtype=torch.float64), rtol=1e-6, atol=1e-9)
