"""The one sampling loop, for Gaussian and absorbing processes alike (diffusers' denoiser/scheduler split).

Each step: ``out = denoise(x, t, self_cond)``; ``x0 = process.to_x0(out, x, t)``; x0 hooks (clamping,
renormalisation, logit filters); ``x = process.reverse_step(x, x0, t, s, eta)``; step hooks
(infilling, guidance). Families pass a ``denoise`` closure; they never write their own loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Sequence, Union

import torch
from torch import Tensor

from textdiff.core.absorbing import AbsorbingProcess
from textdiff.core.gaussian import GaussianProcess
from textdiff.core.types import DenoiseFn, X0Hook


class StepHook(Protocol):
    """``(x_s, s, t, x0_hat, x_t) -> x_s``: runs after each reverse step x_t -> x_s (infilling, classifier
    guidance; ``textdiff.core.control``). s, t: (B,); x_t, x_s: the states before and after the step."""

    def __call__(self, x_s: Tensor, s: Tensor, t: Tensor, x0_hat: Tensor, x_t: Tensor) -> Tensor: ...


Process = Union[GaussianProcess, AbsorbingProcess]


@dataclass
class SampleOutput:
    """What ``Sampler.sample`` returns.

    Attributes:
        x: the final state: (B, L, D) float for Gaussian processes (equal to ``x0`` after the last step),
            (B, L) long for absorbing ones. With ``early_stop`` it is the state where the loop stopped.
        x0: the last x0 estimate after hooks: (B, L, D) or (B, L, V) log-probs.
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


class Sampler:
    """Runs K reverse steps out of the process's time grid.

    Args:
        process: a ``GaussianProcess`` or ``AbsorbingProcess`` (its ``for_sampling()`` view is used,
            so Difformer's decoding noise factor applies here).
        num_steps: K, the number of reverse steps (DDIM-style respacing of a T-step chain).
        spacing: time-grid rule ("uniform"; "ddim" for discrete schedules; "quadratic" for continuous).
        eta: 0 = deterministic DDIM, 1 = ancestral DDPM (absorbing: 1 = ancestral, 0 = most-confident-first).
        variance: Gaussian only: "small" (posterior) or "large" (beta_t; needs eta=1).
        hooks: x0 hooks ``(x0, t) -> x0`` applied at every step, before the reverse step.
        step_hooks: ``(x_s, s, t, x0, x_t) -> x_s`` applied after every reverse step.
        self_condition: pass the previous step's x0 estimate to ``denoise`` (None at the first step).
        early_stop: stop after K - early_stop steps (Difformer's ``--decoding-early-stopping``); the
            caller reads ``SampleOutput.x0``.
        reuse_unchanged: absorbing only: reuse the last network output for every sequence in which no
            token changed since the last call, and run the denoiser on the changed sequences only
            (exact for a time-agnostic network whose rows are independent; MDLM's ``ddpm_cache``,
            per sequence rather than per batch). When every x0 hook is ``time_invariant`` the
            unchanged sequences also keep their x0 estimate (the absorbing ``to_x0`` ignores t).
    """

    def __init__(
        self,
        process: Process,
        num_steps: int = 200,
        spacing: str = "uniform",
        eta: float = 0.0,
        variance: Optional[str] = None,
        hooks: Sequence[X0Hook] = (),
        step_hooks: Sequence[StepHook] = (),
        self_condition: bool = False,
        early_stop: int = 0,
        reuse_unchanged: bool = False,
    ) -> None:
        if not isinstance(process, (GaussianProcess, AbsorbingProcess)):
            raise TypeError(f"process must be a GaussianProcess or AbsorbingProcess, got {type(process).__name__}")
        if not 0 <= early_stop < num_steps:
            raise ValueError(f"early_stop must be in [0, num_steps), got {early_stop} with num_steps={num_steps}")
        if variance is not None and not isinstance(process, GaussianProcess):
            raise ValueError("variance applies to Gaussian processes only")
        if reuse_unchanged and not isinstance(process, AbsorbingProcess):
            raise ValueError("reuse_unchanged applies to absorbing processes only")
        self.process = process.for_sampling()
        self.num_steps, self.spacing, self.eta = int(num_steps), spacing, float(eta)
        self.variance = variance
        self.hooks, self.step_hooks = list(hooks), list(step_hooks)
        self.self_condition, self.early_stop = bool(self_condition), int(early_stop)
        self.reuse_unchanged = bool(reuse_unchanged)
        self.timesteps()  # validate num_steps/spacing against the schedule now, not mid-run

    def timesteps(self) -> Tensor:
        """The K + 1 times visited, from 1 to 0: (K + 1,) float64."""
        return self.process.schedule.sampling_times(self.num_steps, self.spacing)

    @torch.no_grad()
    def sample(
        self,
        denoise: DenoiseFn,
        shape: tuple[int, ...],
        *,
        x_init: Optional[Tensor] = None,
        generator: Optional[torch.Generator] = None,
        device: Optional[torch.device] = None,
        hooks: Sequence[X0Hook] = (),
        step_hooks: Sequence[StepHook] = (),
        keep_trajectory: bool = False,
        progress: Optional[Callable[[int, int], None]] = None,
        posterior_filter: Optional[X0Hook] = None,
    ) -> SampleOutput:
        """Draw samples.

        Args:
            denoise: ``(x_t, t, self_cond) -> model output`` (see ``DenoiseFn``).
            shape: (B, L, D) for Gaussian processes, (B, L) for absorbing ones.
            x_init: start here instead of a prior draw (same shape).
            generator: RNG for the prior and the step noise (seeds the whole run).
            device: where to sample (default: ``x_init``'s device, else CPU).
            hooks, step_hooks: extra hooks for this call, after the sampler's own.
            keep_trajectory: keep every state and x0 estimate (on CPU).
            progress: called as ``progress(step, total)`` after each step.
            posterior_filter: absorbing only: a logit filter on the joint reverse posterior of each
                masked position (``AbsorbingProcess.reverse_step``; DiffusionBERT's official temperature
                and top-k), instead of on the x0 estimate.
        """
        proc = self.process
        if posterior_filter is not None and not isinstance(proc, AbsorbingProcess):
            raise ValueError("posterior_filter applies to absorbing processes only")
        device = device or (x_init.device if x_init is not None else torch.device("cpu"))
        if x_init is not None:
            x = x_init.to(device)
        elif isinstance(proc, GaussianProcess):
            x = proc.prior(shape, generator=generator, device=device)
        else:
            x = proc.prior(shape, device=device)
        times = self.timesteps()
        x0_hooks, s_hooks = [*self.hooks, *hooks], [*self.step_hooks, *step_hooks]
        step_kw: dict = {"variance": self.variance} if self.variance is not None else {}
        if posterior_filter is not None:
            step_kw["posterior_filter"] = posterior_filter
        batch = x.shape[0]
        traj = [x.detach().cpu()] if keep_trajectory else None
        x0_traj: Optional[list[Tensor]] = [] if keep_trajectory else None
        x0 = prev_in = out = None
        reuse_x0 = self.reuse_unchanged and all(getattr(h, "time_invariant", False) for h in x0_hooks)
        nfe, row_evals, n_run = 0, 0, self.num_steps - self.early_stop
        for k in range(n_run):
            t = torch.full((batch,), float(times[k]), device=device)
            s = torch.full((batch,), float(times[k + 1]), device=device)
            sc = x0 if self.self_condition else None
            rows = None  # None: every sequence is (re)computed this step
            if self.reuse_unchanged and out is not None:
                rows = (x != prev_in).flatten(1).any(-1).nonzero().squeeze(-1)  # sequences that changed
                if rows.numel():  # recompute only those (exact when each row's output depends on that row only)
                    out[rows] = denoise(x[rows], t[rows], None if sc is None else sc[rows])
                    nfe, row_evals = nfe + 1, row_evals + rows.numel()
                    prev_in = x.clone()
            else:
                out = denoise(x, t, sc)
                nfe, row_evals = nfe + 1, row_evals + batch
                if self.reuse_unchanged:
                    prev_in = x.clone()
            if rows is not None and reuse_x0:  # to_x0 and the hooks ignore t: unchanged rows keep their x0
                if rows.numel():
                    sub = proc.to_x0(out[rows], x[rows], t[rows])
                    for hook in x0_hooks:
                        sub = hook(sub, t[rows])
                    x0 = x0.clone() if keep_trajectory else x0
                    x0[rows] = sub
            else:
                x0 = proc.to_x0(out, x, t)
                for hook in x0_hooks:
                    x0 = hook(x0, t)
            x_t, x = x, proc.reverse_step(x, x0, t, s, eta=self.eta, generator=generator, **step_kw)
            for hook in s_hooks:
                x = hook(x, s, t, x0, x_t)
            if keep_trajectory:
                traj.append(x.detach().cpu())
                x0_traj.append(x0.detach().cpu())
            if progress is not None:
                progress(k + 1, n_run)
        return SampleOutput(x=x, x0=x0, nfe=nfe, times=times, trajectory=traj, x0_trajectory=x0_traj,
                            row_evals=row_evals)
