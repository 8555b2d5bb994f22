"""The absorbing sampler's reveal-first step (``Sampler(reveal_first=True)``, the default): only [MASK] positions
change in an absorbing reverse step, so x0, its hooks and the step are computed at those positions only, for the
sequences whose network output is new, and kept between steps. Same samples as the reference step
(``AbsorbingProcess.reverse_step`` on the whole (B, L, V) tensor); with ``Sampler(closed_form_posterior=True)``
and a ``LogitFilter`` on the joint posterior, the same distribution by other draws. ``Sampler.sample`` decides
when it runs.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from textdiff.core.categorical import sample_categorical
from textdiff.core.hooks import LogitFilter, apply_x0_hooks
from textdiff.core.types import DenoiseFn, SampleOutput, StepHook, X0Hook, _Deferred

_ALL = "all"  # every sequence
_TABLE_ELEMENTS = 2**22  # the largest per-step table (sequences x steps x positions) built at once
_KEPT_TABLE_ELEMENTS = 2**24  # the largest u table kept for a whole run (steps x B x L); per step beyond


class RevealFirst:
    """One absorbing ``Sampler.sample`` run with the reveal-first step (``Sampler(reveal_first=True)``).

    Only [MASK] positions change in an absorbing reverse step, and for every mode but "filtered" a step
    needs, at masked positions only: argmax x0 (the spindle's u reads it; eta = 0 reveals it), the max
    log-prob (eta = 0's confidence order), and the full x0 row where a token is drawn. So after each
    denoiser call, x0 and its hooks are computed at the masked positions of the sequences whose output is
    new (``masked_x0`` on gathered (n, V) rows, the same operations as ``to_x0`` on (B, L, V)) and kept
    per position, with u of every later step (``unmask_table``, bit for bit ``unmask_prob``); the step
    itself works on (B, L) tensors and on the rows it draws from. When every x0 hook is a ``LogitFilter``
    the ancestral step takes argmax x0 from the logits (``fast_argmax``). Random draws are made in the
    same order and number as ``AbsorbingProcess.reverse_step``, so the samples are the same.

    "filtered" (a ``LogitFilter`` of temperature T and top-k on the joint posterior) keeps the k largest
    log-probs per masked position instead, and with cached outputs draws, per position, the step of its
    reveal over all the steps until its sequence changes (``first_reveal``): nothing is done at steps
    without a reveal. Same distribution as the reference, other random draws.

    ``out`` (B, L, V) holds the last network output at every masked position (revealed positions are
    stale: x0 there is the revealed token whatever the logits). Per-position caches are flat over B x L
    (index b * L + l) and valid where x holds [MASK].
    """

    NEVER = 2**62  # the reveal step of a position that is not waiting for one

    def __init__(self, sampler: Any, mode: str, x0_hooks: Sequence[X0Hook], step_hooks: Sequence[StepHook],
                 posterior_filter: Optional[X0Hook], generator: Optional[torch.Generator]) -> None:
        self.sampler, self.proc, self.mode = sampler, sampler.process, mode
        self.hooks, self.step_hooks = list(x0_hooks), list(step_hooks)
        self.posterior_filter, self.generator = posterior_filter, generator
        self.float64 = sampler.float64  # the token draws in float64 (sample_categorical)
        self.mask_id = self.proc.mask_id
        self.token_dependent = bool(self.proc.schedule.token_dependent)
        # x0 of a sequence whose output did not change stays valid when the hooks ignore t
        self.cacheable = sampler.reuse_unchanged and all(getattr(h, "time_invariant", False) for h in self.hooks)
        if mode == "filtered":
            self.temperature, self.top_k = posterior_filter.temperature, posterior_filter.top_k
        # ids the hooks ban; with hooks that only ban ids, x0 at a masked position is log_softmax of the logits
        # with [MASK] and those ids at -inf ("filtered" then skips the hooks' second log_softmax)
        banned = sorted({i for h in self.hooks if isinstance(h, LogitFilter) for i in h.banned_ids} - {self.mask_id})
        self.banned = torch.tensor(banned, dtype=torch.long)
        self.bans_only = all(isinstance(h, LogitFilter) and h.bans_only for h in self.hooks)
        # x0 hooks that are all LogitFilters keep argmax x0 where it is (up to rounding; see fast_argmax)
        self.filters_only = all(isinstance(h, LogitFilter) for h in self.hooks)
        self.min_temperature = min([1.0, *(h.temperature for h in self.hooks if isinstance(h, LogitFilter))])
        self.out: Optional[Tensor] = None
        self.work: Optional[Tensor] = None  # gather_rows' buffer
        self.time_terms: Optional[tuple[Tensor, ...]] = None  # "filtered" with the spindle: its time terms

    # ----- x0 at gathered positions -----
    def x0_rows(self, logits: Tensor, flat: Tensor, t: Tensor) -> Tensor:
        """x0 log-probs after the hooks (n, V) from the network's logits (n, V) at flat positions ``flat``
        (n,) that hold [MASK]: the same values as ``hooks(to_x0(out, x, t))`` there. t: (B,)."""
        lp = self.proc.masked_x0(logits)
        return apply_x0_hooks(lp, t.index_select(0, flat // self.L), self.hooks) if self.hooks else lp

    def fast_argmax(self, logits: Tensor, flat: Tensor, t: Tensor) -> Tensor:
        """argmax of ``x0_rows(logits, flat, t)`` (n,) when every x0 hook is a ``LogitFilter``, without
        running the hooks: temperature, top-k and top-p keep the largest allowed logit largest, so the
        argmax is that of the logits with [MASK] and the banned ids at -inf, unless rounding in the hooks'
        log_softmax steps can tie it with the runner-up. Where the gap to the runner-up is below a bound of
        that rounding (1e-5 x the stages x the magnitudes involved, over 10x the float32 worst case) the
        hooks are run. ``logits`` (n, V) is overwritten."""
        z = logits if logits.dtype == torch.float32 else logits.float()
        z.select(1, self.mask_id).fill_(float("-inf"))
        if self.banned.numel():
            top_all = z.amax(-1)  # the first log_softmax's max, banned ids included
            z.index_fill_(1, self.banned, float("-inf"))
        best, arg = z.max(-1)
        if not self.banned.numel():
            top_all = best
        z.scatter_(1, arg.unsqueeze(1), float("-inf"))
        gap = best - z.amax(-1)
        scale = (1 + (top_all - best) + 3 * math.log(z.shape[-1])) / self.min_temperature
        unsure = ~(gap > 1e-5 * (len(self.hooks) + 1) * scale)  # ties, near-ties, -inf, NaN
        if bool(unsure.any()):
            idx = unsure.nonzero().squeeze(1)
            raw = self.out.view(-1, self.out.shape[-1]).index_select(0, flat[idx])
            arg[idx] = self.x0_rows(raw, flat[idx], t).argmax(-1)
        return arg

    def full_x0(self, x: Tensor, t: Tensor) -> Tensor:
        """The reference step's x0 estimate (B, L, V): ``hooks(to_x0(out, x, t))``."""
        return apply_x0_hooks(self.proc.to_x0(self.out, x, t), t, self.hooks)

    def argmax_state(self, x: Tensor, rows: object = _ALL) -> Tensor:
        """argmax x0 of the reference step (B, L) (or of ``rows`` (R, L)): the cached argmax at masked
        positions, the token elsewhere (a revealed token's x0 is certain)."""
        if rows is _ALL:
            return torch.where(x == self.mask_id, self.argmax, x)
        xr = x.index_select(0, rows)
        return torch.where(xr == self.mask_id, self.argmax.index_select(0, rows), xr)

    def row_chunks(self, R: int, J: int) -> list[tuple[int, int]]:
        """Ranges [r0, r1) of R sequences whose per-step tables (r1 - r0) x J x L stay under
        ``_TABLE_ELEMENTS``."""
        per = max(1, _TABLE_ELEMENTS // max(1, J * self.L))
        return [(r0, min(R, r0 + per)) for r0 in range(0, R, per)]

    # ----- caches -----
    def allocate(self, x: Tensor, vocab: int) -> None:
        """Per-position caches for a (B, L) state and V = ``vocab``."""
        n, dev = x.numel(), x.device
        self.argmax = torch.zeros_like(x)
        self.banned = self.banned.to(dev)
        if self.mode != "filtered":  # u of every step: one value per step, or per position (the spindle)
            grid = self.times[: self.n_run + 1]
            if self.token_dependent:  # (K, B, L), set where a sequence changes; None: unmask_prob at each step
                small = self.n_run * x.numel() <= _KEPT_TABLE_ELEMENTS
                self.u = torch.zeros(self.n_run, *x.shape, device=dev) if small else None
                self.beta = self.proc.official_beta(grid[:-1], grid[1:])
            else:
                self.u = self.proc.unmask_table(grid, x[:1]).view(self.n_run, 1, 1).expand(-1, *x.shape)
        if self.mode == "deterministic":
            self.conf = torch.zeros(x.shape, device=dev)
        if self.mode == "posterior":
            self.logp = torch.empty(n, vocab, device=dev)
        if self.mode == "filtered":
            self.kk = self.top_k if self.top_k is not None and self.top_k < vocab else None
            self.event = torch.full((n,), self.NEVER, dtype=torch.long, device=dev)  # the step of each reveal
            self.event_token = torch.zeros(n, dtype=torch.long, device=dev)  # and its token (with a top-k)
            self.next_event = self.NEVER
            grid = self.times
            self.beta = self.proc.official_beta(grid[:-1], grid[1:]) if self.token_dependent else None
            time_terms = getattr(self.proc.schedule, "time_terms", None)  # the spindle's, once per run
            self.time_terms = None if time_terms is None else time_terms(grid.view(1, -1))

    def take(self, x: Tensor, new: Tensor, rows: object) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """New network outputs ``new`` (R, L, V) of the sequences ``rows`` ((R,) long, or ``_ALL`` with
        ``new`` the whole output): their logits at masked positions (n, V), stored into ``out``, with the
        positions' flat indices (n,), their index into ``rows`` (n,) and their column (n,)."""
        V = new.shape[-1]
        new = new.contiguous()
        if rows is _ALL:
            flat = (x.view(-1) == self.mask_id).nonzero().squeeze(1)
            self.out = new
            return self.gather_rows(new.view(-1, V), flat), flat, flat // self.L, flat % self.L
        r, col = (x.index_select(0, rows) == self.mask_id).nonzero(as_tuple=True)
        logits = self.gather_rows(new.view(-1, V), r * self.L + col)
        flat = rows[r] * self.L + col
        self.out.view(-1, V).index_copy_(0, flat, logits)
        return logits, flat, r, col

    def gather_rows(self, src: Tensor, index: Tensor) -> Tensor:
        """``src.index_select(0, index)`` (n, V) into a buffer kept for the run (valid until the next call): a
        fresh n x V tensor at every network call costs page faults on the CPU, where the allocator maps large
        tensors anew each time (about a tenth of the absorbing sampler's time at K = 128)."""
        need = index.numel() * src.shape[1]
        if self.work is None or self.work.numel() < need or self.work.dtype != src.dtype:
            self.work = torch.empty(need, dtype=src.dtype, device=src.device)
        return torch.index_select(src, 0, index, out=self.work[:need].view(index.numel(), src.shape[1]))

    def refresh(self, x: Tensor, t: Tensor, k: int, logits: Tensor, flat: Tensor, rows: object, r: Tensor,
                col: Tensor) -> None:
        """Recompute the caches at masked positions ``flat`` of the sequences ``rows`` from their logits
        (n, V) for step ``k`` (r, col: each position's index into ``rows`` and column)."""
        if self.mode == "filtered":
            self.refresh_filtered(x, k, logits, flat, rows, r, col, t)
            return
        if not flat.numel() or (self.mode == "ancestral" and not self.token_dependent):
            return  # a token-independent u does not read x0: the ancestral step needs x0 only where it draws
        if self.mode == "ancestral" and self.filters_only:
            arg = self.fast_argmax(logits, flat, t)
        else:
            lp = self.x0_rows(logits, flat, t)
            if self.mode == "deterministic":
                conf, arg = lp.max(-1)
                self.conf.view(-1).index_copy_(0, flat, conf)
            else:
                arg = lp.argmax(-1)
            if self.mode == "posterior":
                self.logp.index_copy_(0, flat, lp)
        self.argmax.view(-1).index_copy_(0, flat, arg)
        if self.token_dependent and self.u is not None:  # u of these sequences' positions while they hold
            end = self.n_run if self.cacheable else k + 1
            seq = torch.arange(x.shape[0], device=x.device) if rows is _ALL else rows
            for r0, r1 in self.row_chunks(seq.numel(), end - k):
                table = self.proc.unmask_table(self.times[k: end + 1], self.argmax_state(x, seq[r0:r1]),
                                               self.beta[k:end])
                self.u[k:end].index_copy_(1, seq[r0:r1], table.transpose(0, 1))

    def refresh_filtered(self, x: Tensor, k: int, logits: Tensor, flat: Tensor, rows: object, r: Tensor,
                         col: Tensor, t: Tensor) -> None:
        """"filtered": from the k largest x0 log-probs of each masked position (or logsumexp(l / T) without a
        top-k), the step of its reveal over the steps for which they hold (to the end with cached outputs,
        else this step) and, with a top-k, the token it reveals then."""
        if rows is _ALL:
            self.event.fill_(self.NEVER)
        if flat.numel():
            if self.bans_only:  # log_softmax of the logits with [MASK] and the banned ids at -inf
                lp = logits.float() if logits.dtype != torch.float32 else logits
                lp.select(1, self.mask_id).fill_(float("-inf"))
                if self.banned.numel():
                    lp.index_fill_(1, self.banned, float("-inf"))
                torch.log_softmax(lp, -1, out=lp)
            else:
                lp = self.x0_rows(logits, flat, t)
            top, ids = lp.topk(self.kk or 1, -1)
            lse = torch.logsumexp(lp / self.temperature, -1) if self.kk is None else None
            if self.token_dependent:
                self.argmax.view(-1).index_copy_(0, flat, ids[:, 0])
            end = self.n_run if self.cacheable else k + 1
            seq = torch.arange(x.shape[0], device=x.device) if rows is _ALL else rows
            chunks = self.row_chunks(seq.numel(), end - k)
            cuts = [0, flat.numel()] if len(chunks) == 1 else \
                torch.searchsorted(r, torch.tensor([c[0] for c in chunks] + [seq.numel()], device=r.device)).tolist()
            for (r0, r1), p0, p1 in zip(chunks, cuts[:-1], cuts[1:]):  # positions of sequences r0..r1 - 1
                if p1 > p0:
                    self.draw_events(x, k, end, seq[r0:r1], r[p0:p1] - r0, col[p0:p1], flat[p0:p1], top[p0:p1],
                                     ids[p0:p1], None if lse is None else lse[p0:p1])
        self.next_event = int(self.event.min())

    def draw_events(self, x: Tensor, k: int, end: int, seq: Tensor, r: Tensor, col: Tensor, flat: Tensor,
                    top: Tensor, ids: Tensor, lse: Optional[Tensor]) -> None:
        """"filtered": the step in [k, end) at which each masked position ``flat`` (n,) (sequence ``seq[r]``,
        column ``col``) is revealed, NEVER when not before ``end``, and with a top-k its token; from its k
        largest log-probs ``top`` (n, k) and their ids (n, k), or ``lse`` (n,) without a top-k."""
        grid = self.times[k: end + 1]
        if self.token_dependent:
            beta = None if self.beta is None else self.beta[k:end]
            terms = None if self.time_terms is None else tuple(a[:, k: end + 1] for a in self.time_terms)
            u = self.proc.unmask_table(grid, self.argmax_state(x, seq), beta, at=(r, col), terms=terms)  # (n, J)
        else:
            u = self.proc.unmask_table(grid, x[:1]).view(1, -1).expand(flat.numel(), -1)
        stay = self.proc.filtered_stay_logprob(top, lse, u, self.temperature, self.kk)
        step = self.proc.first_reveal(stay, self.generator, self.float64)  # (n,) in [0, J]; J: none before `end`
        if self.kk is not None:  # the token revealed at that step: one of the k (or k - 1) largest
            u_then = u.gather(1, step.clamp(max=u.shape[1] - 1).unsqueeze(1)).squeeze(1)
            self.event_token.index_copy_(0, flat, self.proc.filtered_token_draw(
                top, ids, u_then, self.temperature, self.kk, self.generator, self.float64))
        step.add_(k).masked_fill_(step >= end, self.NEVER)
        self.event.index_copy_(0, flat, step)

    # ----- one reverse step -----
    def step(self, x: Tensor, t: Tensor, s: Tensor, k: int) -> Tensor:
        """x_t -> x_s (B, L) at step ``k``; returns ``x`` itself when nothing changes."""
        proc, gen = self.proc, self.generator
        if self.mode == "filtered":
            if k != self.next_event:
                return x
            flat = (self.event == k).nonzero().squeeze(1)
            self.event.index_fill_(0, flat, self.NEVER)  # (before a filled position is dropped: it waits no more)
            if self.step_hooks:  # a step hook may have filled one
                flat = flat[x.view(-1).index_select(0, flat) == self.mask_id]
            if self.kk is None:  # the whole row: p(v) ∝ exp(l_v / T)
                raw = self.out.view(-1, self.out.shape[-1]).index_select(0, flat)
                tokens = sample_categorical(self.x0_rows(raw, flat, t) / self.temperature, generator=gen,
                                            float64=self.float64, method="inverse_cdf")
            else:
                tokens = self.event_token.index_select(0, flat)
            self.next_event = int(self.event.min())
            x = x.clone()
            x.view(-1).index_copy_(0, flat, tokens)
            return x
        masked = x == self.mask_id
        if self.u is not None:  # (B, L): unmask_prob(t, s, argmax x0) as reverse_step computes it
            p_unmask = self.u[k]
        else:
            p_unmask = proc.unmask_prob(t, s, self.argmax_state(x))
        if self.mode == "deterministic":
            conf = self.conf.masked_fill(~masked, float("-inf"))
            return torch.where(proc.deterministic_reveal(masked, p_unmask, conf), self.argmax_state(x), x)
        if self.mode == "posterior":
            rows = masked.nonzero(as_tuple=True)
            if not rows[0].numel():
                return x
            joint = proc.posterior_joint(self.logp.index_select(0, rows[0] * self.L + rows[1]), p_unmask[rows])
            x = x.clone()
            x[rows] = proc.draw_tokens(self.posterior_filter(joint, t[rows[0]]), gen, self.float64)
            return x
        reveal = proc.ancestral_reveal(masked, p_unmask, gen)  # (B, L) uniforms, as reverse_step
        rows = reveal.nonzero(as_tuple=True)
        if not rows[0].numel():
            return x
        flat = rows[0] * self.L + rows[1]
        raw = self.out.view(-1, self.out.shape[-1]).index_select(0, flat)
        x = x.clone()
        x[rows] = proc.draw_tokens(self.x0_rows(raw, flat, t), gen, self.float64)
        return x

    # ----- the loop -----
    def sample(self, denoise: DenoiseFn, x: Tensor, *, keep_trajectory: bool = False,
               progress: Optional[Callable[[int, int], None]] = None) -> SampleOutput:
        """Run the steps from ``x`` (B, L) long; the same calls of ``denoise`` as the reference loop."""
        sm = self.sampler
        B, self.L = x.shape
        times = sm.timesteps()
        self.times, self.n_run = times.float().to(x.device), sm.num_steps - sm.early_stop
        tgrid = self.times.unsqueeze(1).repeat(1, B)  # (K + 1, B): row k is t_k for every sequence
        traj = [x.detach().cpu()] if keep_trajectory else None
        x0_traj: Optional[list[Tensor]] = [] if keep_trajectory else None
        prev_in: Optional[Tensor] = None
        nfe, row_evals, changed = 0, 0, True
        for k in range(self.n_run):
            t, s = tgrid[k], tgrid[k + 1]
            taken = None  # logits of the masked positions whose network output is new, and where they are
            if self.out is None or not sm.reuse_unchanged:
                new = denoise(x, t, None)
                nfe, row_evals = nfe + 1, row_evals + B
                if self.out is None:
                    self.allocate(x, new.shape[-1])
                taken = (*self.take(x, new, _ALL), _ALL)
                if sm.reuse_unchanged:
                    prev_in = x.clone()
            elif changed:
                rows = (x != prev_in).flatten(1).any(-1).nonzero().squeeze(-1)  # sequences that changed
                if rows.numel():  # recompute only those (as the reference loop)
                    new = denoise(x[rows], t[rows], None)
                    nfe, row_evals = nfe + 1, row_evals + rows.numel()
                    taken = (*self.take(x, new, rows), rows)
                    prev_in = x.clone()
            if not self.cacheable and (taken is None or taken[-1] is not _ALL):  # x0 reads t: every position
                taken = (*self.take(x, self.out, _ALL), _ALL)
            if taken is not None:
                logits, flat, r, col, rows = taken
                self.refresh(x, t, k, logits, flat, rows, r, col)
            x_t = x
            x = self.step(x, t, s, k)
            changed = x is not x_t
            if self.step_hooks:
                x0_hat, before = None, x
                for hook in self.step_hooks:
                    if x0_hat is None and getattr(hook, "reads_x0", True):
                        x0_hat = self.full_x0(x_t, t)
                    x = hook(x, s, t, x0_hat, x_t)
                changed = changed or not torch.equal(x, before)
            if keep_trajectory:
                traj.append(x.detach().cpu())
                x0_traj.append(self.full_x0(x_t, t).detach().cpu())
            if progress is not None:
                progress(k + 1, self.n_run)
        last = (x_t, t)
        return SampleOutput(x=x, x0=_Deferred(lambda: self.full_x0(*last)), nfe=nfe, times=times,
                            trajectory=traj, x0_trajectory=x0_traj, row_evals=row_evals)
