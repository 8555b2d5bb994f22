"""Parallel-decoding policies for absorbing diffusion: which [MASK] positions a step reveals
(``Sampler(unmask=...)``).

At every step the denoiser predicts x0 at every masked position (after the x0 hooks); a token is chosen there
(``draw``: argmax, or a draw from x0; a ``posterior_filter`` passed to ``Sampler.sample``, e.g. DiffusionBERT's
temperature and top-k, then filters x0 for this choice only: there is no joint reveal posterior here) with a
confidence read from x0 before that filter, as LLaDA reads p without its Gumbel noise (``confidence``: the chosen
token's probability, or the top-1 minus top-2 probability margin), and the policy reveals:

- "confidence": the n most confident positions, the others stay [MASK] (LLaDA's "low_confidence" remasking,
  Nie et al. 2025, ``generate.py``). n follows the process's schedule: round(sum of
  ``unmask_prob`` over the masked positions), the count of ``AbsorbingProcess.deterministic_reveal`` (eta = 0);
  for a linear schedule on an even grid that is LLaDA's even split of the masked count over the steps, up to
  which steps take the remainder. Inside a semi-autoregressive block n is LLaDA's split
  (``get_num_transfer_tokens``) of the block's masked count over the block's steps.
- "threshold": every position whose confidence exceeds tau, and at least the most confident one
  (Fast-dLLM, Wu et al. 2025, confidence-aware parallel decoding, ``llada/generate.py``
  ``get_transfer_index(threshold=)``, which keeps confidence >= tau; here > tau, as the paper words it).

The last step of the K-step grid (of a block's share of it) reveals every position left. ``block_length``: the
positions are split into blocks of that many, decoded left to right, a block starting only when the one before
holds no [MASK]; the K steps are split evenly over the blocks (LLaDA's semi-autoregressive remasking,
``generate(block_length=)``). A sequence whose block is done moves on at once, so K is a cap: a sequence is
passed to the network only while it holds [MASK], at the grid time of its own step, and the number of calls is
at most K. Only positions that hold [MASK] at the start are ever revealed; a revealed token never changes.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from textdiff.core.absorbing import AbsorbingProcess
from textdiff.core.hooks import apply_x0_hooks
from textdiff.core.types import DenoiseFn, SampleOutput, StepHook, X0Hook, _Deferred

UNMASK = ("schedule", "confidence", "threshold")
CONFIDENCE = ("prob", "margin")
DRAW = ("argmax", "sample")


def check_options(sampler: Any) -> None:
    """Raise ValueError for a ``Sampler`` whose unmasking options do not fit: an unknown ``unmask``, ``confidence``
    or ``draw``, ``threshold`` outside (0, 1), ``block_length`` < 1 or without a confidence policy, or a policy
    other than "schedule" on a Gaussian process or with options of the schedule's loop (``early_stop``,
    ``self_condition``). ``closed_form_posterior`` (on in ``conf/sampler/absorbing.yaml``) does not apply to a
    policy and is ignored: a policy draws from the filtered x0 at the positions it reveals."""
    for name, allowed in (("unmask", UNMASK), ("confidence", CONFIDENCE), ("draw", DRAW)):
        if getattr(sampler, name) not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {getattr(sampler, name)!r}")
    if not 0.0 < sampler.threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {sampler.threshold}")
    if sampler.block_length is not None and sampler.block_length < 1:
        raise ValueError(f"block_length must be >= 1 (or None: one block), got {sampler.block_length}")
    if sampler.unmask == "schedule":
        if sampler.block_length is not None:
            raise ValueError("block_length (semi-autoregressive blocks) needs unmask='confidence' or 'threshold'")
        return
    if not isinstance(sampler.process, AbsorbingProcess):
        raise ValueError(f"unmask={sampler.unmask!r} chooses which [MASK] positions to reveal: absorbing processes "
                         f"only, got a {type(sampler.process).__name__} (use unmask='schedule')")
    for name in ("early_stop", "self_condition"):
        if getattr(sampler, name):
            raise ValueError(f"{name} applies to unmask='schedule' only, got unmask={sampler.unmask!r}")


def confidence_score(logp: Tensor, tokens: Tensor, kind: str) -> Tensor:
    """The confidence of choosing ``tokens`` (n,) from log-probs ``logp`` (n, V). "prob": the chosen token's
    log-probability (LLaDA ``generate.py``: x0_p = p[x0]; kept in log space, the same order without rounding);
    "margin": p(top-1) - p(top-2) (Dream's ``sample_tokens(margin_confidence=True)``, Kim et al. 2025).
    Returns (n,)."""
    if kind == "prob":
        return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    top2 = logp.topk(2, dim=-1).values.exp()
    return top2[:, 0] - top2[:, 1]


def most_confident(conf: Tensor, candidates: Tensor, n: Tensor) -> Tensor:
    """The ``n`` (B,) most confident candidates of each row: conf (B, L) with -inf off the candidates,
    candidates (B, L) bool. Returns (B, L) bool (LLaDA ``generate.py``: ``topk(confidence, k=n)``)."""
    rank = conf.argsort(-1, descending=True).argsort(-1)
    return candidates & (rank < n.unsqueeze(-1))


def above_threshold(conf: Tensor, candidates: Tensor, tau: float) -> Tensor:
    """Candidates whose confidence exceeds ``tau``, and the most confident one of every row that has a
    candidate (Fast-dLLM: at least one token per step). conf (B, L) with -inf off the candidates (a
    log-probability for "prob": compare with log tau). Returns (B, L) bool."""
    best = torch.zeros_like(candidates).scatter_(-1, conf.argmax(-1, keepdim=True), True)
    return candidates & ((conf > tau) | best)


def even_split(total: Tensor, parts: Tensor, index: Tensor) -> Tensor:
    """LLaDA's ``get_num_transfer_tokens``: ``total`` split over ``parts`` as evenly as possible, the
    remainder going to the first parts; the share of part ``index``. All (B,) long. Returns (B,) long."""
    return total // parts + (index < total % parts).long()


class ParallelUnmasking:
    """One ``Sampler.sample`` run of an absorbing process with ``unmask`` "confidence" or "threshold".

    Per sequence it tracks its block (``block``, nb once no [MASK] is left), its step on the K-step grid
    (``step``; block j owns the ``n_steps[j]`` steps from ``first[j]``, K split evenly over the blocks) and the
    block's masked count when the sequence entered it (``entry``). x0 and its hooks are computed at the
    candidate positions only ([MASK] in the sequence's block), gathered as (n, V) rows, when every x0 hook is
    ``rowwise`` and ``reveal_first`` is on; else on the whole (B, L, V) tensor, as the reference loop does.
    """

    def __init__(self, sampler: Any, x0_hooks: Sequence[X0Hook], step_hooks: Sequence[StepHook],
                 posterior_filter: Optional[X0Hook], generator: Optional[torch.Generator]) -> None:
        self.sm, self.proc, self.mask_id = sampler, sampler.process, sampler.process.mask_id
        self.hooks, self.step_hooks = list(x0_hooks), list(step_hooks)
        self.posterior_filter, self.generator = posterior_filter, generator
        self.gather = sampler.reveal_first and all(getattr(h, "rowwise", False) for h in self.hooks)
        self.out: Optional[Tensor] = None  # (B, L, V) each sequence's last network output
        # "prob" confidences are log-probabilities: tau is compared in log space
        self.tau = math.log(sampler.threshold) if sampler.confidence == "prob" else float(sampler.threshold)

    # ----- x0 -----
    def full_x0(self, x: Tensor, t: Tensor) -> Tensor:
        """x0 after the hooks on the whole state (B, L, V): ``hooks(to_x0(out, x, t))``."""
        return apply_x0_hooks(self.proc.to_x0(self.out, x, t), t, self.hooks)

    def x0_at(self, x: Tensor, t: Tensor, where: tuple[Tensor, Tensor]) -> Tensor:
        """x0 after the hooks at the [MASK] positions ``where`` (n, V): the same values as ``full_x0`` there."""
        if not self.gather:
            return self.full_x0(x, t)[where]
        return apply_x0_hooks(self.proc.masked_x0(self.out[where]), t[where[0]], self.hooks)

    # ----- blocks -----
    def plan(self, x: Tensor) -> None:
        """The block of each position (L,), the first grid step and the number of steps of each block (nb,): K
        split evenly over the nb blocks, the remainder to the first ones (LLaDA asserts K % nb == 0)."""
        L, K = x.shape[1], self.sm.num_steps
        bl = self.sm.block_length or L
        nb = math.ceil(L / bl)
        if K < nb:
            raise ValueError(f"num_steps={K} is fewer than the {nb} blocks of block_length={bl} in length {L}: "
                             "each block needs a step")
        j = torch.arange(nb, device=x.device)
        self.n_steps = even_split(torch.full_like(j, K), torch.full_like(j, nb), j)
        self.first = self.n_steps.cumsum(0) - self.n_steps
        self.pos_block = torch.arange(L, device=x.device) // bl
        self.nb = nb
        self.block = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)  # -1: not started
        self.step = torch.zeros_like(self.block)
        self.entry = torch.zeros_like(self.block)

    def advance(self, x: Tensor) -> None:
        """A sequence whose block holds no [MASK] enters the first block that does (nb when none is left) at that
        block's first grid step, noting its masked count; the others take their next step."""
        counts = torch.zeros(x.shape[0], self.nb, dtype=torch.long, device=x.device)
        counts.index_add_(1, self.pos_block, (x == self.mask_id).long())  # [MASK] per block
        has = counts > 0
        nxt = torch.where(has.any(-1), has.long().argmax(-1), torch.full_like(self.block, self.nb))
        j = nxt.clamp_max(self.nb - 1)
        moved = nxt != self.block
        self.step = torch.where(moved, self.first[j], self.step + 1)
        self.entry = torch.where(moved, counts.gather(1, j.unsqueeze(-1)).squeeze(-1), self.entry)
        self.block = nxt

    def choose(self, x: Tensor, x0: Tensor, where: tuple[Tensor, Tensor], cand: Tensor, conf: Tensor, t: Tensor,
               s: Tensor) -> Tensor:
        """The positions this step reveals (B, L) bool: the policy's choice, and every candidate at the last step
        of the sequence's block."""
        j = self.block.clamp_max(self.nb - 1)
        if self.sm.unmask == "threshold":
            reveal = above_threshold(conf, cand, self.tau)
        elif self.sm.block_length is None:  # the process's schedule: eta = 0's count (the spindle reads argmax x0)
            argmax_state = x.clone()
            argmax_state[where] = x0.argmax(-1)
            reveal = self.proc.deterministic_reveal(cand, self.proc.unmask_prob(t, s, argmax_state), conf)
        else:  # LLaDA in a block: the block's masked count split evenly over its steps
            reveal = most_confident(conf, cand, even_split(self.entry, self.n_steps[j], self.step - self.first[j]))
        last = self.step == self.first[j] + self.n_steps[j] - 1
        return reveal | (cand & last.unsqueeze(-1))

    # ----- the loop -----
    def sample(self, denoise: DenoiseFn, x: Tensor, *, keep_trajectory: bool = False,
               progress: Optional[Callable[[int, int], None]] = None) -> SampleOutput:
        """Run from ``x`` (B, L) long; positions that hold [MASK] are revealed, the others never change."""
        sm, proc, K = self.sm, self.proc, self.sm.num_steps
        B, L = x.shape
        times = sm.timesteps()
        grid = times.float().to(x.device)
        self.plan(x)
        self.advance(x)
        last_in, last_t = x.clone(), grid[0].expand(B).clone()  # each sequence's input and t at its last evaluation
        seen = torch.zeros(B, dtype=torch.bool, device=x.device)  # evaluated at least once
        traj = [x.detach().cpu()] if keep_trajectory else None
        x0_traj: Optional[list[Tensor]] = [] if keep_trajectory else None
        nfe, row_evals, k = 0, 0, 0
        while bool((self.block < self.nb).any()):
            active = self.block < self.nb
            t, s = grid[self.step.clamp_max(K - 1)], grid[(self.step + 1).clamp_max(K)]  # its own grid step
            fresh = active  # the network sees the sequences with [MASK] left; with reuse_unchanged, the changed ones
            if sm.reuse_unchanged:
                fresh = active & (~seen | (x != last_in).any(-1))
            rows = fresh.nonzero().squeeze(-1)
            if rows.numel():
                new = denoise(x[rows], t[rows], None)
                if self.out is None:
                    self.out = new.new_zeros(B, L, new.shape[-1])
                self.out[rows] = new
                nfe, row_evals = nfe + 1, row_evals + rows.numel()
                last_in[rows], last_t[rows], seen[rows] = x[rows], t[rows], True
            # the candidates: [MASK] in each sequence's block; a token and a confidence at each
            cand = (x == self.mask_id) & (self.pos_block.unsqueeze(0) == self.block.unsqueeze(-1))
            where = cand.nonzero(as_tuple=True)
            x0 = self.x0_at(x, t, where)
            pick = x0 if self.posterior_filter is None else self.posterior_filter(x0, t[where[0]])
            tokens = pick.argmax(-1) if sm.draw == "argmax" else proc.draw_tokens(pick, self.generator, sm.float64)
            conf = torch.full((B, L), float("-inf"), device=x.device)
            conf[where] = confidence_score(x0, tokens, sm.confidence).float()
            chosen = x.clone()
            chosen[where] = tokens
            x_t, x = x, torch.where(self.choose(x, x0, where, cand, conf, t, s), chosen, x)
            for hook in self.step_hooks:
                x = hook(x, s, t, self.full_x0(x_t, t) if getattr(hook, "reads_x0", True) else None, x_t)
            if keep_trajectory:
                traj.append(x.detach().cpu())
                x0_traj.append(self.full_x0(x_t, t).detach().cpu())
            self.advance(x)
            k += 1
            if progress is not None:
                progress(k, K)

        def final_x0() -> Tensor:  # each sequence's last x0 estimate, on first access
            if self.out is None:  # nothing was masked: one network call, on access only (not in nfe)
                self.out = denoise(last_in, last_t, None)
            return self.full_x0(last_in, last_t)

        return SampleOutput(x=x, x0=_Deferred(final_x0), nfe=nfe, times=times, trajectory=traj,
                            x0_trajectory=x0_traj, row_evals=row_evals)
