"""Noise schedules on continuous time t in [0, 1] (t = 1 is noise), and their discretisation.

Every schedule gives ``alpha_bar(t)``: the signal variance of a Gaussian process
(x_t = sqrt(abar) x0 + sqrt(1 - abar) eps) or the keep-probability of an absorbing one
(x_t = x0 with probability abar, else [MASK]). Shapes: ``t`` is (B,); the result is (B,), or
(B, L) for a token-dependent schedule (``SpindleSchedule``) that also takes ``x0`` (B, L).

Discrete-time families (Diffusion-LM, Difformer, DiffusionBERT) wrap a continuous schedule in
``DiscreteSchedule(base, num_steps=T)``, which reproduces the official discretisation
beta_i = min(1 - abar((i+1)/T) / abar(i/T), 0.999) and maps chain index i to t = (i+1)/T.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

_LOG_SNR_EPS = 1e-12


class NoiseSchedule(nn.Module, ABC):
    """Base class: ``alpha_bar(t)`` on t in [0, 1], with derived log-SNR, loss weight and time grids."""

    token_dependent: bool = False

    @abstractmethod
    def alpha_bar(self, t: Tensor, x0: Optional[Tensor] = None) -> Tensor:
        """Cumulative signal variance / keep-probability at time ``t``.

        Args:
            t: (B,) float in [0, 1].
            x0: (B, L) long token ids; only token-dependent schedules use it.

        Returns:
            (B,) float, or (B, L) for a token-dependent schedule.
        """

    def raw_alpha_bar(self, t: Tensor) -> Tensor:
        """The curve as the official code writes it, before any normalisation to abar(0) = 1 (the sqrt
        and IDDPM-cosine curves start below 1 there). Discretising by ratios makes the two the same chain;
        only a non-linear map applied before discretising (``VarianceRescaled``) tells them apart. (B,)."""
        return self.alpha_bar(t)

    def log_snr(self, t: Tensor, x0: Optional[Tensor] = None) -> Tensor:
        """log(abar / (1 - abar)), finite at both ends. Same shape as ``alpha_bar``."""
        a = self.alpha_bar(t, x0).clamp(_LOG_SNR_EPS, 1 - _LOG_SNR_EPS)
        return torch.log(a) - torch.log1p(-a)

    def loss_weight(self, t: Tensor, x0: Optional[Tensor] = None) -> Tensor:
        """-abar'(t) / (1 - abar(t)): the continuous-time ELBO weight of an absorbing process
        (MDLM eq. 10; for abar = 1 - t it is 1 / t). Computed with autograd. Shape as ``alpha_bar``."""
        with torch.enable_grad():
            tt = t.detach().clone().requires_grad_(True)
            a = self.alpha_bar(tt, x0)
            (grad,) = torch.autograd.grad(a.sum(), tt)
        grad = grad.view(*grad.shape, *([1] * (a.dim() - grad.dim())))
        return (-grad / (1 - a.detach()).clamp_min(_LOG_SNR_EPS)).expand_as(a)

    def training_times(self, u: Tensor) -> Tensor:
        """Map uniform draws ``u`` (B,) in [0, 1) to the training times of this schedule. Identity
        here; ``DiscreteSchedule`` snaps to its grid."""
        return u

    def sampling_times(self, num_steps: int, spacing: str = "uniform") -> Tensor:
        """The ``num_steps + 1`` times a sampler visits, from 1 down to 0. Shape (num_steps + 1,).

        ``spacing``: "uniform" (evenly spaced in t), "even" (K equal strides from t = 1 to 0: the absorbing
        samplers' name, ``DiscreteSchedule``'s "even"; on a continuous schedule the same grid as "uniform") or
        "quadratic" (denser near t = 0).
        """
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        u = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
        if spacing in ("uniform", "even"):
            return u
        if spacing == "quadratic":
            return u**2
        raise ValueError(f"unknown spacing {spacing!r} for a continuous schedule; use 'uniform', 'even' or 'quadratic'")


def _clamp01(x: Tensor) -> Tensor:
    return x.clamp(0.0, 1.0)


class SqrtSchedule(NoiseSchedule):
    """Diffusion-LM's sqrt schedule (Li et al. 2022, eq. in §4.2 / App. A): abar = 1 - sqrt(t + s).

    Normalised by abar(0) = 1 - sqrt(s) so that t = 0 is clean; the discretised chain only uses
    ratios abar((i+1)/T) / abar(i/T), so ``DiscreteSchedule(SqrtSchedule(), 2000)`` equals the
    official code (abar_0 = 0.9854). Clamped at 0 near t = 1.
    """

    def __init__(self, s: float = 1e-4) -> None:
        super().__init__()
        self.s = float(s)

    def alpha_bar(self, t: Tensor, x0: Optional[Tensor] = None) -> Tensor:
        return _clamp01((1 - torch.sqrt(t + self.s)) / (1 - math.sqrt(self.s)))

    def raw_alpha_bar(self, t: Tensor) -> Tensor:
        """1 - sqrt(t + s) (official ``get_named_beta_schedule("sqrt")``; 0.99 at t = 0), clamped at 0."""
        return (1 - torch.sqrt(t + self.s)).clamp_min(0.0)


class CosineSchedule(NoiseSchedule):
    """IDDPM cosine schedule (Nichol & Dhariwal 2021, eq. 17): abar = f(t)/f(0),
    f(t) = cos^2(((t + s) / (1 + s)) * pi / 2), s = 0.008."""

    def __init__(self, s: float = 0.008) -> None:
        super().__init__()
        self.s = float(s)

    def _f(self, t: Tensor) -> Tensor:
        return torch.cos((t + self.s) / (1 + self.s) * math.pi / 2) ** 2

    def alpha_bar(self, t: Tensor, x0: Optional[Tensor] = None) -> Tensor:
        return _clamp01(self._f(t) / self._f(torch.zeros_like(t)))

    def raw_alpha_bar(self, t: Tensor) -> Tensor:
        """f(t) itself (Difformer's ``get_named_beta_schedule("cosine")``, not divided by f(0))."""
        return _clamp01(self._f(t))


class CosineSquaredSchedule(NoiseSchedule):
    """LD4LG's schedule: alpha = cos^2(pi t / 2) clamped at ``clip_min``, its log-SNR clamped to
    +-``log_snr_clip`` and shifted by 2 ln(scale) (Lovelace et al. 2023 §4; log-SNR shifting as in
    Hoogeboom et al. 2023). ``scale`` < 1 adds noise (LD4LG uses 0.1 for MT)."""

    def __init__(self, scale: float = 1.0, clip_min: float = 1e-9, log_snr_clip: float = 15.0) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.scale, self.clip_min, self.log_snr_clip = float(scale), float(clip_min), float(log_snr_clip)

    def log_snr(self, t: Tensor, x0: Optional[Tensor] = None) -> Tensor:
        a = (torch.cos(t * math.pi / 2) ** 2).clamp_min(self.clip_min)
        lsnr = (torch.log(a) - torch.log((1 - a).clamp_min(_LOG_SNR_EPS))).clamp(-self.log_snr_clip, self.log_snr_clip)
        return lsnr + 2 * math.log(self.scale)

    def alpha_bar(self, t: Tensor, x0: Optional[Tensor] = None) -> Tensor:
        return torch.sigmoid(self.log_snr(t))  # abar = sigmoid(logSNR)


class DDPMLinearSchedule(NoiseSchedule):
    """DDPM's linear betas (Ho et al. 2020 §4): beta_i linear from beta_start to beta_end over
    ``num_steps`` steps, rescaled by 1000/num_steps as improved-diffusion does. Defined on the grid
    t = i/num_steps (abar = prod(1 - beta)), log-linearly interpolated in between, so that
    ``DiscreteSchedule(DDPMLinearSchedule(T=n), n)`` returns exactly these betas."""

    def __init__(self, beta_start: float = 1e-4, beta_end: float = 0.02, num_steps: int = 1000) -> None:
        super().__init__()
        scale = 1000.0 / num_steps
        betas = torch.linspace(scale * beta_start, scale * beta_end, num_steps, dtype=torch.float64)
        log_abar = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.log1p(-betas), 0)])
        self.num_steps = int(num_steps)
        self.register_buffer("log_abar_grid", log_abar, persistent=False)

    def alpha_bar(self, t: Tensor, x0: Optional[Tensor] = None) -> Tensor:
        pos = t.to(torch.float64).clamp(0, 1) * self.num_steps
        lo = pos.floor().long().clamp(max=self.num_steps - 1)
        frac = pos - lo
        g = self.log_abar_grid
        return torch.exp(g[lo] + frac * (g[lo + 1] - g[lo])).to(t.dtype)


class VPLinearSchedule(NoiseSchedule):
    """VP-SDE linear schedule (Song et al. 2021, eq. 33), Difformer's "linear":
    abar = exp(-(beta_max - beta_min) t^2 / 2 - beta_min t). It is DDPM-linear's continuous limit."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        super().__init__()
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def alpha_bar(self, t: Tensor, x0: Optional[Tensor] = None) -> Tensor:
        return torch.exp(-(self.beta_max - self.beta_min) * t**2 / 2 - self.beta_min * t)


class LogLinearSchedule(NoiseSchedule):
    """MDLM's log-linear noise (Sahoo et al. 2024 §3.5): sigma(t) = -log(1 - (1 - eps) t), so
    abar = exp(-sigma) = 1 - (1 - eps) t. abar(1) = eps."""

    def __init__(self, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = float(eps)

    def alpha_bar(self, t: Tensor, x0: Optional[Tensor] = None) -> Tensor:
        return 1 - (1 - self.eps) * t


class MutualSchedule(NoiseSchedule):
    """The absorbing "mutual information" schedule (Austin et al. 2021 §4, D3PM; DiffusionBERT's
    default): beta_t = 1/(T - t + 1), i.e. abar = 1 - t."""

    def alpha_bar(self, t: Tensor, x0: Optional[Tensor] = None) -> Tensor:
        return 1 - t


class VarianceRescaled(NoiseSchedule):
    """Difformer's variance-preserving noise factor (``--vp-rf`` with ``--rescaling-factor F``, official
    ``get_named_beta_schedule(name, T, F)``): abar' = abar / (F^2 - (F^2 - 1) abar), the SNR divided by F^2 at
    unit variance, applied to the base's *raw* curve (``raw_alpha_bar``) as the official code does before
    ``betas_for_alpha_bar`` discretises it. Wrap it in a ``DiscreteSchedule`` for the official chain."""

    def __init__(self, base: NoiseSchedule, factor: float) -> None:
        super().__init__()
        if base.token_dependent:
            raise TypeError("VarianceRescaled needs a token-independent base")
        if factor <= 0:
            raise ValueError(f"factor must be > 0, got {factor}")
        self.base, self.factor = base, float(factor)

    def alpha_bar(self, t: Tensor, x0: Optional[Tensor] = None) -> Tensor:
        a, f2 = self.base.raw_alpha_bar(t), self.factor**2
        return a / (f2 - (f2 - 1) * a)


class DiscreteSchedule(NoiseSchedule):
    """A continuous schedule discretised to ``num_steps`` (T) steps as the official code does.

    beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta), i = 0..T-1 (improved-diffusion
    ``betas_for_alpha_bar``), abar_i = prod_{j<=i} (1 - beta_j). Chain index i sits at t = (i+1)/T
    and t = 0 is the clean data (abar = 1); ``alpha_bar`` snaps t to the nearest grid point k/T.
    Absorbing chains use ``max_beta=1.0``: D3PM's mutual schedule has beta_{T-1} = 1, so abar(1) = 0.
    """

    def __init__(self, base: NoiseSchedule, num_steps: int = 2000, max_beta: float = 0.999) -> None:
        super().__init__()
        if base.token_dependent:
            raise TypeError("DiscreteSchedule needs a token-independent base; wrap SpindleSchedule around it instead")
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.base, self.num_steps, self.max_beta = base, int(num_steps), float(max_beta)
        grid = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        with torch.no_grad():
            a = base.alpha_bar(grid).to(torch.float64)
        ratio = torch.where(a[:-1] > 0, a[1:] / a[:-1].clamp_min(1e-300), torch.zeros_like(a[1:]))
        betas = (1 - ratio).clamp(max=max_beta)
        abar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])
        self.register_buffer("betas", betas, persistent=False)  # (T,)
        self.register_buffer("abar_grid", abar, persistent=False)  # (T+1,), abar_grid[k] at t = k/T

    def index(self, t: Tensor) -> Tensor:
        """Grid index k = round(t T) in [0, T] (long, shape of t); chain index is k - 1."""
        return torch.round(t.to(torch.float64) * self.num_steps).long().clamp(0, self.num_steps)

    def alpha_bar(self, t: Tensor, x0: Optional[Tensor] = None) -> Tensor:
        return self.abar_grid[self.index(t)].to(t.dtype if t.is_floating_point() else torch.float32)

    def loss_weight(self, t: Tensor, x0: Optional[Tensor] = None) -> Tensor:
        """The continuous-time weight of the underlying curve (the grid lookup has no derivative)."""
        return self.base.loss_weight(t, x0)

    def training_times(self, u: Tensor) -> Tensor:
        """Chain index i = floor(u T) uniform on {0..T-1}, returned as t = (i + 1)/T."""
        i = torch.floor(u * self.num_steps).clamp(max=self.num_steps - 1)
        return (i + 1) / self.num_steps

    def sampling_times(self, num_steps: int, spacing: str = "uniform") -> Tensor:
        """Respaced grid of ``num_steps`` chain indices (improved-diffusion ``space_timesteps``), as
        times (i+1)/T from 1 down, then 0. Shape (num_steps + 1,).

        ``spacing``: "uniform" takes indices round(k (T-1)/(K-1)), k = 0..K-1 (Python rounding, as the
        official code); "ddim" takes range(0, T, stride) for the stride that gives exactly K steps;
        "even" visits t = round(T (K - j) / K) / T, j = 0..K: from 1 to 0 in K equal strides
        (DiffusionBERT's ``step_size``; the natural grid for absorbing chains, which start at t = 1).
        """
        T = self.num_steps
        if not 1 <= num_steps <= T:
            raise ValueError(f"num_steps must be in [1, {T}] for a {T}-step schedule, got {num_steps}")
        if spacing == "even":
            steps = [round(T * (num_steps - j) / num_steps) for j in range(num_steps + 1)]
            return torch.tensor(steps, dtype=torch.float64) / T
        if spacing == "uniform":
            stride = (T - 1) / (num_steps - 1) if num_steps > 1 else 1.0
            idx = sorted({round(k * stride) for k in range(num_steps)})
        elif spacing == "ddim":
            strides = [s for s in range(1, T + 1) if len(range(0, T, s)) == num_steps]
            if not strides:
                raise ValueError(f"no integer stride gives exactly {num_steps} of {T} steps; use spacing='uniform'")
            idx = list(range(0, T, strides[0]))
        else:
            raise ValueError(f"unknown spacing {spacing!r} for a discrete schedule; use 'uniform', 'ddim' or 'even'")
        times = [(i + 1) / T for i in reversed(idx)] + [0.0]
        return torch.tensor(times, dtype=torch.float64)


def discretize(base: NoiseSchedule, num_steps: Optional[int] = None, max_beta: float = 0.999) -> NoiseSchedule:
    """``DiscreteSchedule(base, num_steps, max_beta)``, or ``base`` itself when ``num_steps`` is None
    (continuous time). Lets one schedule config serve discrete- and continuous-time families."""
    return base if num_steps is None else DiscreteSchedule(base, num_steps=num_steps, max_beta=max_beta)


def grid_steps(schedule: NoiseSchedule) -> Optional[int]:
    """T of the ``DiscreteSchedule`` inside ``schedule`` (following ``.base``), or None if continuous."""
    while schedule is not None:
        if isinstance(schedule, DiscreteSchedule):
            return schedule.num_steps
        schedule = getattr(schedule, "base", None)
    return None


class SpindleSchedule(NoiseSchedule):
    """DiffusionBERT's token-dependent spindle schedule for absorbing diffusion (He et al. 2023 §4.2;
    official ``noise_fn``): keep-probability

        p_i(t) = clip(abar(t) + lam * sin(pi t) * (f_i - mean_j f_j), 0, max_keep),  p_i(0) = 1,

    with f = ``token_weight[x0]`` (log(1 + count) normalised to [0, 1]) and the mean over the
    sentence's own tokens: the official ``collate_fn`` (``DDP_main.py``) centres f per example before
    padding, on ids without [CLS]/[SEP]. Positions holding one of ``ignore_ids`` (PAD, and the frame
    tokens a family never diffuses) take no part in the mean; the family sets them
    (``DiffusionBERT`` does, from its tokenizer). Frequent tokens (large f) are kept longer, rare ones
    masked first. At sampling time the caller passes argmax of the predicted x0 as ``x0``.

    ⚠ The paper writes the weight as an entropy ratio, 1 - sum_j H_j / (n H_i); the official code (and
    this class) uses centred log-frequencies. Same direction, different normalisation.

    Args:
        base: the token-independent keep-probability abar(t) (official: discretised ``MutualSchedule``).
        token_weight: f (V,), or None until the family calls ``set_token_weight``.
        lam: lambda (``--word_freq_lambda``, 0.3).
        pad_id: shorthand for one id in ``ignore_ids``.
        ignore_ids: ids excluded from the sentence mean (see ``set_ignore_ids``).
        max_keep: the clip's upper end (0.999, official).
    """

    token_dependent = True

    def __init__(
        self,
        base: NoiseSchedule,
        token_weight: Optional[Tensor] = None,
        lam: float = 0.3,
        pad_id: Optional[int] = None,
        max_keep: float = 0.999,
        ignore_ids: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if base.token_dependent:
            raise TypeError("SpindleSchedule's base must be token-independent")
        self.base, self.lam, self.max_keep = base, float(lam), float(max_keep)
        self.ignore_ids: tuple[int, ...] = ()
        self.set_ignore_ids([*([] if pad_id is None else [pad_id]), *ignore_ids])
        self.register_buffer("token_weight", torch.zeros(0))
        if token_weight is not None:
            self.set_token_weight(token_weight)

    @property
    def pad_id(self) -> Optional[int]:
        """The first of ``ignore_ids`` (None when there are none); kept for older callers."""
        return self.ignore_ids[0] if self.ignore_ids else None

    def set_ignore_ids(self, ids: Sequence[int]) -> None:
        """Ids whose positions take no part in the sentence mean of f: PAD, and any token the family
        never diffuses ([CLS]/[SEP] kept as a frame). Without them a padded row's mean is pulled towards
        f[PAD] = 0 and every real token's keep-probability rises with the amount of padding."""
        seen: dict[int, None] = {}
        for i in ids:
            if i is not None:
                seen[int(i)] = None
        self.ignore_ids = tuple(seen)

    def set_token_weight(self, token_weight: Tensor) -> None:
        """Set f (V,): log(1 + count) normalised to [0, 1] (``textdiff.data`` computes it from the
        training split). Families call this when the vocabulary is known."""
        token_weight = torch.as_tensor(token_weight, dtype=torch.float32)
        if token_weight.dim() != 1:
            raise ValueError(f"token_weight must be 1-D (vocab,), got shape {tuple(token_weight.shape)}")
        self.token_weight = token_weight.to(self.token_weight.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        key = prefix + "token_weight"
        if key in state_dict and state_dict[key].shape != self.token_weight.shape:
            self.token_weight = torch.empty_like(state_dict[key])  # weights are set per vocabulary
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def centred_weight(self, x0: Tensor) -> Tensor:
        """f_i - mean_j f_j, the mean over each sentence's own tokens (positions whose id is not in
        ``ignore_ids``; official ``process_fn_in_collate``): (B, L) ids -> (B, L) float."""
        if self.token_weight.numel() == 0:
            raise RuntimeError("SpindleSchedule has no token weights yet: call set_token_weight(f) first")
        f = self.token_weight[x0]
        if not self.ignore_ids:
            return f - f.sum(-1, keepdim=True) / max(x0.shape[-1], 1)
        valid = ~torch.isin(x0, torch.tensor(self.ignore_ids, device=x0.device))
        return f - (f * valid).sum(-1, keepdim=True) / valid.sum(-1, keepdim=True).clamp_min(1)

    def alpha_bar(self, t: Tensor, x0: Optional[Tensor] = None) -> Tensor:
        if x0 is None:
            raise ValueError("SpindleSchedule.alpha_bar needs x0 (B, L): its keep-probability is per token")
        return self.keep_from_weight(t.view(-1, 1), self.centred_weight(x0))

    def keep_from_weight(self, t: Tensor, weight: Tensor,
                         terms: Optional[tuple[Tensor, Tensor, Tensor]] = None) -> Tensor:
        """p_i(t) from times ``t`` and centred weights f_i - mean f (``centred_weight``) that broadcast against
        each other: ``alpha_bar`` passes t (B, 1) or (J + 1, 1) against weights (B, L) or (R, 1, L); t (1, J + 1)
        against the weights (n, 1) of n positions gives their keep-probabilities at J + 1 times (n, J + 1).
        ``terms``: ``time_terms(t)``, when the caller keeps them for a time grid it reads many times."""
        base, lam_bump, zero = self.time_terms(t) if terms is None else terms
        p = (base + lam_bump * weight).clamp(0.0, self.max_keep)
        return torch.where(zero, 1.0, p)

    def time_terms(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The terms of p_i(t) that depend on t only, each of t's shape: abar(t), lam * max(sin(pi t), 0) and
        t <= 0 (where p = 1)."""
        bump = torch.sin(math.pi * t).clamp_min(0)  # exact 0 at t = 1 (float32 sin(pi) < 0)
        return self.base.alpha_bar(t.reshape(-1), None).view(t.shape), self.lam * bump, t <= 0

    def sampling_times(self, num_steps: int, spacing: str = "uniform") -> Tensor:
        return self.base.sampling_times(num_steps, spacing)

    def training_times(self, u: Tensor) -> Tensor:
        return self.base.training_times(u)

    def loss_weight(self, t: Tensor, x0: Optional[Tensor] = None) -> Tensor:
        """-p_i'(t) / (1 - p_i(t)) per token (B, L), with p' = abar'(t) + lam pi cos(pi t) (f_i - mean f)
        inside the clip and 0 where p is clipped; abar' from the base's own weight."""
        p = self.alpha_bar(t, x0)
        a = self.base.alpha_bar(t, None).view(-1, 1)
        da = -self.base.loss_weight(t, None).view(-1, 1) * (1 - a)  # abar' = -w (1 - abar)
        dp = da + self.lam * math.pi * torch.cos(math.pi * t.view(-1, 1)) * self.centred_weight(x0)
        inside = (p > 0) & (p < self.max_keep)
        return (-dp * inside / (1 - p).clamp_min(_LOG_SNR_EPS)).clamp_min(0)
