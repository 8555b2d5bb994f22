"""DPM-Solver++(2M) (``Sampler(solver="dpmpp_2m")``, ``GaussianProcess.dpm_solver_step``) on a Gaussian toy whose
x0 posterior mean and probability-flow ODE solution are closed form: data x0 ~ N(mu, s^2) per dimension, so that

    E[x0 | x_t] = mu + a s^2 / (a^2 s^2 + sigma^2) (x_t - a mu),
    PF-ODE: x_t -> x_u = a_u mu + sqrt(a_u^2 s^2 + sigma_u^2) (x_t - a_t mu) / sqrt(a_t^2 s^2 + sigma_t^2)

(the flow keeps each point's standardised value; at u = 0, a = 1, sigma = 0 it is mu + s (x_T - a_T mu) / sqrt(...)).
"""
from functools import partial
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from textdiff.core import (
    AbsorbingProcess, ClampToEmbeddings, CosineSchedule, CosineSquaredSchedule, DiscreteSchedule, GaussianProcess,
    MutualSchedule, Sampler, SqrtSchedule, VPLinearSchedule,
)

MU, STD = 0.7, 0.5  # the toy data's mean and standard deviation per dimension
SHAPE = (16, 4, 8)  # (B, L, D)


def posterior_mean_denoiser(process: GaussianProcess, calls: list | None = None):
    """``denoise(x_t, t, sc)`` returning the network output (x0, eps or v, as the process predicts) whose x0 is the
    exact E[x0 | x_t] of the toy, with the process's own (a, sigma) at t (so F and ``for_sampling`` included)."""

    def denoise(x, t, sc):
        if calls is not None:
            calls.append(float(t[0]))
        a, sig = (c.to(x.dtype).view(-1, 1, 1) for c in process.coefs(t))
        x0 = MU + a * STD**2 / (a**2 * STD**2 + sig**2) * (x - a * MU)
        if process.prediction == "x0":
            return x0
        eps = (x - a * x0) / sig
        return eps if process.prediction == "eps" else a * eps - sig * x0

    return denoise


def ode_solution(process: GaussianProcess, x_t: torch.Tensor, t: float, u: float) -> torch.Tensor:
    """The PF-ODE's exact map x_t -> x_u for the toy data (float64)."""
    (a_t, s_t), (a_u, s_u) = ((c.double().item() for c in process.coefs(torch.tensor([v]))) for v in (t, u))
    z = (x_t.double() - a_t * MU) / (a_t**2 * STD**2 + s_t**2) ** 0.5
    return a_u * MU + (a_u**2 * STD**2 + s_u**2) ** 0.5 * z


def toy_error(process: GaussianProcess, num_steps: int, solver, spacing: str = "uniform", seed: int = 0) -> float:
    """Max |x_0 - exact PF-ODE x_0| over a batch, from the same x_T (float32, as a model samples)."""
    sampler = Sampler(process, num_steps=num_steps, spacing=spacing, solver=solver)
    proc = sampler.process
    x_T = proc.prior(SHAPE, generator=torch.Generator().manual_seed(seed))
    out = sampler.sample(posterior_mean_denoiser(proc), SHAPE, x_init=x_T)
    return (out.x.double() - ode_solution(proc, x_T, 1.0, 0.0)).abs().max().item()


def _dlm():  # Diffusion-LM's process: sqrt schedule discretised to T = 2000 steps
    return GaussianProcess(DiscreteSchedule(SqrtSchedule(), 2000))


PROCESSES = {
    "dlm_sqrt_T2000": _dlm,
    "sqrt_continuous": lambda: GaussianProcess(SqrtSchedule()),  # a_1 = 0: lambda = -inf at the first step
    "cosine": lambda: GaussianProcess(CosineSchedule()),
    "difformer_F4": lambda: GaussianProcess(DiscreteSchedule(SqrtSchedule(), 2000), noise_factor=4.0),
    "difformer_F4_decode_F1": lambda: GaussianProcess(DiscreteSchedule(SqrtSchedule(), 2000), noise_factor=4.0,
                                                      sample_noise_factor=1.0),
    "difformer_vp_F4": lambda: GaussianProcess(DiscreteSchedule(SqrtSchedule(), 2000), noise_factor=4.0,
                                               variance_preserving=True),
    "ld4lg_v": lambda: GaussianProcess(CosineSquaredSchedule(), prediction="v"),  # sigma_0 > 0 (logSNR clip)
    "eps": lambda: GaussianProcess(VPLinearSchedule(), prediction="eps"),
}


# ----- first order == DDIM (eta = 0) -----
@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_first_order_step_is_ddim(name):
    proc = Sampler(PROCESSES[name](), num_steps=10).process
    times = Sampler(proc, num_steps=10).timesteps()
    gen = torch.Generator().manual_seed(0)
    for k in range(10):
        t, s = (torch.full((SHAPE[0],), float(v)) for v in (times[k], times[k + 1]))
        xt, x0 = proc.prior_std * torch.randn(SHAPE, generator=gen), torch.randn(SHAPE, generator=gen)
        dpm = proc.dpm_solver_step(xt, x0, None, t, s)
        torch.testing.assert_close(dpm, proc.reverse_step(xt, x0, t, s, eta=0.0), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_first_order_at_every_step_is_the_ddim_run(name):
    proc = PROCESSES[name]()
    ddim = Sampler(proc, num_steps=10)
    sproc, times = ddim.process, ddim.timesteps()
    x_T = sproc.prior(SHAPE, generator=torch.Generator().manual_seed(1))
    denoise = posterior_mean_denoiser(sproc)
    x = x_T
    for k in range(10):
        t, s = (torch.full((SHAPE[0],), float(v)) for v in (times[k], times[k + 1]))
        x = sproc.dpm_solver_step(x, sproc.to_x0(denoise(x, t, None), x, t), None, t, s)
    torch.testing.assert_close(x, ddim.sample(denoise, SHAPE, x_init=x_T).x, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("num_steps", [1, 2])
def test_two_steps_or_fewer_are_ddim(num_steps):
    # K = 1: one first step; K = 2: the first step, then the step to t = 0 (sigma = 0): both first order
    proc = _dlm()
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    runs = [Sampler(proc, num_steps=num_steps, solver=solver).sample(posterior_mean_denoiser(proc), SHAPE,
                                                                      x_init=x_T).x for solver in (None, "dpmpp_2m")]
    torch.testing.assert_close(runs[1], runs[0], atol=1e-6, rtol=1e-6)


# ----- accuracy on the toy -----
# Max error against the exact PF-ODE x_0 (float32, 16 x 4 x 8 values, seed 0), DDIM -> DPM-Solver++(2M):
#   Diffusion-LM's sqrt, T = 2000, uniform: K=5 0.806 -> 0.244, K=10 0.581 -> 0.037, K=20 0.420 -> 0.022
#   cosine, continuous, uniform:            K=5 0.567 -> 0.437, K=10 0.300 -> 0.101, K=20 0.155 -> 0.006
#   VP linear, continuous, quadratic:       K=5 0.582 -> 0.227, K=10 0.314 -> 0.097, K=20 0.163 -> 0.042
# (Difformer decoding at F = 1 is Diffusion-LM's row.) Not every time grid gains: on grids uniform in t whose step
# into the last noisy time spans a large lambda interval, the second-order extrapolation over that step costs more
# than it saves at K <= 20 (K = 10: cosine discretised to T = 2000 0.326 -> 0.671, DDPM-linear T = 1000
# 0.567 -> 0.789, LD4LG's cos^2 with its logSNR clip, continuous, v-prediction 0.294 -> 0.955; at K = 50 about even
# or better: 0.064 -> 0.040, 0.115 -> 0.114, 0.062 -> 0.058). Where the last step (to t = 0, first order for both)
# starts at a low SNR, it bounds both errors alike (continuous sqrt: K=10 0.856 -> 0.836; sampling at F = 4:
# 0.859 -> 0.744).
TOY_CASES = {
    "dlm_sqrt_T2000": (_dlm, "uniform"),
    "cosine_uniform": (lambda: GaussianProcess(CosineSchedule()), "uniform"),
    "vp_linear_quadratic": (lambda: GaussianProcess(VPLinearSchedule()), "quadratic"),
}


@pytest.mark.parametrize("case", sorted(TOY_CASES))
def test_dpm_solver_beats_ddim_at_10_steps(case):
    make, spacing = TOY_CASES[case]
    ddim, dpm = (toy_error(make(), 10, solver, spacing) for solver in ("ddim", "dpmpp_2m"))
    assert dpm < 0.5 * ddim, (ddim, dpm)


def test_dpm_solver_converges_to_the_ode_solution():
    errors = [toy_error(_dlm(), k, "dpmpp_2m") for k in (5, 10, 20)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.05, errors


def _logsnr_grid(proc: GaussianProcess, t_hi: float, t_lo: float, num_steps: int) -> torch.Tensor:
    """Times from t_hi to t_lo, evenly spaced in lambda (bisection on the process's monotone lambda(t))."""
    lam_hi, lam_lo = (proc.half_log_snr(torch.tensor([v], dtype=torch.float64)).item() for v in (t_hi, t_lo))
    target = torch.linspace(lam_hi, lam_lo, num_steps + 1, dtype=torch.float64)
    lo, hi = torch.full_like(target, t_lo), torch.full_like(target, t_hi)
    for _ in range(60):
        mid = (lo + hi) / 2
        above = proc.half_log_snr(mid) > target  # lambda decreases in t: the root lies later
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return (lo + hi) / 2


@pytest.mark.parametrize("noise_factor", [1.0, 4.0])
def test_second_order_on_a_smooth_grid(noise_factor):
    # Between two noisy times on a grid uniform in lambda, doubling K divides DDIM's error by ~2 (first order) and
    # DPM-Solver++(2M)'s by ~4 (second order; F = 1: 32 -> 64 -> 128 steps 4.1e-4 -> 1.2e-4 -> 3.1e-5, DDIM
    # 3.9e-2 -> 2.0e-2 -> 9.9e-3), also for sigma = F sqrt(1 - abar) with F != 1.
    proc = GaussianProcess(CosineSchedule(), noise_factor=noise_factor)
    x_hi = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    denoise = posterior_mean_denoiser(proc)
    errs = {}
    for order in (1, 2):
        for k in (32, 64, 128):
            times = _logsnr_grid(proc, 0.9, 0.1, k)
            x, x0_prev, t_prev = x_hi, None, None
            for i in range(k):
                t, s = times[i].expand(SHAPE[0]), times[i + 1].expand(SHAPE[0])
                x0 = denoise(x, t, None)
                x = proc.dpm_solver_step(x, x0, x0_prev if order == 2 else None, t, s, t_prev)
                x0_prev, t_prev = x0, t
            errs[order, k] = (x - ode_solution(proc, x_hi, 0.9, 0.1)).abs().max().item()
    for k in (32, 64):
        assert 1.8 < errs[1, k] / errs[1, 2 * k] < 2.2, errs
        assert 3.2 < errs[2, k] / errs[2, 2 * k] < 4.5, errs
    assert errs[2, 32] < 0.1 * errs[1, 32], errs


# ----- the sampler loop: hooks, determinism, shape -----
def test_clamping_hook_runs_at_every_step_and_the_solver_uses_its_output():
    proc = GaussianProcess(DiscreteSchedule(SqrtSchedule(), 100))
    table = torch.randn(7, SHAPE[-1], generator=torch.Generator().manual_seed(4))
    clamp, seen = ClampToEmbeddings(table), []

    def hook(x0, t):  # the clamping trick, recording what it is given and what it returns
        out = clamp(x0, t)
        seen.append((float(t[0]), out.clone()))
        return out

    step_calls = []

    def step_hook(x_s, s, t, x0, x_t):
        step_calls.append(float(s[0]))
        assert torch.equal(x0, seen[-1][1])  # the step hook sees the hooked x0 of its step
        return x_s

    sampler = Sampler(proc, num_steps=8, solver="dpmpp_2m", hooks=[hook], step_hooks=[step_hook])
    times = sampler.timesteps()
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    out = sampler.sample(posterior_mean_denoiser(proc), SHAPE, x_init=x_T, keep_trajectory=True)
    assert [t for t, _ in seen] == pytest.approx(times[:-1].tolist())
    assert step_calls == pytest.approx(times[1:].tolist())
    for k in range(8):  # each step is the solver's step on the hooked estimates of this step and the last
        assert torch.equal(out.x0_trajectory[k], seen[k][1])
        t, s = (torch.full((SHAPE[0],), float(v)) for v in (times[k], times[k + 1]))
        prev = (seen[k - 1][1], torch.full((SHAPE[0],), float(times[k - 1]))) if k else (None, None)
        expected = proc.dpm_solver_step(out.trajectory[k], seen[k][1], prev[0], t, s, prev[1])
        torch.testing.assert_close(out.trajectory[k + 1], expected, atol=0, rtol=0)
    # the last step to t = 0 returns a_0 x0 = the clamped x0: every position is an embedding row
    assert (out.x.reshape(-1, 1, SHAPE[-1]) - table).norm(dim=-1).min(-1).values.max() < 1e-5


def test_deterministic_shape_and_nfe():
    proc = _dlm()
    sampler = Sampler(proc, num_steps=10, solver="dpmpp_2m")
    denoise = posterior_mean_denoiser(proc)
    a = sampler.sample(denoise, SHAPE, generator=torch.Generator().manual_seed(6))
    b = sampler.sample(denoise, SHAPE, generator=torch.Generator().manual_seed(6))
    c = sampler.sample(denoise, SHAPE, generator=torch.Generator().manual_seed(7))
    assert a.x.shape == SHAPE and a.nfe == 10 and torch.isfinite(a.x).all()
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    x_T = torch.randn(SHAPE)
    assert torch.equal(sampler.sample(denoise, SHAPE, x_init=x_T).x, sampler.sample(denoise, SHAPE, x_init=x_T).x)


def test_self_conditioning_and_early_stop_with_the_solver():
    proc, seen = _dlm(), []

    def denoise(x, t, sc):
        seen.append(sc)
        return posterior_mean_denoiser(proc)(x, t, sc)

    out = Sampler(proc, num_steps=6, solver="dpmpp_2m", self_condition=True, early_stop=2).sample(denoise, SHAPE)
    assert out.nfe == 4 and seen[0] is None and all(sc is not None for sc in seen[1:])


def test_ddim_is_the_default_path():
    proc = _dlm()
    denoise = posterior_mean_denoiser(proc)
    for kw in ({"eta": 0.0}, {"eta": 1.0}, {"eta": 1.0, "variance": "large"}):
        a = Sampler(proc, num_steps=10, **kw).sample(denoise, SHAPE, generator=torch.Generator().manual_seed(8))
        b = Sampler(proc, num_steps=10, solver="ddim", **kw).sample(denoise, SHAPE,
                                                                    generator=torch.Generator().manual_seed(8))
        assert torch.equal(a.x, b.x)
    assert Sampler(proc, solver="ddim").solver is None and Sampler(proc, solver="dpmpp_2m").solver == "dpmpp_2m"


def test_variance_is_ignored_by_the_solver():
    """A preset's ``variance: small`` may stay when the solver is chosen: it has no step noise to scale."""
    proc = _dlm()
    def denoise(x, t, sc):
        return 0.5 * x

    outs = [Sampler(proc, num_steps=6, solver="dpmpp_2m", variance=v).sample(
        denoise, SHAPE, generator=torch.Generator().manual_seed(3)).x for v in (None, "small")]
    assert torch.equal(outs[0], outs[1])


def test_error_messages():
    proc = _dlm()
    with pytest.raises(ValueError, match="needs eta=0"):
        Sampler(proc, solver="dpmpp_2m", eta=1.0)
    with pytest.raises(ValueError, match="unknown solver 'heun'"):
        Sampler(proc, solver="heun")
    with pytest.raises(ValueError, match="Gaussian processes only"):
        Sampler(AbsorbingProcess(DiscreteSchedule(MutualSchedule(), 10, max_beta=1.0), mask_id=9), solver="dpmpp_2m")


# ----- the families and the config -----
def test_diffusion_lm_samples_with_the_solver_and_clamping():
    from textdiff.families import DiffusionLM
    from textdiff.nn import TransformerDenoiser

    model = DiffusionLM(TransformerDenoiser(8, dim=32, depth=1, heads=2, max_len=12, dropout=0.0),
                        GaussianProcess(DiscreteSchedule(SqrtSchedule(), 100)), vocab_size=40, embed_dim=8,
                        sampler=partial(Sampler, num_steps=10, eta=1.0))
    run = model.generate_run(3, seed=0, solver="dpmpp_2m", eta=0.0, num_steps=10)
    assert run.sampler.solver == "dpmpp_2m" and run.output.nfe == 10 and run.details["clamp"]
    assert run.output.x.shape == (3, 12, 8)
    dist = (run.output.x.reshape(-1, 1, 8) - model.embedding.weight).norm(dim=-1).min(-1).values
    assert torch.all(dist < 1e-4)  # clamped at every step; the last step returns the clamped x0
    again = model.generate_run(3, seed=0, solver="dpmpp_2m", eta=0.0, num_steps=10)
    assert torch.equal(run.output.x, again.output.x)
    with pytest.raises(ValueError, match="needs eta=0"):  # the configured ancestral eta is not silently dropped
        model.generate_run(3, seed=0, solver="dpmpp_2m", num_steps=10)


def test_sampler_config_builds_the_solver():
    cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "sampler" / "dpmpp_2m.yaml")
    sampler = instantiate(cfg)(process=_dlm())
    assert isinstance(sampler, Sampler) and sampler.solver == "dpmpp_2m" and sampler.num_steps == 20
    assert sampler.eta == 0.0 and sampler.variance is None


# ----- SDE-DPM-Solver++(2M) -----
def test_sde_first_order_step_is_the_ancestral_ddpm_step():
    """With the same noise, the SDE solver's first-order step is DDPM's ancestral step with the posterior variance,
    on the way (s > 0) and into t = 0; a 2-step run (both steps first order) gives the same samples."""
    proc = _dlm()
    g = torch.Generator().manual_seed(0)
    x, x0, z = (torch.randn(SHAPE, generator=g) for _ in range(3))
    for t_val, s_val in ((0.8, 0.5), (0.3, 0.0)):
        t, s = torch.full((SHAPE[0],), t_val), torch.full((SHAPE[0],), s_val)
        a = proc.dpm_solver_step(x, x0, None, t, s, noise=z)
        b = proc.reverse_step(x, x0, t, s, eta=1.0, variance="small", noise=z)
        assert torch.allclose(a, b, atol=1e-5), (t_val, (a - b).abs().max())

    def denoise(x, t, sc):
        return torch.tanh(x)

    runs = [Sampler(proc, num_steps=2, eta=1.0, variance="small", solver=solver).sample(
        denoise, SHAPE, generator=torch.Generator().manual_seed(1)).x for solver in ("ddim", "sde_dpmpp_2m")]
    assert torch.allclose(runs[0], runs[1], atol=1e-5)


def test_sde_solver_is_second_order_on_the_toy_mean():
    """Averaged over noise draws, the SDE solver's second-order correction changes the 10-step result (it is not the
    ancestral sampler under another name), and it is seeded: the same generator, the same samples."""
    proc = _dlm()

    def denoise(x, t, sc):
        return 0.5 * torch.tanh(x)

    def run(solver, seed):
        return Sampler(proc, num_steps=10, eta=1.0, variance="small", solver=solver).sample(
            denoise, SHAPE, generator=torch.Generator().manual_seed(seed)).x

    assert torch.equal(run("sde_dpmpp_2m", 3), run("sde_dpmpp_2m", 3))
    assert not torch.allclose(run("sde_dpmpp_2m", 3), run("ddim", 3), atol=1e-4)


def test_sde_solver_errors():
    proc = _dlm()
    with pytest.raises(ValueError, match="needs eta=1"):
        Sampler(proc, solver="sde_dpmpp_2m", eta=0.0)
    with pytest.raises(ValueError, match="'large' does not apply"):
        Sampler(proc, solver="sde_dpmpp_2m", eta=1.0, variance="large")
