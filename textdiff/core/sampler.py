"""The one sampling loop, for Gaussian and absorbing processes alike (diffusers' denoiser/scheduler split).

Each step: ``out = denoise(x, t, self_cond)``; ``x0 = process.to_x0(out, x, t)``; x0 hooks (clamping,
renormalisation, logit filters); ``x = process.reverse_step(x, x0, t, s, eta)``; step hooks
(infilling, guidance). Families pass a ``denoise`` closure; they never write their own loop.

Absorbing processes take a cheaper road to the same step by default (``Sampler(reveal_first=True)``):
only positions that hold [MASK] can change, so x0 and its hooks are computed at those positions only,
for the sequences whose network output is new, and kept between steps (``textdiff.core.reveal_first``).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from textdiff.core.absorbing import AbsorbingProcess
from textdiff.core.gaussian import GaussianProcess, check_solver
from textdiff.core.hooks import LogitFilter, apply_x0_hooks
from textdiff.core.reveal_first import RevealFirst
from textdiff.core.unmasking import ParallelUnmasking, check_options
from textdiff.core.types import DenoiseFn, SampleOutput, StepHook, X0Hook

__all__ = ["Process", "SampleOutput", "Sampler", "StepHook"]  # SampleOutput, StepHook: defined in core.types


Process = Union[GaussianProcess, AbsorbingProcess]


class Sampler:
    """Runs K reverse steps out of the process's time grid.

    Args:
        process: a ``GaussianProcess`` or ``AbsorbingProcess`` (its ``for_sampling()`` view is used,
            so Difformer's decoding noise factor applies here).
        num_steps: K, the number of reverse steps (DDIM-style respacing of a T-step chain).
        spacing: time-grid rule ("uniform"; "ddim" for discrete schedules; "quadratic" for continuous).
        eta: 0 = deterministic DDIM, 1 = ancestral DDPM (absorbing: 1 = ancestral, 0 = most-confident-first).
        variance: Gaussian only: "small" (posterior) or "large" (beta_t; needs eta=1).
        solver: Gaussian only: None or "ddim" = the reverse step above (with ``eta``, ``variance``); "dpmpp_2m" =
            DPM-Solver++(2M) (``GaussianProcess.dpm_solver_step``), deterministic, for few steps (needs eta=0;
            ignores ``variance``, as DDIM at eta=0 does); "sde_dpmpp_2m" = its SDE form, the ancestral step (eta=1,
            posterior variance) with the same second-order correction. Its x0 hooks and step hooks run as for "ddim".
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
        reveal_first: absorbing only (default True): compute x0, its hooks and the reverse step only at
            the positions that hold [MASK], for the sequences whose network output is new, instead of on
            the whole (B, L, V) tensor (``textdiff.core.reveal_first``). The samples are the same, bit for bit,
            as with ``reveal_first=False`` (the reference step). Runs the reference step when an x0 hook is
            not ``rowwise`` (``hooks``) and with ``self_condition``.
        closed_form_posterior: absorbing, eta = 1, with a ``LogitFilter`` (temperature, top-k, no top-p or
            banned ids) as ``posterior_filter`` (DiffusionBERT's preset): draw each masked position's reveal
            and token in closed form from its k largest log-probs (``AbsorbingProcess.filtered_reveal_prob``),
            and with ``reuse_unchanged`` the step of its reveal once for all the steps until its sequence
            changes (``AbsorbingProcess.first_reveal``), so steps without a reveal cost nothing: about 12x the
            sequences/s at the DiffusionBERT preset. The same distribution by construction and by the tests of
            ``tests/core/test_reveal_first.py``, other random draws; on a trained model each step's distribution
            is the reference's to 1.7e-7 in total variation (``experiments/sampling/closed_form_check.py``). Off
            here, on in ``conf/sampler/absorbing.yaml``; ignored by the ``unmask`` policies.
        unmask: absorbing only: which [MASK] positions a step reveals (``textdiff.core.unmasking``). "schedule"
            (default): the reverse step above (``eta``). "confidence": the n most confident, n from the schedule
            (eta = 0's count; LLaDA's low-confidence remasking). "threshold": every position whose confidence
            exceeds ``threshold``, at least one per sequence (Fast-dLLM). Both reveal all that is left at the
            last step, stop a sequence once no [MASK] is left (K is a cap: ``nfe`` <= K) and ignore ``eta``.
        confidence: "prob" (the chosen token's probability) or "margin" (top-1 minus top-2 probability).
        threshold: tau in (0, 1) for ``unmask="threshold"``.
        block_length: semi-autoregressive blocks of this many positions, left to right, each started once the
            one before holds no [MASK], the K steps split evenly over them (LLaDA); None: one block.
        draw: the token at a revealed position: "argmax" of x0 or "sample" from it (after ``posterior_filter``).
        float64: absorbing only: draw tokens (and, with ``closed_form_posterior``, reveal steps) from categoricals
            computed in float64 (``textdiff.core.categorical.sample_categorical``): float32 draws can misplace or
            drop tokens of probability below ~1e-7 next to a peak (on CUDA also ``torch.multinomial``'s), which lowers
            the effective temperature. Off: the float32 draws, the same ids as before the option existed; on: other
            ids for the same seed where a draw is an inverse CDF (``closed_form_posterior``; on the CPU the
            ``torch.multinomial`` draws keep their ids). On in the LLaDA-style policy configs
            (``conf/sampler/{confidence,threshold,semi_ar}.yaml``), as LLaDA's ``generate.py`` (``add_gumbel_noise``).
    """

    def __init__(
        self,
        process: Process,
        num_steps: int = 200,
        spacing: str = "uniform",
        eta: float = 0.0,
        variance: Optional[str] = None,
        solver: Optional[str] = None,
        hooks: Sequence[X0Hook] = (),
        step_hooks: Sequence[StepHook] = (),
        self_condition: bool = False,
        early_stop: int = 0,
        reuse_unchanged: bool = False,
        reveal_first: bool = True,
        closed_form_posterior: bool = False,
        unmask: str = "schedule",
        confidence: str = "prob",
        threshold: float = 0.9,
        block_length: Optional[int] = None,
        draw: str = "argmax",
        float64: bool = False,
    ) -> None:
        if not isinstance(process, (GaussianProcess, AbsorbingProcess)):
            raise TypeError(f"process must be a GaussianProcess or AbsorbingProcess, got {type(process).__name__}")
        if not 0 <= early_stop < num_steps:
            raise ValueError(f"early_stop must be in [0, num_steps), got {early_stop} with num_steps={num_steps}")
        if variance is not None and not isinstance(process, GaussianProcess):
            raise ValueError("variance applies to Gaussian processes only")
        if reuse_unchanged and not isinstance(process, AbsorbingProcess):
            raise ValueError("reuse_unchanged applies to absorbing processes only")
        if float64 and not isinstance(process, AbsorbingProcess):
            raise ValueError("float64 applies to absorbing processes only (a Gaussian sampler draws no categorical)")
        self.process = process.for_sampling()
        self.num_steps, self.spacing, self.eta = int(num_steps), spacing, float(eta)
        self.variance = variance
        self.solver = check_solver(solver, process, self.eta, variance)  # None: the reverse step
        self.hooks, self.step_hooks = list(hooks), list(step_hooks)
        self.self_condition, self.early_stop = bool(self_condition), int(early_stop)
        self.reuse_unchanged, self.reveal_first = bool(reuse_unchanged), bool(reveal_first)
        self.closed_form_posterior = bool(closed_form_posterior)
        self.unmask, self.confidence, self.threshold, self.draw = unmask, confidence, float(threshold), draw
        self.block_length = None if block_length is None else int(block_length)
        self.float64 = bool(float64)
        check_options(self)  # textdiff.core.unmasking
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
                and top-k), instead of on the x0 estimate. With ``unmask`` "confidence" or "threshold" it
                filters x0 at the masked positions for the token choice only (not a joint posterior).
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
        if self.float64:
            step_kw["float64"] = True
        if self.unmask != "schedule":  # a parallel-decoding policy (textdiff.core.unmasking)
            run = ParallelUnmasking(self, x0_hooks, s_hooks, posterior_filter, generator)
            return run.sample(denoise, x, keep_trajectory=keep_trajectory, progress=progress)
        mode = self._reveal_first_mode(x0_hooks, posterior_filter)
        if mode is not None:
            run = RevealFirst(self, mode, x0_hooks, s_hooks, posterior_filter, generator)
            return run.sample(denoise, x, keep_trajectory=keep_trajectory, progress=progress)
        batch = x.shape[0]
        traj = [x.detach().cpu()] if keep_trajectory else None
        x0_traj: Optional[list[Tensor]] = [] if keep_trajectory else None
        x0 = prev_in = out = None
        x0_prev = t_prev = None  # solver="dpmpp_2m": the previous step's (hooked) x0 estimate and time
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
                    sub = apply_x0_hooks(proc.to_x0(out[rows], x[rows], t[rows]), t[rows], x0_hooks)
                    x0 = x0.clone() if keep_trajectory else x0
                    x0[rows] = sub
            else:
                x0 = apply_x0_hooks(proc.to_x0(out, x, t), t, x0_hooks)
            if self.solver is None:
                x_t, x = x, proc.reverse_step(x, x0, t, s, eta=self.eta, generator=generator, **step_kw)
            else:  # DPM-Solver++(2M) on the hooked x0 estimates of this step and the last
                noise = None if self.solver == "dpmpp_2m" else \
                    torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x_t, x = x, proc.dpm_solver_step(x, x0, x0_prev, t, s, t_prev, noise=noise)
                x0_prev, t_prev = x0, t
            for hook in s_hooks:
                x = hook(x, s, t, x0, x_t)
            if keep_trajectory:
                traj.append(x.detach().cpu())
                x0_traj.append(x0.detach().cpu())
            if progress is not None:
                progress(k + 1, n_run)
        return SampleOutput(x=x, x0=x0, nfe=nfe, times=times, trajectory=traj, x0_trajectory=x0_traj,
                            row_evals=row_evals)

    def _reveal_first_mode(self, x0_hooks: Sequence[X0Hook], posterior_filter: Optional[X0Hook]) -> Optional[str]:
        """Which reveal-first step runs (``textdiff.core.reveal_first``), or None for the reference loop:
        "deterministic" (eta = 0), "ancestral" (eta = 1), "posterior" (eta = 1 with a posterior filter, exact) or
        "filtered" (eta = 1, ``closed_form_posterior`` and a ``LogitFilter`` of temperature and top-k on the
        posterior)."""
        if not (self.reveal_first and isinstance(self.process, AbsorbingProcess)) or self.self_condition:
            return None
        if not all(getattr(h, "rowwise", False) for h in x0_hooks):
            return None
        AbsorbingProcess.check_eta(self.eta)
        if self.eta == 0.0:
            return "deterministic"
        if posterior_filter is None:
            return "ancestral"
        if self.closed_form_posterior and isinstance(posterior_filter, LogitFilter) \
                and posterior_filter.top_p in (None, 1.0) and not posterior_filter.banned_ids:
            return "filtered"
        return "posterior"
