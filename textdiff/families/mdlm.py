"""MDLM (Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language Models"; ALGORITHMS.md §5).

Masked (absorbing-state) diffusion in continuous time with the SUBS parameterisation. Everything it needs is
already in the core and in ``DiffusionBERT``, whose frame, corpus statistics, sampling (``generate_run``) and
cache this family inherits; what MDLM chooses:

- process: ``AbsorbingProcess(LogLinearSchedule(eps=1e-3), loss_type="weighted_ce")``: abar(t) = 1 - (1 - eps) t
  (official ``LogLinearNoise``); SUBS is ``AbsorbingProcess.to_x0`` / ``masked_x0`` (zero probability on [MASK],
  revealed tokens carried over; official ``_subs_parameterization``); the loss is the Rao-Blackwellised
  continuous-time ELBO, MDLM eq. 10: -abar'(t) / (1 - abar(t)) * CE over the masked tokens, a weight of exactly
  1 / t here (official ``_forward_pass_diffusion``: dsigma / expm1(sigma) = 1 / t);
- time: one t per sequence, stratified over the batch (official ``_sample_t`` with ``antithetic_sampling``) in
  [eps, 1] (``sampling_eps`` = 1e-3); the loss is a mean over the counted tokens (official ``_loss``);
- network: ``TimeConditionedBert`` with ``time_mode="none"`` (official ``time_conditioning=False``: the network
  never sees t); "layerwise"/"token" are the time-conditioned option (they see t, where the official DiT sees
  sigma(t));
- sampler: ancestral unmasking, q(x_s | x_t) ∝ p(x0 | x_t) (t - s) for tokens and s for [MASK] (official
  ``_ddpm_caching_update``: the same reveal probability (t - s) / t as ``AbsorbingProcess.unmask_prob``), with
  ``Sampler(reuse_unchanged=True)`` for the time-agnostic network (official ``ddpm_cache``; exact there); every
  other option of the core's ``Sampler`` (eta = 0, ``unmask``, ``block_length``, ...) applies too;
- likelihood: ``nll_bound`` is the same ELBO, Monte Carlo over stratified t (official ``ppl_eval``).

Defaults reproduce the official code (``configs/config.yaml``, ``diffusion.py``); the alternatives are named
options:

- ``keep_special``: False (official: [CLS]/[SEP] (BOS/EOS) are diffused and scored like any token) or True
  (never masked nor counted, as ``DiffusionBERT`` does: its NLL counts the same tokens then);
- ``diffuse_padding``: True (official LM1B, ``wrap=False``: PAD positions are masked like the others, the network
  attends to every position, and the loss counts non-PAD tokens only) or False (PAD is never masked and never
  attended, as ``DiffusionBERT``);
- ``length_mode``: "fixed" (official: every sample fills all L positions) or "sample" (lengths from the training
  length histogram);
- ``t_sharing``: "example" (official) or "batch"; ``time_sampling``: "antithetic" (official, stratified) or
  "uniform";
- ``temperature``/``top_k``/``top_p`` with ``filter_on``: the official sampler has none; "x0" (default) filters
  p(x0 | x_t) only, "posterior" the joint reveal posterior (``DiffusionBERT``'s semantics);
- ``process.hybrid_lambda`` > 0 adds D3PM's auxiliary CE (not MDLM);
- a discretised schedule (``diffusion_steps=T``) gives MDLM's discrete-time SUBS variant (official ``T > 0``: t on
  the grid {1/T, ..., 1}, loss T * (1/T) / t * CE = CE / t, the same weight).

⚠ Known differences from the official code: the network is a BERT encoder (learned positions, post-LN) where the
official one is a DiT (rotary positions, adaLN); the sampler's last step goes to t = 0 and reveals every
remaining [MASK] by a draw, where the official one stops at t = 1e-5 and takes the argmax of the few left
(``noise_removal``: about 1e-5 of the tokens); tokens are drawn with ``torch.multinomial`` rather than a float32
Gumbel-max (``_sample_categorical``), both in float32 by default (``sampler.float64=true`` draws from float64
categoricals, as the authors' later DUO code does for MDLM: s-sahoo/duo ``sampling.use_float64``).
"""
from __future__ import annotations

from typing import Any, Literal, Optional

import torch
from torch import Tensor

from textdiff.core.absorbing import AbsorbingProcess
from textdiff.core.types import Batch
from textdiff.families.base import OptimizerFactory, SamplerFactory, SchedulerFactory
from textdiff.families.diffusion_bert import DiffusionBERT
from textdiff.nn.bert import TimeConditionedBert


class MDLM(DiffusionBERT):
    """MDLM: masked diffusion with SUBS and the continuous-time ELBO (see the module docstring).

    Args:
        network: a ``TimeConditionedBert`` (``time_mode="none"``: MDLM's ``time_conditioning=False``).
        process: an ``AbsorbingProcess`` with ``loss_type="weighted_ce"`` over ``LogLinearSchedule(1e-3)``
            (``schedule=loglinear``, ``diffusion_steps=null``); ``mask_id`` is the tokenizer's [MASK].
        pad_id, bos_id, eos_id: the tokenizer's special ids (``${tokens.*}`` in configs).
        max_len: L, the longest sequence (the data's ``max_len``).
        keep_special: never mask (nor count) BOS/EOS; sampling then fixes them at both ends (official: False).
        diffuse_padding: mask PAD positions too and attend to every position; PAD is never counted (official:
            True). False: PAD is never masked and never attended.
        t_sharing: "example" (official: one t per sequence) or "batch" (one t for the batch).
        length_mode: "fixed" (official: samples fill all L positions) or "sample" (training length histogram).
        temperature, top_k, top_p, filter_on: the sampling filter (none officially; see ``DiffusionBERT``).
        reuse_cache: reuse the network output of unchanged sequences at sampling (official ``ddpm_cache``);
            applied to the time-agnostic network only, where it is exact.
        sampler, optimizer, lr_scheduler, ema_decay: see ``DiffusionModule``.
        time_sampling: "antithetic" (official ``antithetic_sampling``: t_i = eps + (1 - eps)(u_i + i) / B, one
            uniform u_i per stratum) or "uniform".
        time_eps: the official ``sampling_eps``: t ~ [time_eps, 1].
    """

    def __init__(
        self,
        network: TimeConditionedBert,
        process: AbsorbingProcess,
        pad_id: int,
        bos_id: Optional[int] = None,
        eos_id: Optional[int] = None,
        max_len: Optional[int] = None,
        keep_special: bool = False,
        diffuse_padding: bool = True,
        t_sharing: Literal["batch", "example"] = "example",
        length_mode: Literal["fixed", "sample"] = "fixed",
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        filter_on: Literal["posterior", "x0"] = "x0",
        reuse_cache: bool = True,
        sampler: Optional[SamplerFactory] = None,
        optimizer: Optional[OptimizerFactory] = None,
        lr_scheduler: Optional[SchedulerFactory] = None,
        time_sampling: str = "antithetic",
        time_eps: float = 1e-3,
        ema_decay: Optional[float] = None,
    ) -> None:
        super().__init__(network, process, pad_id, bos_id, eos_id, max_len, keep_special=keep_special,
                         t_sharing=t_sharing, length_mode=length_mode, temperature=temperature, top_k=top_k,
                         top_p=top_p, filter_on=filter_on, reuse_cache=reuse_cache, sampler=sampler,
                         optimizer=optimizer, lr_scheduler=lr_scheduler, time_sampling=time_sampling,
                         time_eps=time_eps, ema_decay=ema_decay)
        if process.loss_type != "weighted_ce":
            raise ValueError(f"MDLM trains the continuous-time ELBO: model.process.loss_type must be 'weighted_ce', "
                             f"got {process.loss_type!r}")
        if not 0.0 <= self.time_eps < 1.0:
            raise ValueError(f"time_eps must be in [0, 1), got {time_eps}")
        self.diffuse_padding = bool(diffuse_padding)

    def setup(self, stage: str) -> None:
        """Corpus statistics (``DiffusionBERT.setup``) only when something reads them: the length histogram for
        ``length_mode="sample"``, token counts for a spindle schedule. Fixed-length MDLM on LM1B or OWT skips the
        pass over the training split."""
        if self.length_mode == "sample" or self.spindle:
            super().setup(stage)
        else:
            super(DiffusionBERT, self).setup(stage)  # DiffusionModule's: parameter shapes only

    # ----- pieces -----
    def noise_keep(self, ids: Tensor) -> Tensor:
        """Positions the forward process never masks, (B, L) ids -> (B, L) bool: ``keep_mask`` (PAD, and BOS/EOS
        with ``keep_special``), without PAD when ``diffuse_padding`` (official ``q_xt`` masks every position)."""
        keep = self.keep_mask(ids)
        return keep & (ids != self.pad_id) if self.diffuse_padding else keep

    def counted(self, ids: Tensor) -> Tensor:
        """Positions the loss and the bound count, (B, L) ids -> (B, L) bool: not PAD, nor BOS/EOS with
        ``keep_special`` (official ``_loss``: the attention mask). The same tokens ``DiffusionBERT`` counts."""
        return ~self.keep_mask(ids)

    def denoise(self, xt: Tensor, t: Tensor) -> Tensor:
        """Logits (B, L, V) of x0 for x_t (B, L) at t (B,). PAD positions are not attended unless
        ``diffuse_padding`` (the official DiT attends to every position)."""
        attention = None if self.diffuse_padding else xt != self.pad_id
        return self.network(xt, t, attention_mask=attention)

    def stratified_times(self, n: int) -> Tensor:
        """(n,) times, one per stratum: t_i = eps + (1 - eps)(u_i + i) / n with independent u_i ~ U[0, 1)
        (official ``_sample_t`` with ``antithetic_sampling``: (u_i / n + i / n) % 1, then (1 - eps) t + eps),
        mapped by the schedule (snapped to the grid for a discretised one, as official ``T > 0``)."""
        u = (torch.rand(n, device=self.device) + torch.arange(n, device=self.device)) / n
        return self.process.schedule.training_times(self.time_eps + (1 - self.time_eps) * u)

    def sample_t(self, n: int) -> Tensor:
        """Training times (n,): stratified (``time_sampling="antithetic"``) or i.i.d. uniform in [time_eps, 1];
        one time repeated with ``t_sharing="batch"``."""
        m = 1 if self.t_sharing == "batch" else n
        if self.time_sampling == "antithetic":
            t = self.stratified_times(m)
        else:  # official without antithetic_sampling: t = (1 - eps) u + eps
            u = torch.rand(m, device=self.device)
            t = self.process.schedule.training_times(self.time_eps + (1 - self.time_eps) * u)
        return t.expand(n).contiguous() if m != n else t

    def elbo_terms(self, ids: Tensor, t: Tensor) -> dict[str, Tensor]:
        """One Monte-Carlo draw of the ELBO's terms at times ``t`` (B,) for tokens ``ids`` (B, L): x_t ~ q(x_t | x0)
        (official ``q_xt``), then ``AbsorbingProcess.loss``: "diffusion" (B,) = sum over the masked counted tokens
        of 1 / t * -log p(x0 | x_t) (MDLM eq. 10, SUBS), "ce" (B,) the unweighted CE there, "hybrid" (B,),
        "loss" (B,) = diffusion + hybrid_lambda * hybrid; "counted" (B, L) bool and "masked" (B,) counts."""
        counted = self.counted(ids)
        xt = self.process.q_sample(ids, t, keep=self.noise_keep(ids))
        terms = self.process.loss(self.denoise(xt, t), ids, xt, t, mask=counted)
        return {**terms, "counted": counted, "masked": ((xt == self.process.mask_id) & counted).sum(-1)}

    # ----- training -----
    def compute_loss(self, batch: Batch) -> dict[str, Tensor]:
        """The ELBO per counted token (official ``_loss``: token_nll = sum of the weighted CE / number of
        tokens), with "nll" (the diffusion term alone, per token: the training-time bound) and "ce_per_masked"."""
        ids = batch["ids"]
        terms = self.elbo_terms(ids, self.sample_t(ids.shape[0]))
        tokens = terms["counted"].sum().clamp_min(1)
        return {"loss": terms["loss"].sum() / tokens, "nll": terms["diffusion"].sum() / tokens,
                "ce_per_masked": terms["ce"].sum() / terms["masked"].sum().clamp_min(1)}

    # ----- likelihood -----
    @torch.no_grad()
    def nll_bound(self, batch: Batch, num_t: int = 1, **_: Any) -> dict[str, Tensor]:
        """MDLM's continuous-time ELBO, an upper bound on -log p(x) (MDLM eq. 10; official ``ppl_eval``), estimated
        by Monte Carlo over t: ``num_t`` draws of stratified times over the batch (``stratified_times``), averaged.

        Returns "nll" (B,) nats per sequence and "tokens" (B,): the counted tokens (not PAD; not BOS/EOS with
        ``keep_special``), so that nats per token compare with ``DiffusionBERT.nll_bound`` on the same data,
        tokenizer and ``keep_special``. Other keyword arguments (a chain's ``num_steps``) do not apply and are
        ignored. Stochastic: seed the global RNG for a repeatable estimate (``nll_on_split`` does).
        """
        with self.sampling():
            ids = batch["ids"]
            draws = max(int(num_t), 1)
            nll = sum(self.elbo_terms(ids, self.stratified_times(ids.shape[0]))["diffusion"]
                      for _ in range(draws)) / draws
        return {"nll": nll, "tokens": self.counted(ids).sum(-1).float()}
