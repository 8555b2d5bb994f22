"""The Gaussian forward process and its reverse step, shared by every continuous family.

Notation (Kingma et al. 2021, "Variational Diffusion Models", §2): x_t = a_t x0 + sigma_t eps with
a_t = sqrt(abar(t)) and sigma_t = F sqrt(1 - abar(t)). F (the *noise factor*, Difformer §3.3) is 1
for the usual variance-preserving process. Every formula below is written for general (a, sigma), so
it holds for F != 1 too. Shapes: x (B, L, D); t, s (B,); per-example losses (B,).
"""
from __future__ import annotations

import copy
import math
from typing import Literal, Optional

import torch
from torch import Tensor, nn

from textdiff.core.schedules import DiscreteSchedule, NoiseSchedule, VarianceRescaled

Prediction = Literal["x0", "eps", "v"]


def _factor_key(factor: float) -> str:
    """A ModuleDict key for a noise factor (no dots)."""
    return f"F{factor:g}".replace(".", "_")


def _expand(v: Tensor, like: Tensor) -> Tensor:
    """Append singleton dims to ``v`` (B,) so it broadcasts against ``like`` (B, ...)."""
    return v.reshape(*v.shape, *([1] * (like.dim() - v.dim())))


def _wide(t: Tensor) -> torch.dtype:
    """float64 for the (B,) solver coefficients, float32 on MPS (no float64 there)."""
    return torch.float32 if t.device.type == "mps" else torch.float64


def masked_mean(x: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Per-example mean of ``x`` (B, L, ...) over positions where ``mask`` (B, L) is True and over
    all trailing dims. Returns (B,)."""
    per_pos = x.reshape(x.shape[0], x.shape[1], -1).mean(-1)  # (B, L)
    if mask is None:
        return per_pos.mean(-1)
    m = mask.to(per_pos.dtype)
    return (per_pos * m).sum(-1) / m.sum(-1).clamp_min(1)


def masked_sum(x: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Per-example sum of ``x`` (B, L, ...) over masked positions and trailing dims. Returns (B,)."""
    per_pos = x.reshape(x.shape[0], x.shape[1], -1).sum(-1)
    if mask is not None:
        per_pos = per_pos * mask.to(per_pos.dtype)
    return per_pos.sum(-1)


class GaussianProcess(nn.Module):
    """q(x_t | x0) = N(a_t x0, sigma_t^2 I), its posterior, and one reverse step.

    Args:
        schedule: the noise schedule (token-independent).
        prediction: what the network outputs: "x0" (Diffusion-LM, Difformer), "eps" or "v" (LD4LG).
        noise_factor: F used by ``q_sample`` in training; sigma_t = F sqrt(1 - abar). Difformer: 4.
        sample_noise_factor: F used when sampling (prior and reverse steps); None = ``noise_factor``.
            Difformer's official decoding uses 1.0 with a model trained at F = 4.
        variance_preserving: instead of scaling the noise, rescale the schedule to
            abar' = abar / (F^2 - (F^2 - 1) abar) (same SNR/F^2, unit variance; Difformer ``--vp-rf``). For a
            ``DiscreteSchedule`` the rescaling applies to the base's raw continuous curve *before* the
            discretisation, as the official ``get_named_beta_schedule(name, T, F)`` (``VarianceRescaled``); for
            a continuous schedule, to abar(t) itself.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction: Prediction = "x0",
        noise_factor: float = 1.0,
        sample_noise_factor: Optional[float] = None,
        variance_preserving: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        if schedule.token_dependent:
            raise TypeError(
                f"{type(schedule).__name__} is token-dependent (absorbing diffusion only); "
                "a GaussianProcess needs a token-independent schedule such as sqrt or cosine"
            )
        if prediction not in ("x0", "eps", "v"):
            raise ValueError(f"prediction must be 'x0', 'eps' or 'v', got {prediction!r}")
        if noise_factor <= 0 or (sample_noise_factor is not None and sample_noise_factor <= 0):
            raise ValueError("noise factors must be > 0")
        if prediction == "v" and not variance_preserving and (noise_factor != 1 or (sample_noise_factor or 1) != 1):
            raise ValueError("v-prediction needs a variance-preserving process: set variance_preserving=true or F=1")
        self.schedule = schedule
        self.prediction = prediction
        self.noise_factor = float(noise_factor)
        self.sample_noise_factor = float(sample_noise_factor) if sample_noise_factor is not None else None
        self.variance_preserving = bool(variance_preserving)
        # the rescaled discrete chains, one per noise factor in use (training and sampling)
        self.vp_chains = nn.ModuleDict()
        if self.variance_preserving and isinstance(schedule, DiscreteSchedule):
            for f in {self.noise_factor, self.sample_noise_factor or self.noise_factor}:
                self.vp_chains[_factor_key(f)] = DiscreteSchedule(VarianceRescaled(schedule.base, f),
                                                                  schedule.num_steps, schedule.max_beta)

    def for_sampling(self) -> "GaussianProcess":
        """The process the sampler should use: this one, or a copy with F = ``sample_noise_factor``
        (sharing the schedule)."""
        if self.sample_noise_factor is None or self.sample_noise_factor == self.noise_factor:
            return self
        twin = copy.copy(self)  # shallow: shares schedule and buffers
        twin.noise_factor = self.sample_noise_factor
        return twin

    # ----- coefficients -----
    def coefs(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(a_t, sigma_t), each (B,) float32."""
        f2 = self.noise_factor**2
        if self.variance_preserving:  # Difformer --vp-rf: SNR / F^2 at unit variance
            key = _factor_key(self.noise_factor)
            if key in self.vp_chains:  # rescaled before discretising, as the official schedule
                abar = self.vp_chains[key].alpha_bar(t).to(torch.float32)
            else:
                abar = self.schedule.alpha_bar(t).to(torch.float32)
                abar = abar / (f2 - (f2 - 1) * abar)
            return abar.sqrt(), (1 - abar).clamp_min(0).sqrt()
        abar = self.schedule.alpha_bar(t).to(torch.float32)
        return abar.sqrt(), self.noise_factor * (1 - abar).clamp_min(0).sqrt()

    @property
    def prior_std(self) -> float:
        """Standard deviation of the prior N(0, prior_std^2 I): F, or 1 when variance-preserving."""
        return 1.0 if self.variance_preserving else self.noise_factor

    # ----- forward process -----
    def prior(self, shape: tuple[int, ...], generator: Optional[torch.Generator] = None,
              device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """A draw from the prior N(0, prior_std^2 I). Shape ``shape``, e.g. (B, L, D)."""
        return self.prior_std * torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Optional[Tensor] = None) -> Tensor:
        """x_t = a_t x0 + sigma_t eps (DDPM eq. 4, with Difformer's F in sigma). x0 (B, L, D), t (B,)."""
        if noise is None:
            noise = torch.randn_like(x0)
        a, sigma = self.coefs(t)
        return _expand(a, x0) * x0 + _expand(sigma, x0) * noise

    # ----- parameterisations -----
    def to_x0(self, model_out: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        """The x0 estimate from the network output (B, L, D).

        x0: as is; eps: (x_t - sigma eps) / a (DDPM eq. 15); v: a x_t - sigma v (Salimans & Ho 2022, §4).
        """
        if self.prediction == "x0":
            return model_out
        a, sigma = (_expand(c, xt) for c in self.coefs(t))
        if self.prediction == "eps":
            return (xt - sigma * model_out) / a.clamp_min(1e-8)
        return a * xt - sigma * model_out

    def to_eps(self, x0: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        """eps = (x_t - a x0) / sigma (B, L, D)."""
        a, sigma = (_expand(c, xt) for c in self.coefs(t))
        return (xt - a * x0) / sigma.clamp_min(1e-12)

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """The regression target for this process's ``prediction``: x0, eps, or v = a eps - sigma x0."""
        if self.prediction == "x0":
            return x0
        if self.prediction == "eps":
            return noise
        a, sigma = (_expand(c, x0) for c in self.coefs(t))
        return a * noise - sigma * x0

    def loss(self, model_out: Tensor, x0: Tensor, t: Tensor, noise: Tensor,
             mask: Optional[Tensor] = None) -> Tensor:
        """Masked MSE to the target (DDPM's L_simple, eq. 14, in its x0/eps/v form): mean over the
        dims and the positions where ``mask`` (B, L) is True. Returns (B,)."""
        return masked_mean((model_out - self.target(x0, noise, t)) ** 2, mask)

    def prior_loss(self, x0: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Diffusion-LM's L_T term, mean((a_1 x0)^2): the x0-dependent part of KL(q(x_1|x0) || prior)
        (Li et al. 2022 eq. 2, ``tT_loss``). Returns (B,)."""
        a1, _ = self.coefs(torch.ones(x0.shape[0], device=x0.device))
        return masked_mean((_expand(a1, x0) * x0) ** 2, mask)

    # ----- posterior and reverse step -----
    def _step_coefs(self, t: Tensor, s: Tensor, like: Tensor) -> tuple[Tensor, ...]:
        a_t, sig_t = self.coefs(t)
        a_s, sig_s = self.coefs(s)
        a_ts = a_t / a_s.clamp_min(1e-12)  # x_t = a_ts x_s + sig_ts eps (VDM eq. 4)
        sig_ts2 = (sig_t**2 - a_ts**2 * sig_s**2).clamp_min(0)
        return tuple(_expand(c, like) for c in (a_t, sig_t, a_s, sig_s, a_ts, sig_ts2))

    def posterior(self, x0: Tensor, xt: Tensor, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """q(x_s | x_t, x0) = N(mean, var I) for s < t (DDPM eq. 6-7 in VDM's general form, eq. 5):
        mean = a_ts sig_s^2 / sig_t^2 x_t + a_s sig_ts^2 / sig_t^2 x0, var = sig_ts^2 sig_s^2 / sig_t^2.
        Returns mean (B, L, D) and var broadcastable to it."""
        a_t, sig_t, a_s, sig_s, a_ts, sig_ts2 = self._step_coefs(t, s, xt)
        sig_t2 = (sig_t**2).clamp_min(1e-20)
        mean = a_ts * sig_s**2 / sig_t2 * xt + a_s * sig_ts2 / sig_t2 * x0
        return mean, sig_ts2 * sig_s**2 / sig_t2

    def reverse_mean_std(self, xt: Tensor, x0_hat: Tensor, t: Tensor, s: Tensor, *, eta: float = 0.0,
                         variance: Literal["small", "large"] = "small") -> tuple[Tensor, Tensor]:
        """The reverse step's Gaussian p(x_s | x_t) = N(mean, std^2 I) given the x0 estimate (B, L, D):
        mean (B, L, D) and std broadcastable to it ((B, 1, 1)).

        variance="small" is DDIM (Song et al. 2021, eq. 12) with std c = eta * sqrt(posterior var):
        mean = a_s x0 + sqrt(sig_s^2 - c^2) eps_hat. eta = 0 is deterministic DDIM; eta = 1 is DDPM
        ancestral sampling with the posterior variance (improved-diffusion's "fixed small").
        variance="large" is DDPM with var = sig_ts^2 (= F^2 beta_t, "fixed large"; LD4LG's default),
        defined for eta = 1 only; its last step (s = 0) has std 0.
        """
        if variance not in ("small", "large"):
            raise ValueError(f"variance must be 'small' or 'large', got {variance!r}")
        if variance == "large":
            if eta != 1.0:
                raise ValueError("variance='large' is DDPM ancestral sampling and needs eta=1")
            mean, _ = self.posterior(x0_hat, xt, t, s)
            _, _, _, _, _, sig_ts2 = self._step_coefs(t, s, xt)
            last = _expand((s <= 0).to(xt.dtype), xt)  # the last step returns the mean
            return mean, (1 - last) * sig_ts2.sqrt()
        a_t, sig_t, a_s, sig_s, _, _ = self._step_coefs(t, s, xt)
        _, var = self.posterior(x0_hat, xt, t, s)
        c = eta * var.sqrt()
        eps_hat = (xt - a_t * x0_hat) / sig_t.clamp_min(1e-12)  # DDIM eq. 12's predicted noise
        return a_s * x0_hat + (sig_s**2 - c**2).clamp_min(0).sqrt() * eps_hat, c

    def reverse_step(self, xt: Tensor, x0_hat: Tensor, t: Tensor, s: Tensor, *, eta: float = 0.0,
                     variance: Literal["small", "large"] = "small", noise: Optional[Tensor] = None,
                     generator: Optional[torch.Generator] = None) -> Tensor:
        """One step x_t -> x_s = mean + std z (``reverse_mean_std``; z ~ N(0, I) or ``noise``). (B, L, D)."""
        mean, std = self.reverse_mean_std(xt, x0_hat, t, s, eta=eta, variance=variance)
        if eta <= 0:
            return mean
        if noise is None:
            noise = torch.randn(xt.shape, generator=generator, device=xt.device, dtype=xt.dtype)
        return mean + std * noise

    # ----- DPM-Solver++(2M) -----
    def half_log_snr(self, t: Tensor) -> Tensor:
        """lambda_t = log(a_t / sigma_t), DPM-Solver's time variable, with this process's own (a, sigma) (``coefs``, so
        F included), in float64 (float32 on MPS): (B,), -inf where a_t = 0 and +inf where sigma_t = 0 (t = 0)."""
        a, sigma = (c.to(_wide(t)) for c in self.coefs(t))
        return torch.log(a) - torch.log(sigma)

    def dpm_solver_step(self, xt: Tensor, x0: Tensor, x0_prev: Optional[Tensor], t: Tensor, s: Tensor,
                        t_prev: Optional[Tensor] = None, noise: Optional[Tensor] = None) -> Tensor:
        """One deterministic step x_t -> x_s (s < t) of DPM-Solver++(2M), the multistep second-order solver of the
        probability-flow ODE in its data-prediction form (Lu et al. 2022, "DPM-Solver++", Algorithm 2), with
        lambda = log(a / sigma) of this process (``half_log_snr``).

        Args:
            xt: the state at t (B, L, D).
            x0: the (hooked) x0 estimate at t (B, L, D).
            x0_prev, t_prev: the x0 estimate of the previous step and its time (B,); None at the first step.
            t, s: the current and the next time (B,).

        The step is first order (DPM-Solver++1, which is DDIM with eta = 0 for the same (a, sigma)) at the first step
        (no ``x0_prev``), into a time with sigma_s = 0 (lambda_s = +inf, e.g. the last step to t = 0: it returns
        a_s * x0), and after a previous time with a = 0 (lambda = -inf); second order elsewhere. Returns (B, L, D).

        ``noise`` (B, L, D) ~ N(0, I) makes it SDE-DPM-Solver++(2M), the same multistep correction on the reverse SDE
        (diffusers' ``sde-dpmsolver++``, midpoint form): x_s = (sigma_s / sigma_t) e^{-h} x_t + a_s (1 - e^{-2h}) D
        + sigma_s sqrt(1 - e^{-2h}) z, whose first-order step is DDPM's ancestral step with the posterior ("small")
        variance, exactly.
        """
        wide = _wide(t)
        a_t, sig_t = (c.to(wide) for c in self.coefs(t))
        a_s, sig_s = (c.to(wide) for c in self.coefs(s))
        lam_t = torch.log(a_t) - torch.log(sig_t)  # half_log_snr(t), from the coefficients already at hand
        h = torch.log(a_s) - torch.log(sig_s) - lam_t  # h_i = lambda_{t_i} - lambda_{t_{i-1}} (Algorithm 2)
        phi = torch.expm1(-h)  # e^{-h_i} - 1; -1 when h_i = inf (sigma_s = 0)
        ratio = sig_s / sig_t.clamp_min(1e-12)  # sigma_{t_i} / sigma_{t_{i-1}}
        d = x0
        if x0_prev is not None and t_prev is not None:
            h_prev = lam_t - self.half_log_snr(t_prev)  # h_{i-1}
            second = torch.isfinite(h) & torch.isfinite(h_prev) & (h_prev > 0)
            # 1 / (2 r_i) with r_i = h_{i-1} / h_i; 0 (first order) where either step is infinite
            c = torch.where(second, h / (2 * h_prev.where(second, torch.ones_like(h_prev))), torch.zeros_like(h))
            # D_i = (1 + 1/(2 r_i)) x0_{i-1} - 1/(2 r_i) x0_{i-2} (Algorithm 2), written x0 + c (x0 - x0_prev)
            d = x0 + _expand(c.to(x0.dtype), x0) * (x0 - x0_prev)
        if noise is not None:  # SDE form: e^{-h} shrinks x_t's share, the rest is noise (phi2 = e^{-2h} - 1)
            phi2 = torch.expm1(-2 * h)
            keep = ratio * torch.exp(-h)
            out = _expand(keep.to(xt.dtype), xt) * xt + _expand((-a_s * phi2).to(xt.dtype), xt) * d
            return out + _expand((sig_s * (-phi2).clamp_min(0).sqrt()).to(xt.dtype), xt) * noise
        # x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} - a_{t_i} (e^{-h_i} - 1) D_i (Algorithm 2).
        # With D_i = x0 it is DPM-Solver++1 (first order) = DDIM, eta = 0: a_s x0 + sigma_s (x_t - a_t x0) / sigma_t
        return _expand(ratio.to(xt.dtype), xt) * xt + _expand((-a_s * phi).to(xt.dtype), xt) * d

    # ----- likelihood terms (nats) -----
    def kl_prior(self, x0: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """KL(q(x_1 | x0) || N(0, prior_std^2 I)), summed over dims and masked positions. (B,)."""
        one = torch.ones(x0.shape[0], device=x0.device)
        a, sigma = (_expand(c, x0) for c in self.coefs(one))
        r = (sigma / self.prior_std) ** 2
        kl = 0.5 * (r + (a * x0 / self.prior_std) ** 2 - 1 - torch.log(r.clamp_min(1e-20)))
        return masked_sum(kl.expand_as(x0), mask)

    def kl_step(self, x0: Tensor, xt: Tensor, x0_hat: Tensor, t: Tensor, s: Tensor,
                mask: Optional[Tensor] = None) -> Tensor:
        """KL(q(x_s | x_t, x0) || p(x_s | x_t)) with p = the posterior at x0_hat and the same
        ("small") variance: ||mean(x0) - mean(x0_hat)||^2 / (2 var) (DDPM eq. 5 / VDM eq. 13).
        Summed over dims and masked positions. (B,). Needs s > 0."""
        mean_q, var = self.posterior(x0, xt, t, s)
        mean_p, _ = self.posterior(x0_hat, xt, t, s)
        return masked_sum((mean_q - mean_p) ** 2 / (2 * var.clamp_min(1e-20)), mask)


def gaussian_nll(x: Tensor, mean: Tensor, var: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """-log N(x; mean, var I) in nats, summed over dims and masked positions. (B,)."""
    var = var.expand_as(x) if var.dim() == x.dim() else _expand(var, x).expand_as(x)
    nll = 0.5 * (math.log(2 * math.pi) + torch.log(var.clamp_min(1e-20)) + (x - mean) ** 2 / var.clamp_min(1e-20))
    return masked_sum(nll, mask)


SOLVERS = ("ddim", "dpmpp_2m", "sde_dpmpp_2m")


def check_solver(solver: Optional[str], process: object, eta: float, variance: Optional[str] = None) -> Optional[str]:
    """The sampler's ``solver`` setting, checked: None for the reverse step of ``GaussianProcess.reverse_step`` /
    the absorbing process ("ddim" or None: DDIM with ``eta``/``variance``, today's path); "dpmpp_2m" (needs eta = 0)
    or "sde_dpmpp_2m" (needs eta = 1) for ``GaussianProcess.dpm_solver_step``, Gaussian only. The ODE solver ignores
    ``variance`` as DDIM does at eta = 0 (so a preset's ``variance: small`` may stay); the SDE one has the posterior
    ("small") variance and rejects "large". Raises ValueError otherwise."""
    if solver is None or solver == "ddim":
        return None
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; use one of {', '.join(SOLVERS)} (or None = 'ddim')")
    if not isinstance(process, GaussianProcess):
        raise ValueError(f"solver={solver!r} applies to Gaussian processes only, got {type(process).__name__}")
    if solver == "dpmpp_2m" and eta != 0:
        raise ValueError(f"solver={solver!r} is a deterministic ODE solver and needs eta=0, got eta={eta}")
    if solver == "sde_dpmpp_2m" and eta != 1:
        raise ValueError(f"solver={solver!r} corrects the ancestral step (eta=1, posterior variance) and needs eta=1, "
                         f"got eta={eta}")
    if solver == "sde_dpmpp_2m" and variance == "large":
        raise ValueError(f"solver={solver!r} steps with the posterior ('small') variance; "
                         "variance='large' does not apply")
    return solver
