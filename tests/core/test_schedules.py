import math

import pytest
import torch

from textdiff.core import (
    CosineSchedule, CosineSquaredSchedule, DDPMLinearSchedule, DiscreteSchedule, GaussianProcess,
    LogLinearSchedule, MutualSchedule, SpindleSchedule, SqrtSchedule, VPLinearSchedule,
)

CONTINUOUS = {
    "sqrt": (SqrtSchedule(), 1e-6),
    "cosine": (CosineSchedule(), 1e-6),
    "cosine_squared": (CosineSquaredSchedule(), 1e-6),
    "ddpm_linear": (DDPMLinearSchedule(), 1e-4),
    "vp_linear": (VPLinearSchedule(), 1e-4),
    "loglinear": (LogLinearSchedule(eps=1e-3), 1.1e-3),
    "mutual": (MutualSchedule(), 1e-6),
}


@pytest.mark.parametrize("name", list(CONTINUOUS))
def test_endpoints_and_monotone(name):
    sched, tol = CONTINUOUS[name]
    ends = sched.alpha_bar(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert ends[0] == pytest.approx(1.0, abs=1e-6)
    assert ends[1] == pytest.approx(0.0, abs=tol)
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    a = sched.alpha_bar(t)
    assert torch.all(a[1:] <= a[:-1] + 1e-12), "abar must not increase with t"
    assert torch.all((a >= 0) & (a <= 1))
    lsnr = sched.log_snr(t)
    assert torch.all(lsnr[1:] <= lsnr[:-1] + 1e-9)


@pytest.mark.parametrize("name", ["cosine", "vp_linear", "loglinear", "mutual", "cosine_squared"])
def test_loss_weight_positive_and_matches_derivative(name):
    sched, _ = CONTINUOUS[name]
    t = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], dtype=torch.float64)
    w = sched.loss_weight(t)
    assert torch.all(w > 0)
    h = 1e-6
    deriv = (sched.alpha_bar(t + h) - sched.alpha_bar(t - h)) / (2 * h)
    torch.testing.assert_close(w, -deriv / (1 - sched.alpha_bar(t)), rtol=1e-4, atol=1e-8)


def test_mutual_loss_weight_is_one_over_t():
    t = torch.tensor([0.1, 0.25, 0.5, 1.0])
    torch.testing.assert_close(MutualSchedule().loss_weight(t), 1 / t)


def test_discretised_sqrt_matches_official_numbers():
    T, s = 2000, 1e-4
    d = DiscreteSchedule(SqrtSchedule(s=s), num_steps=T)
    # ALGORITHMS.md §2: abar_0 = 0.9854 (sigma_0 ~ 0.121), last beta clipped to 0.999, abar_{T-1} ~ 2e-7
    assert d.abar_grid[1].item() == pytest.approx(0.9854, abs=1e-4)
    assert math.sqrt(1 - d.abar_grid[1].item()) == pytest.approx(0.121, abs=1e-3)
    assert d.betas[-1].item() == pytest.approx(0.999)
    assert d.abar_grid[-1].item() == pytest.approx(2.02e-7, rel=1e-2)
    i = torch.arange(T - 1, dtype=torch.float64)
    closed = (1 - torch.sqrt((i + 1) / T + s)) / (1 - math.sqrt(s))  # official closed form
    torch.testing.assert_close(d.abar_grid[1:T], closed, rtol=1e-9, atol=1e-12)
    assert torch.all(d.betas <= 0.999) and torch.all(d.betas > 0)


def test_discrete_alpha_bar_maps_chain_index_to_t():
    d = DiscreteSchedule(CosineSchedule(), num_steps=100)
    t = torch.tensor([0.0, 0.01, 0.5, 1.0])
    torch.testing.assert_close(d.alpha_bar(t).double(), d.abar_grid[[0, 1, 50, 100]], rtol=1e-6, atol=0)
    u = torch.rand(1000, dtype=torch.float64)
    tt = d.training_times(u)
    k = tt * 100
    assert torch.allclose(k, k.round()) and k.min() >= 1 and k.max() <= 100


def test_ddpm_linear_betas_exact():
    d = DiscreteSchedule(DDPMLinearSchedule(1e-4, 0.02, num_steps=1000), num_steps=1000)
    torch.testing.assert_close(d.betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), rtol=1e-9, atol=1e-12)


def test_ddpm_linear_continuous_limit_is_vp_linear():
    fine = DDPMLinearSchedule(num_steps=20000)
    t = torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64)
    torch.testing.assert_close(fine.alpha_bar(t), VPLinearSchedule(0.1, 20.0).alpha_bar(t), rtol=2e-3, atol=1e-6)


def test_respacing_matches_improved_diffusion():
    d = DiscreteSchedule(SqrtSchedule(), num_steps=2000)
    times = d.sampling_times(20)
    assert times.shape == (21,) and times[0] == 1.0 and times[-1] == 0.0
    idx = (times[:-1] * 2000 - 1).round().long().tolist()
    stride = 1999 / 19
    assert sorted(idx) == sorted({round(k * stride) for k in range(20)})
    assert sorted(idx)[:3] == [0, 105, 210] and max(idx) == 1999
    full = d.sampling_times(2000)
    assert torch.allclose(full, torch.arange(2000, -1, -1, dtype=torch.float64) / 2000)
    ddim = d.sampling_times(20, spacing="ddim")
    assert sorted((ddim[:-1] * 2000 - 1).round().long().tolist()) == list(range(0, 2000, 100))
    with pytest.raises(ValueError, match="num_steps"):
        d.sampling_times(3000)
    even = DiscreteSchedule(MutualSchedule(), 2048, max_beta=1.0).sampling_times(2, spacing="even")
    assert even.tolist() == [1.0, 0.5, 0.0]  # DiffusionBERT: t = T, T - k, ..., 0 with k = T / K
    assert (DiscreteSchedule(MutualSchedule(), 10, max_beta=1.0).sampling_times(3, spacing="even").tolist()
            == [1.0, 0.7, 0.3, 0.0])


def test_continuous_sampling_times():
    times = CosineSchedule().sampling_times(4)
    torch.testing.assert_close(times, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="spacing"):
        CosineSchedule().sampling_times(4, spacing="ddim")


def test_continuous_even_spacing_is_the_uniform_grid():
    """"even" (the absorbing samplers' K equal strides from t = 1 to 0) on a continuous schedule (MDLM's log-linear)
    is the uniform grid, so conf/sampler/absorbing.yaml serves discrete and continuous absorbing families alike."""
    sched = LogLinearSchedule()
    for k in (1, 3, 128):
        assert torch.equal(sched.sampling_times(k, spacing="even"), sched.sampling_times(k))
    assert sched.sampling_times(4, spacing="even").tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_cosine_squared_scale_shifts_log_snr():
    t = torch.tensor([0.2, 0.5, 0.8])
    base, shifted = CosineSquaredSchedule(scale=1.0), CosineSquaredSchedule(scale=0.1)
    torch.testing.assert_close(shifted.log_snr(t), base.log_snr(t) + 2 * math.log(0.1))
    # the logSNR clamp at +-15 (LD4LG)
    assert base.log_snr(torch.tensor([0.0]))[0].item() == pytest.approx(15.0)


def _spindle(lam=0.3):
    weight = torch.tensor([0.0, 1.0, 0.9, 0.2, 0.1, 0.5])  # id 0 = pad
    return SpindleSchedule(DiscreteSchedule(MutualSchedule(), 100, max_beta=1.0), weight, lam=lam, pad_id=0)


def test_spindle_keeps_frequent_tokens_longer():
    sp = _spindle()
    x0 = torch.tensor([[1, 2, 3, 4, 0, 0]])
    t = torch.tensor([0.5])
    p = sp.alpha_bar(t, x0)
    assert p.shape == (1, 6)
    f = torch.tensor([1.0, 0.9, 0.2, 0.1])
    expected = 0.5 + 0.3 * math.sin(math.pi * 0.5) * (f - f.mean())  # mean over non-pad tokens only
    torch.testing.assert_close(p[0, :4], expected)
    assert p[0, 0] > p[0, 3]
    assert torch.all(sp.alpha_bar(torch.tensor([0.0]), x0) == 1.0)
    assert torch.all(sp.alpha_bar(torch.tensor([0.01]), x0) <= 0.999)
    assert torch.all(sp.alpha_bar(torch.tensor([1.0]), x0) == 0.0)
    flat = _spindle(lam=0.0).alpha_bar(t, x0)
    torch.testing.assert_close(flat, torch.full_like(flat, 0.5))


def test_incompatible_components_raise():
    with pytest.raises(TypeError, match="token-dependent"):
        GaussianProcess(_spindle())
    with pytest.raises(TypeError, match="token-independent"):
        DiscreteSchedule(_spindle(), 10)
    with pytest.raises(ValueError, match="needs x0"):
        _spindle().alpha_bar(torch.tensor([0.5]))


def test_spindle_weights_set_later_and_reloaded():
    sp = SpindleSchedule(DiscreteSchedule(MutualSchedule(), 10, max_beta=1.0))
    with pytest.raises(RuntimeError, match="set_token_weight"):
        sp.alpha_bar(torch.tensor([0.5]), torch.tensor([[1, 2]]))
    sp.set_token_weight(torch.tensor([0.0, 0.2, 0.8]))
    fresh = SpindleSchedule(DiscreteSchedule(MutualSchedule(), 10, max_beta=1.0))
    fresh.load_state_dict(sp.state_dict())
    x0 = torch.tensor([[1, 2]])
    torch.testing.assert_close(fresh.alpha_bar(torch.tensor([0.5]), x0), sp.alpha_bar(torch.tensor([0.5]), x0))


def test_spindle_and_discrete_loss_weights_match_finite_differences():
    """-p'(t) / (1 - p(t)) of the spindle's per-token keep-probability, against central differences of
    alpha_bar; a discretised schedule uses its continuous curve's weight (the grid has no derivative)."""
    torch.manual_seed(0)
    sched = SpindleSchedule(MutualSchedule(), token_weight=torch.rand(12), lam=0.3, pad_id=0)
    x0 = torch.randint(1, 12, (4, 7))
    x0[:, -2:] = 0
    t, h = torch.tensor([0.15, 0.4, 0.6, 0.85], dtype=torch.float64), 1e-5
    p = sched.alpha_bar(t, x0).double()
    dp = (sched.alpha_bar(t + h, x0).double() - sched.alpha_bar(t - h, x0).double()) / (2 * h)
    torch.testing.assert_close(sched.loss_weight(t, x0).double(), -dp / (1 - p), rtol=1e-3, atol=1e-4)
    grid = DiscreteSchedule(MutualSchedule(), 64, max_beta=1.0)
    torch.testing.assert_close(grid.loss_weight(t), 1 / t)
