"""The absorbing-state ([MASK]) discrete process (Austin et al. 2021, D3PM §3.2; Sahoo et al. 2024, MDLM).

Each token is kept with probability abar(t) (per token for the spindle schedule) and otherwise
replaced by [MASK]; [MASK] never changes back in the forward process. Everything is closed form: no
V x V transition matrices. Shapes: tokens (B, L) long; logits / log-probs (B, L, V); t, s (B,).
"""
from __future__ import annotations

from typing import Callable, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textdiff.core.categorical import sample_categorical
from textdiff.core.schedules import NoiseSchedule, SpindleSchedule, grid_steps

LossType = Literal["d3pm", "weighted_ce"]


class AbsorbingProcess(nn.Module):
    """Absorbing diffusion: prior, q_sample, posterior, reverse step and losses.

    Args:
        schedule: keep-probability schedule (``MutualSchedule`` = 1 - t, ``SpindleSchedule``, ...).
        mask_id: the [MASK] token id.
        loss_type: "d3pm" — the discrete-time KL term L_{t-1} of D3PM (eq. 5) with x0-parameterisation,
            which for an absorbing chain is w_t * CE on masked positions, w_t = P(unmask between s and t)
            (DiffusionBERT's objective; needs a ``DiscreteSchedule`` inside ``schedule``);
            "weighted_ce" — the continuous-time ELBO -abar'(t)/(1 - abar(t)) * CE on masked positions
            (MDLM eq. 10).
        hybrid_lambda: weight of the auxiliary CE on all positions of p(x0 | x_t) (D3PM eq. 8 hybrid
            loss; DiffusionBERT uses 0.01).
        spindle_posterior: with a token-dependent schedule, "official" uses DiffusionBERT's posterior,
            q(x_s = x0 | x_t = MASK) ∝ p_i(s) beta_t with beta_t the *base* schedule's one-step rate;
            "exact" uses the closed form (p_i(s) - p_i(t)) / (1 - p_i(t)). Identical for plain schedules.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        mask_id: int,
        loss_type: LossType = "d3pm",
        hybrid_lambda: float = 0.0,
        spindle_posterior: Literal["official", "exact"] = "official",
    ) -> None:
        super().__init__()
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        if loss_type not in ("d3pm", "weighted_ce"):
            raise ValueError(f"loss_type must be 'd3pm' or 'weighted_ce', got {loss_type!r}")
        if loss_type == "d3pm" and grid_steps(schedule) is None:
            raise TypeError("loss_type='d3pm' needs a DiscreteSchedule (T steps) inside the schedule")
        if spindle_posterior not in ("official", "exact"):
            raise ValueError(f"spindle_posterior must be 'official' or 'exact', got {spindle_posterior!r}")
        plain = schedule.base if schedule.token_dependent else schedule
        end = float(plain.alpha_bar(torch.ones(1, dtype=torch.float64))[0])
        if end > 0.01:
            raise ValueError(
                f"the schedule keeps {end:.3g} of the tokens at t=1, but the absorbing prior is all [MASK]; "
                "use a schedule with abar(1) ~ 0 (a DiscreteSchedule needs max_beta=1.0)"
            )
        if mask_id is None:
            raise ValueError("mask_id is None: the tokenizer has no [MASK] token (a word tokenizer needs "
                             "add_mask_token=True, e.g. data.tokenizer.add_mask_token=true)")
        self.schedule = schedule
        self.mask_id = int(mask_id)
        self.loss_type = loss_type
        self.hybrid_lambda = float(hybrid_lambda)
        self.spindle_posterior = spindle_posterior

    def for_sampling(self) -> "AbsorbingProcess":
        """The process the sampler uses (this one)."""
        return self

    def keep_prob(self, t: Tensor, x0: Tensor) -> Tensor:
        """abar per token, (B, L), for tokens ``x0`` (B, L) at time ``t`` (B,)."""
        a = self.schedule.alpha_bar(t, x0 if self.schedule.token_dependent else None)
        return a.expand_as(x0) if a.dim() == 2 else a.view(-1, 1).expand_as(x0)

    def prior(self, shape: tuple[int, ...], generator: Optional[torch.Generator] = None,
              device: Optional[torch.device] = None) -> Tensor:
        """All [MASK]: (B, L) long."""
        return torch.full(shape, self.mask_id, dtype=torch.long, device=device)

    def q_sample(self, x0: Tensor, t: Tensor, keep: Optional[Tensor] = None,
                 generator: Optional[torch.Generator] = None) -> Tensor:
        """Mask each token independently with probability 1 - abar (D3PM absorbing Q_t, closed form).
        ``keep`` (B, L) bool marks positions never masked (padding, fixed context). Returns (B, L)."""
        u = torch.rand(x0.shape, generator=generator, device=x0.device)
        masked = u >= self.keep_prob(t, x0)
        if keep is not None:
            masked = masked & ~keep
        return torch.where(masked, torch.full_like(x0, self.mask_id), x0)

    def to_x0(self, logits: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        """Log-probs of x0 (B, L, V): [MASK] is never a prediction, and revealed tokens are carried
        over (MDLM's SUBS parameterisation, §3.2.3)."""
        logp = self.masked_x0(logits)
        revealed = (xt != self.mask_id).nonzero(as_tuple=True)  # only these rows change (no full-size copies)
        if revealed[0].numel():
            logp[revealed] = float("-inf")
            logp[(*revealed, xt[revealed])] = 0.0
        return logp

    def masked_x0(self, logits: Tensor) -> Tensor:
        """``to_x0`` at positions that hold [MASK] (nothing to carry over): log-probs (..., V) from logits
        (..., V), e.g. (n, V) rows gathered at masked positions. The same operations as ``to_x0``, so the
        values are the same bit for bit whatever the leading shape."""
        logits = logits.float().index_fill(-1, torch.tensor([self.mask_id], device=logits.device), float("-inf"))
        return F.log_softmax(logits, dim=-1)

    def unmask_prob(self, t: Tensor, s: Tensor, x0: Tensor, exact: bool = False) -> Tensor:
        """P(x_s = x0 | x_t = [MASK], x0) for s < t, per token (B, L) (D3PM eq. 3 for absorbing Q);
        ``exact`` uses the closed form whatever ``spindle_posterior`` says."""
        p_t, p_s = self.keep_prob(t, x0), self.keep_prob(s, x0)
        beta = self.official_beta(t, s, exact)
        return self._unmask(p_t, p_s, None if beta is None else beta.view(-1, 1))

    def official_beta(self, t: Tensor, s: Tensor, exact: bool = False) -> Optional[Tensor]:
        """DiffusionBERT's one-step rate of the base schedule, 1 - abar(t) / abar(s) (t, s: (n,)), where
        ``unmask_prob`` uses the official spindle posterior; else None."""
        if self.schedule.token_dependent and self.spindle_posterior == "official" and not exact:
            base = self.schedule.base  # DiffusionBERT's posterior: q(x_s|x0) q(x_t|x_s) with the base chain's beta_t
            return 1 - base.alpha_bar(t) / base.alpha_bar(s).clamp_min(1e-12)
        return None

    @staticmethod
    def _unmask(p_t: Tensor, p_s: Tensor, beta: Optional[Tensor]) -> Tensor:
        """u from the keep-probabilities p_t, p_s (per token) and, for the official spindle posterior, the
        base one-step rate ``beta`` (broadcast against them)."""
        if beta is not None:  # DiffusionBERT: q(x_s|x0) * q(x_t|x_s) with the base one-step beta
            num = p_s * beta
            return num / (num + 1 - p_s).clamp_min(1e-12)
        return ((p_s - p_t) / (1 - p_t).clamp_min(1e-12)).clamp(0, 1)  # D3PM eq. 3, absorbing Q

    def unmask_table(self, times: Tensor, x0: Tensor, beta: Optional[Tensor] = None,
                     at: Optional[tuple[Tensor, Tensor]] = None, terms: Optional[tuple[Tensor, ...]] = None) -> Tensor:
        """``unmask_prob`` for every step of a stretch of the time grid at once: ``times`` (J + 1,) the
        points t_0 > ... > t_J (a slice of ``sampling_times``), ``x0`` (R, L) ids (argmax x0 for the
        spindle). Returns (R, J, L) with ``[:, j] = unmask_prob(t_j, t_{j+1}, x0)``; (1, J, 1) for a
        token-independent schedule, whose u does not read x0. The keep-probabilities are computed once
        per grid point. ``beta``: ``official_beta`` of the J steps (J,), when the caller has it already.
        ``at``: (rows, columns) (n,) each: only those positions, (n, J), the same values as
        ``unmask_table(times, x0)[rows, :, columns]`` (a token-dependent schedule); with the spindle, ``terms``
        may hold its ``time_terms(times.view(1, -1))`` (kept by a caller that reads one grid many times)."""
        J = times.numel() - 1
        times = times.float()
        t, s = times[:-1], times[1:]
        if not self.schedule.token_dependent:
            return self.unmask_prob(t, s, x0.new_zeros(J, 1)).view(1, J, 1)
        R, L = x0.shape
        if beta is None:
            beta = self.official_beta(t, s)
        if at is not None and isinstance(self.schedule, SpindleSchedule):  # (n, 1) weights against (1, J + 1) times
            p = self.schedule.keep_from_weight(times.view(1, -1), self.schedule.centred_weight(x0)[at].unsqueeze(1),
                                               terms)
            return self._unmask(p[:, :-1], p[:, 1:], None if beta is None else beta.view(1, J))
        p = None
        if isinstance(self.schedule, SpindleSchedule):  # its alpha_bar broadcasts times (J+1,) against (R, 1, L) ids
            p = self.schedule.alpha_bar(times, x0.unsqueeze(1))
        if p is None or p.shape != (R, J + 1, L):
            p = self.keep_prob(times.repeat(R), x0.repeat_interleave(J + 1, dim=0)).view(R, J + 1, L)  # r (J+1) + j
        table = self._unmask(p[:, :-1], p[:, 1:], None if beta is None else beta.view(1, J, 1))
        return table if at is None else table[at[0], :, at[1]]

    def filtered_stay_logprob(self, top: Tensor, lse: Optional[Tensor], u: Tensor, temperature: float = 1.0,
                              top_k: Optional[int] = None) -> Tensor:
        """log P(x_s = [MASK] | x_t = [MASK]) when a ``LogitFilter`` with ``temperature`` T and ``top_k`` acts on
        the joint reverse posterior, as ``reverse_step(posterior_filter=...)`` does (He et al. 2023, the official
        ``discrete_diffusion_predict_fn``: logits log(u p_v) for the tokens and log(1 - u) for staying
        [MASK], divided by T, the k largest kept, softmax), without building the (V,) joint. With
        a = log(1 - u) / T and b_i = (log u + l_i) / T, l_1 >= l_2 >= ... the sorted log p(x0 | x_t):

            top-k: [MASK] drops out of the k largest when a < b_k, i.e. logit(u) > -l_k (the reveal is then
            certain); else the tokens kept are the k - 1 largest and
            P(stay) = e^a / (e^a + sum_{i<k} e^{b_i}) = sigmoid(-(logit(u) / T + logsumexp_{i<k} l_i / T));
            no top-k: P(stay) = sigmoid(-(logit(u) / T + logsumexp_v l_v / T)).

        Args:
            top: (n, k) the k largest log p(x0 | x_t) of each position, sorted (k = ``top_k``; any k >= 1
                without a top-k).
            lse: (n,) logsumexp_v l_v / T over the whole vocabulary (read only without a top-k).
            u: (n, J) the unmasking probability (``unmask_prob``) of each position at J steps.
        Returns: (n, J) log-probabilities of staying [MASK]. Ties between the k-th value and [MASK] or the
        (k+1)-th value (where the filter keeps more than k entries) are not modelled: they have probability
        0 for continuous logits.
        """
        odds = torch.logit(u.clamp(0.0, 1.0))  # log u - log(1 - u)
        scaled = odds if temperature == 1.0 else odds / temperature
        if top_k is None:
            return F.logsigmoid(-(scaled + lse.unsqueeze(-1)))
        rest = top[:, : top_k - 1] if temperature == 1.0 else top[:, : top_k - 1] / temperature
        stay = F.logsigmoid(-(scaled + torch.logsumexp(rest, -1, keepdim=True)))
        return stay.masked_fill_(odds > -top[:, top_k - 1: top_k], float("-inf"))  # [MASK] not in the k largest

    def filtered_reveal_prob(self, top: Tensor, lse: Optional[Tensor], u: Tensor, temperature: float = 1.0,
                             top_k: Optional[int] = None) -> Tensor:
        """P(x_s != [MASK] | x_t = [MASK]) under the filtered joint posterior: 1 - exp(``filtered_stay_logprob``),
        same arguments. Returns (n, J)."""
        return -torch.expm1(self.filtered_stay_logprob(top, lse, u, temperature, top_k))

    def filtered_token_draw(self, top: Tensor, ids: Tensor, u: Tensor, temperature: float = 1.0,
                            top_k: Optional[int] = None, generator: Optional[torch.Generator] = None,
                            float64: bool = False) -> Tensor:
        """The token of a reveal under the filtered joint posterior (``filtered_stay_logprob``): one of the k
        largest, p(v) ∝ exp(l_v / T), the k-th only when [MASK] is not among the k largest at that step
        (logit(u) > -l_k). top: (n, k) sorted log-probs, ids: (n, k) their token ids, u: (n,) the step's
        unmasking probability. Inverse-CDF draw, one uniform per position (``sample_categorical``, in float64
        with ``float64``). Returns (n,) long."""
        support = None
        if top_k is not None and top_k > 1:
            kept = torch.logit(u.clamp(0.0, 1.0)) <= -top[:, top_k - 1]  # [MASK] is kept: the k - 1 largest only
            support = torch.where(kept, top_k - 1, top.shape[1])
        pick = sample_categorical(top if temperature == 1.0 else top / temperature, generator=generator,
                                  float64=float64, method="inverse_cdf", support=support)
        return ids.gather(1, pick.unsqueeze(1)).squeeze(1)

    @staticmethod
    def first_reveal(stay_logprob: Tensor, generator: Optional[torch.Generator] = None,
                     float64: bool = False) -> Tensor:
        """The first of J independent per-step reveal trials that succeeds: ``stay_logprob`` (n, J) the
        log-probabilities log(1 - r_j) that trial j fails; returns (n,) long, j with probability
        prod_{i<j} (1 - r_i) r_j, or J when none does. One uniform w in (0, 1] per position: the first j
        with sum_{i<=j} log(1 - r_i) < log w (a certain trial, log(1 - r_j) = -inf, always succeeds).
        ``float64``: the sums and the uniform in float64."""
        if float64:
            stay_logprob = stay_logprob.double()
        u = torch.rand(stay_logprob.shape[0], 1, generator=generator, device=stay_logprob.device,
                       dtype=stay_logprob.dtype)
        return (stay_logprob.cumsum(-1) >= torch.log1p(-u)).sum(-1)

    def ancestral_reveal(self, masked: Tensor, p_unmask: Tensor,
                         generator: Optional[torch.Generator] = None) -> Tensor:
        """Which masked positions an ancestral step reveals: masked (B, L) bool, p_unmask (B, L). One
        uniform per position (B x L draws). Returns (B, L) bool."""
        u = torch.rand(masked.shape, generator=generator, device=masked.device)
        return masked & (u < p_unmask)

    @staticmethod
    def draw_tokens(x0_logp: Tensor, generator: Optional[torch.Generator] = None, float64: bool = False) -> Tensor:
        """One token per row of log-probs ``x0_logp`` (n, V): ``torch.multinomial`` (which draws n x V
        values from ``generator``) through ``sample_categorical``, in float64 with ``float64``. Returns (n,) long."""
        return sample_categorical(x0_logp, generator=generator, float64=float64)

    def posterior_joint(self, x0_logp: Tensor, u: Tensor) -> Tensor:
        """The joint reverse posterior's logits at masked positions: x0_logp (n, V) log p(x0 | x_t), u (n,)
        ``unmask_prob``: log(u p(v | x_t)) for the tokens v, log(1 - u) in the [MASK] slot. Returns (n, V)."""
        u = u.clamp(0.0, 1.0).unsqueeze(-1)  # (n, 1)
        joint = x0_logp + torch.log(u)  # log q(x_s = v | x_t, x0_hat) ∝ u p(v | x_t)
        joint[:, self.mask_id] = torch.log1p(-u.squeeze(-1))  # stay [MASK]: 1 - u
        return joint

    @staticmethod
    def deterministic_reveal(masked: Tensor, p_unmask: Tensor, conf: Tensor) -> Tensor:
        """eta = 0: reveal round(sum of p_unmask over the masked positions) per sequence, the most confident
        first. masked (B, L) bool; p_unmask (B, L); conf (B, L) the max log-prob, -inf where not masked.
        Returns (B, L) bool."""
        n_reveal = torch.round((p_unmask * masked).sum(-1)).long()  # (B,)
        order = conf.argsort(-1, descending=True).argsort(-1)  # rank of each position
        return masked & (order < n_reveal.unsqueeze(-1))

    def reverse_step(self, xt: Tensor, x0_logp: Tensor, t: Tensor, s: Tensor, *, eta: float = 1.0,
                     generator: Optional[torch.Generator] = None,
                     posterior_filter: Optional[Callable[[Tensor, Tensor], Tensor]] = None, float64: bool = False,
                     **_: object) -> Tensor:
        """One step x_t -> x_s (B, L). Revealed tokens never change; a masked token is revealed with
        probability u = ``unmask_prob`` (the token-dependent schedule reads argmax x0, as DiffusionBERT).

        eta = 1: ancestral — reveal at random, the token drawn from p(x0 | x_t).
        eta = 0: deterministic — reveal the expected number of masked tokens per sequence, the most
        confident first, each as its argmax (a MaskGIT-style analogue of DDIM).

        ``posterior_filter`` (eta = 1 only): a ``(logits (n, V), t (n,)) -> log-probs`` filter (e.g. a
        ``LogitFilter`` with a temperature and top-k) applied to the joint reverse posterior of each masked
        position, logits log(u p(v | x_t)) for the tokens v and log(1 - u) for staying [MASK] (in the
        [MASK] slot), before one categorical draw: the official ``discrete_diffusion_predict_fn`` (logits /
        temperature, then ``top_k_top_p_filtering``, then ``Categorical``), where the filter also changes
        *when* tokens are revealed. Without it a temperature or top-k acts on p(x0 | x_t) alone (an x0
        hook) and u is untouched. At eta = 0 it is not used: the argmax and the confidence order do not
        depend on a temperature or a top-k. ``float64``: the token draws in float64 (``sample_categorical``).
        """
        self.check_eta(eta)
        masked = xt == self.mask_id
        x0_argmax = x0_logp.argmax(-1)
        p_unmask = self.unmask_prob(t, s, x0_argmax)  # (B, L)
        if eta == 1.0 and posterior_filter is not None:
            out = xt.clone()
            rows = masked.nonzero(as_tuple=True)
            if rows[0].numel():  # only masked positions change (revealed ones carry over)
                joint = self.posterior_joint(x0_logp[rows], p_unmask[rows])
                out[rows] = self.draw_tokens(posterior_filter(joint, t[rows[0]]), generator, float64)
            return out
        if eta == 1.0:
            reveal = self.ancestral_reveal(masked, p_unmask, generator)
            out = xt.clone()
            if reveal.any():  # draw tokens only where one is revealed (~1/K of the masked positions)
                out[reveal] = self.draw_tokens(x0_logp[reveal], generator, float64)
            return out
        conf = x0_logp.max(-1).values.masked_fill(~masked, float("-inf"))
        return torch.where(self.deterministic_reveal(masked, p_unmask, conf), x0_argmax, xt)

    @staticmethod
    def check_eta(eta: float) -> None:
        """Raise ValueError unless eta is 1 (ancestral) or 0 (deterministic)."""
        if eta not in (0.0, 1.0):
            raise ValueError(f"an absorbing reverse step takes eta=1 (ancestral) or eta=0 (deterministic), got {eta}")

    def previous_time(self, t: Tensor) -> Tensor:
        """The grid point before ``t`` (t - 1/T, clamped at 0) for the discrete-time loss. (B,)."""
        T = grid_steps(self.schedule)
        if T is None:
            raise TypeError("previous_time needs a DiscreteSchedule")
        return (t - 1.0 / T).clamp_min(0.0)

    def loss(self, logits: Tensor, x0: Tensor, xt: Tensor, t: Tensor,
             mask: Optional[Tensor] = None) -> dict[str, Tensor]:
        """Per-example loss terms, summed over tokens (B,) each.

        Args:
            logits: (B, L, V) raw network output at x_t.
            x0, xt: (B, L) clean and noisy tokens.
            t: (B,) the time of x_t.
            mask: (B, L) bool, positions that count (non-padding).

        Returns:
            dict with "loss" (the objective), "diffusion" (the KL / weighted-CE term), "ce" (the
            unweighted CE of x0 at masked positions, for logging) and "hybrid" (the hybrid term).
        """
        banned = logits.float().clone()
        banned[..., self.mask_id] = float("-inf")
        nll = F.cross_entropy(banned.transpose(1, 2), x0, reduction="none")  # (B, L): -log p(x0 | x_t)
        valid = torch.ones_like(x0, dtype=torch.bool) if mask is None else mask.bool()
        masked = (xt == self.mask_id) & valid
        if self.loss_type == "d3pm":
            w = self.unmask_prob(t, self.previous_time(t), x0)  # L_{t-1} = w * CE on masks (absorbing)
        else:
            w = self.schedule.loss_weight(t, x0 if self.schedule.token_dependent else None)
            w = w.expand_as(nll) if w.dim() == 2 else w.view(-1, 1).expand_as(nll)
        diffusion = (w * nll * masked).sum(-1)
        hybrid = (nll * valid).sum(-1)
        ce = (nll * masked).sum(-1)
        return {"loss": diffusion + self.hybrid_lambda * hybrid, "diffusion": diffusion, "ce": ce, "hybrid": hybrid}

    def kl_step(self, x0_logp: Tensor, x0: Tensor, xt: Tensor, t: Tensor, s: Tensor,
                mask: Optional[Tensor] = None) -> Tensor:
        """KL(q(x_s | x_t, x0) || p(x_s | x_t)) summed over tokens, (B,) nats (D3PM eq. 5 term L_{t-1}).

        At a masked position q reveals x0 with probability w = (p_s - p_t) / (1 - p_t) (exact, per
        token) and keeps [MASK] otherwise; the model reveals token v with probability u * p(v | x_t),
        u = ``unmask_prob`` on argmax x0_hat (as ``reverse_step`` does), and keeps [MASK] otherwise:

            KL = w log(w / (u p(x0))) + (1 - w) log((1 - w) / (1 - u)),

        which is -w log p(x0) for a token-independent schedule (u = w). Revealed positions add 0.
        x0_logp (B, L, V) log-probs from ``to_x0``; x0, xt (B, L); t, s (B,); mask (B, L) bool.
        """
        w = self.unmask_prob(t, s, x0, exact=True)
        u = self.unmask_prob(t, s, x0_logp.argmax(-1)).clamp(1e-12, 1)
        logp_x0 = x0_logp.gather(-1, x0.unsqueeze(-1)).squeeze(-1).clamp_min(-1e4)
        kl = torch.xlogy(w, w) - w * (u.log() + logp_x0)
        kl = kl + torch.xlogy(1 - w, 1 - w) - (1 - w) * torch.log1p(-u.clamp(max=1 - 1e-7))
        counted = xt == self.mask_id
        if mask is not None:
            counted = counted & mask.bool()
        return (kl * counted).sum(-1)

    @torch.no_grad()
    def nll(self, denoise: Callable[[Tensor, Tensor], Tensor], x0: Tensor, num_steps: int,
            keep: Optional[Tensor] = None, mask: Optional[Tensor] = None, spacing: str = "uniform",
            generator: Optional[torch.Generator] = None) -> Tensor:
        """The variational bound on -log p(x0) of the K-step reverse chain that ``Sampler`` runs with
        ``num_steps`` = K (D3PM eq. 1 on the respaced grid 1 = t_0 > ... > t_K = 0): sum over steps of
        ``kl_step`` at x_{t_k} ~ q(x_{t_k} | x0), one draw per step; the prior term is 0 because
        abar(1) = 0 (all [MASK]) and the last step reveals every token (its KL is -log p(x0 | x_{t_1}))).

        Args:
            denoise: ``(x_t, t) -> logits`` (B, L, V).
            x0: (B, L) tokens; keep: (B, L) bool positions never masked (padding, [CLS]/[SEP]);
            mask: (B, L) bool positions that count (default: ``~keep``).
        Returns: (B,) nats per sequence.
        """
        times = self.schedule.sampling_times(num_steps, spacing).to(x0.device)
        counted = mask if mask is not None else (~keep if keep is not None else None)
        total = torch.zeros(x0.shape[0], device=x0.device)
        for k in range(num_steps):
            t = torch.full((x0.shape[0],), float(times[k]), device=x0.device)
            s = torch.full_like(t, float(times[k + 1]))
            xt = self.q_sample(x0, t, keep=keep, generator=generator)
            x0_logp = self.to_x0(denoise(xt, t), xt, t)
            total = total + self.kl_step(x0_logp, x0, xt, t, s, counted)
        return total
