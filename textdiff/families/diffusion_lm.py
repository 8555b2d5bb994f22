"""Diffusion-LM (Li et al. 2022, "Diffusion-LM Improves Controllable Text Generation").

Continuous diffusion over learned word embeddings, as the official code trains it
(``training_losses_e2e`` with ``--predict_xstart True``; ALGORITHMS.md §2):

- x0 ~ q_phi(x0 | w) = N(EMB(w), sigma0^2 I), sigma0^2 = 1 - abar at the first chain step (paper eq. in §4.1);
- x_t = q_sample(x0, t); the network predicts x0 (the x0-parameterisation, §4.2);
- loss = mean (f(x_t) - x0)^2 [at the first step: (f - EMB(w))^2] + mean (sqrt(abar_T) x0)^2 (L_T)
  + CE(lm_head(x0), w) (the rounding term, eq. 2), lm_head tied to EMB with its own bias;
- padding is a token and is modelled (the official code does not mask it; ``mask_padding`` opts in).

Sampling: the clamping trick (§4.2) snaps x0_hat to its nearest embedding (L2) at every step, or
inside a time window; the final rounding is argmax of lm_head (⚠ dot-product + bias, not L2, as the
official ``text_sample.py``).
"""
from __future__ import annotations

import time
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textdiff.core.gaussian import GaussianProcess, gaussian_nll, masked_mean, masked_sum
from textdiff.core.control import Infill
from textdiff.core.hooks import ClampToEmbeddings
from textdiff.core.sampler import Sampler
from textdiff.core.types import Batch
from textdiff.families.base import DiffusionModule, OptimizerFactory, SamplerFactory, SchedulerFactory
from textdiff.families.interface import SamplingRun
from textdiff.nn.transformer import TransformerDenoiser


class DiffusionLM(DiffusionModule):
    """Diffusion-LM.

    Args:
        network: a ``TransformerDenoiser`` with ``in_dim == embed_dim`` (called as
            ``network(x_t, time_input, mask=...)``).
        process: a ``GaussianProcess``, normally ``GaussianProcess(DiscreteSchedule(SqrtSchedule(), 2000))``
            with ``prediction="x0"``.
        vocab_size: number of tokens V.
        embed_dim: embedding width d (16 for E2E, 128 for ROCStories).
        clamp: use the clamping trick when sampling (default of the official sampler).
        clamp_t_min, clamp_t_max: the time window in which clamping applies (full window = every step).
        mask_padding: exclude PAD positions from the losses (off in the official code).
        emb_init_std: std of the N(0, std^2) embedding initialisation (official: 1).
        sampler, optimizer, lr_scheduler, time_sampling, time_eps, ema_decay: see ``DiffusionModule``.
    """

    renamed_weights = {"denoiser.": "network."}  # checkpoints saved before the network was called `network`

    def __init__(
        self,
        network: TransformerDenoiser,
        process: GaussianProcess,
        vocab_size: int,
        embed_dim: int = 16,
        clamp: bool = True,
        clamp_t_min: float = 0.0,
        clamp_t_max: float = 1.0,
        mask_padding: bool = False,
        emb_init_std: float = 1.0,
        sampler: Optional[SamplerFactory] = None,
        optimizer: Optional[OptimizerFactory] = None,
        lr_scheduler: Optional[SchedulerFactory] = None,
        time_sampling: str = "uniform",
        time_eps: float = 0.0,
        ema_decay: Optional[float] = None,
    ) -> None:
        super().__init__(process, sampler, optimizer, lr_scheduler, time_sampling, time_eps, ema_decay)
        if not isinstance(process, GaussianProcess):
            raise TypeError(f"DiffusionLM needs a GaussianProcess, got {type(process).__name__}")
        if process.prediction not in ("x0", "eps"):
            raise ValueError(f"DiffusionLM supports prediction 'x0' (official) or 'eps', got {process.prediction!r}")
        in_dim = getattr(network, "in_dim", embed_dim)
        if in_dim != embed_dim:
            raise ValueError(f"network.in_dim ({in_dim}) must equal embed_dim ({embed_dim})")
        self.network = network
        self.vocab_size, self.embed_dim = int(vocab_size), int(embed_dim)
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        nn.init.normal_(self.embedding.weight, std=emb_init_std)
        self.lm_head = nn.Linear(embed_dim, vocab_size)  # rounding head: weight tied to EMB, own bias
        self.lm_head.weight = self.embedding.weight
        self.clamp, self.clamp_t_min, self.clamp_t_max = clamp, float(clamp_t_min), float(clamp_t_max)
        self.mask_padding = bool(mask_padding)

    # ----- pieces -----
    def first_step_time(self, n: int) -> Tensor:
        """t of the first chain step (1/T), or ``time_eps`` for a continuous schedule. (n,)."""
        t0 = 1.0 / self.num_train_steps if self.num_train_steps else max(self.time_eps, 1e-4)
        return torch.full((n,), t0, device=self.device)

    def embed_x0(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """EMB(w) and a draw x0 ~ N(EMB(w), sigma0^2 I) (q_phi(x0|w)). ids (B, L) -> 2 x (B, L, d)."""
        mean = self.embedding(ids)
        abar0 = self.process.schedule.alpha_bar(self.first_step_time(ids.shape[0]))
        sigma0 = (1 - abar0).clamp_min(0).sqrt().view(-1, 1, 1)
        return mean, mean + sigma0 * torch.randn_like(mean)

    def logits(self, x: Tensor) -> Tensor:
        """Rounding logits lm_head(x): (B, L, d) -> (B, L, V)."""
        return self.lm_head(x)

    def denoise(self, xt: Tensor, t: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Network output for x_t (B, L, d) at t (B,)."""
        return self.network(xt, self.time_input(t), mask=mask)

    # ----- training -----
    def compute_loss(self, batch: Batch) -> dict[str, Tensor]:
        ids = batch["ids"]
        mask = batch["mask"] if self.mask_padding else None
        emb, x0 = self.embed_x0(ids)
        t = self.sample_t(ids.shape[0])
        noise = torch.randn_like(x0)
        xt = self.process.q_sample(x0, t, noise)
        out = self.denoise(xt, t, mask)
        mse = self.process.loss(out, x0, t, noise, mask)  # (B,)
        # at the first step the loss is ||x0_hat - EMB(w)||^2 whatever the parameterisation (official
        # training_losses_e2e: t0_loss on x0_helper(model_output)["pred_xstart"])
        first = torch.isclose(t, self.first_step_time(len(t)))
        if first.any():
            x0_hat = self.process.to_x0(out, xt, t)
            mse = torch.where(first, masked_mean((x0_hat - emb) ** 2, mask), mse)
        prior = self.process.prior_loss(x0, mask)
        ce = F.cross_entropy(self.logits(x0).transpose(1, 2), ids, reduction="none")  # (B, L)
        rounding = masked_mean(ce.unsqueeze(-1), mask)
        loss = (mse + prior + rounding).mean()
        return {"loss": loss, "mse": mse.mean(), "prior": prior.mean(), "rounding": rounding.mean()}

    # ----- sampling -----
    def clamp_hook(self, t_min: Optional[float] = None, t_max: Optional[float] = None) -> ClampToEmbeddings:
        """The clamping trick on the current embedding table (L2 nearest row)."""
        return ClampToEmbeddings(lambda: self.embedding.weight, metric="l2",
                                 t_min=self.clamp_t_min if t_min is None else t_min,
                                 t_max=self.clamp_t_max if t_max is None else t_max)

    @torch.no_grad()
    def generate_run(
        self,
        num_samples: int,
        seq_len: Optional[int] = None,
        *,
        clamp: Optional[bool] = None,
        seed: Optional[int] = None,
        batch_size: int = 256,
        hooks: Sequence[Any] = (),
        step_hooks: Sequence[Any] = (),
        x_init: Optional[Tensor] = None,
        sampler: Optional[Sampler] = None,
        **sampler_overrides: Any,
    ) -> SamplingRun:
        """Sample token ids.

        Args:
            num_samples: number of sequences N.
            seq_len: length L (default: the network's ``max_len``; the official E2E setting is 64).
            clamp: override the clamping trick on/off for this call.
            seed: seeds the sampler's generator (same seed, same samples).
            batch_size: sequences per sampler call.
            hooks, step_hooks: extra sampler hooks (e.g. infilling, guidance).
            x_init: a starting state (N, L, d) instead of a prior draw.
            sampler: a built ``Sampler`` to run; or **sampler_overrides, e.g. ``num_steps=2000``, ``eta=1.0``.

        Returns:
            a ``SamplingRun``: ids (N, L) long (argmax of the rounding head on the final state); ``output``, the
            last batch's ``SampleOutput`` (trajectories, x0).
        """
        start_time = time.perf_counter()
        with self.sampling():
            seq_len = seq_len or self.network.max_len
            sampler = self.sampler_for(sampler, sampler_overrides)
            use_clamp = self.clamp if clamp is None else clamp
            all_hooks = ([self.clamp_hook()] if use_clamp else []) + list(hooks)
            gen = self.seeded_generator(seed)
            chunks, out, nfe = [], None, 0
            for start, n in self.batches(num_samples, batch_size):
                init = x_init[start:start + n] if x_init is not None else None
                out = sampler.sample(lambda x, t, sc: self.denoise(x, t), (n, seq_len, self.embed_dim),
                                     x_init=init, generator=gen, device=self.device, hooks=all_hooks,
                                     step_hooks=step_hooks)
                final = out.x if sampler.early_stop == 0 else out.x0
                chunks.append(self.logits(final).argmax(-1))
                nfe += out.row_evals
        return SamplingRun(torch.cat(chunks), sampler, nfe=nfe / max(num_samples, 1),
                           seconds=time.perf_counter() - start_time, details={"clamp": use_clamp}, output=out)

    @torch.no_grad()
    def infill(self, context_ids: Tensor, fill: Tensor, *, noise_context: bool = False, seed: Optional[int] = None,
               **generate_kwargs: Any) -> Tensor:
        """Generate the positions ``fill`` (N, L) bool around the fixed tokens of ``context_ids`` (N, L) long:
        the context's embeddings EMB(w) are re-imposed after every step (``textdiff.core.Infill``; noised
        to the step's level with ``noise_context``) and on the prior draw. ``generate_kwargs`` as in
        ``generate`` (e.g. ``num_steps``, ``clamp``, ``step_hooks`` for guidance). Returns (N, L) long ids,
        equal to ``context_ids`` wherever ``fill`` is False."""
        if context_ids.shape != fill.shape or fill.dtype != torch.bool:
            raise ValueError(f"context_ids {tuple(context_ids.shape)} and fill {tuple(fill.shape)} must be (N, L), "
                             "fill bool")
        context_ids, fill = context_ids.to(self.device), fill.to(self.device)
        gen = self.seeded_generator(0 if seed is None else seed)
        process = self.process.for_sampling()
        hook = Infill(self.embedding(context_ids), ~fill, process, noise_context=noise_context, generator=gen)
        x_init = hook.impose(process.prior((*context_ids.shape, self.embed_dim), generator=gen, device=self.device),
                             torch.ones(len(context_ids), device=self.device))
        extra = list(generate_kwargs.pop("step_hooks", ()))
        ids = self.generate(len(context_ids), context_ids.shape[1], seed=seed, x_init=x_init,
                            batch_size=len(context_ids), step_hooks=[hook, *extra], **generate_kwargs)
        return torch.where(fill, ids, context_ids)

    # ----- likelihood -----
    @torch.no_grad()
    def nll_bound(self, batch: Batch, num_t: int = 8, exact_steps: int = 20) -> dict[str, Tensor]:
        """An estimate of the variational bound on -log p(w) (nats, per sequence) for a T-step chain
        (Li et al. 2022 eq. 2; Ho et al. 2020 eq. 5):

            KL(q(x_T|x0) || p(x_T)) + sum_{k=2..T} KL(q(x_{k-1}|x_k, x0) || p(x_{k-1}|x_k))
            - log p(x0 | x_1) + log q(x0 | w) - log p(w | x0),

        with p(x0|x_1) Gaussian at the clipped posterior variance (improved-diffusion) and x0 one draw
        from q(x0|w). The KL terms are largest at the lowest noise levels, so k = 2..``exact_steps`` are
        summed exactly and the rest estimated from ``num_t`` stratified draws of k per sequence.
        Returns per-sequence "nll" (B,), "tokens" (B,) and the terms.
        """
        T = self.num_train_steps
        if not T:
            raise ValueError("nll_bound needs a discrete-time (DiscreteSchedule) process")
        with self.sampling():
            ids = batch["ids"]
            mask = batch["mask"] if self.mask_padding else None
            B, proc, dev = ids.shape[0], self.process, self.device
            emb, x0 = self.embed_x0(ids)

            def x0_hat(xt: Tensor, t: Tensor) -> Tensor:  # the network's x0 estimate (x0 or eps prediction)
                return proc.to_x0(self.denoise(xt, t, mask), xt, t)

            def kl_at(k: Tensor) -> Tensor:
                t, s = k / T, (k - 1) / T
                xt = proc.q_sample(x0, t)
                return proc.kl_step(x0, xt, x0_hat(xt, t), t, s, mask)

            head = min(max(exact_steps, 1), T)
            diffusion = sum((kl_at(torch.full((B,), float(k), device=dev)) for k in range(2, head + 1)),
                            torch.zeros(B, device=dev))
            rest = T - head  # k in (head, T], estimated by stratified sampling
            if rest > 0 and num_t > 0:
                width = rest / num_t
                for j in range(num_t):
                    u = torch.rand(B, device=dev)
                    k = (head + 1 + torch.floor(j * width + u * width)).clamp(max=T)
                    diffusion = diffusion + kl_at(k) * (rest / num_t)
            t1 = torch.full((B,), 1.0 / T, device=dev)
            x1 = proc.q_sample(x0, t1)
            _, var_clip = proc.posterior(x0, x1, torch.full((B,), 2.0 / T, device=dev), t1)
            sigma0_sq = (1 - proc.schedule.alpha_bar(t1)).view(-1, 1, 1)
            decoder = gaussian_nll(x0, x0_hat(x1, t1), var_clip, mask) - gaussian_nll(x0, emb, sigma0_sq, mask)
            ce = F.cross_entropy(self.logits(x0).transpose(1, 2), ids, reduction="none")
            rounding = masked_sum(ce.unsqueeze(-1), mask)
            prior = proc.kl_prior(x0, mask)
            tokens = mask.sum(-1).float() if mask is not None else torch.full((B,), float(ids.shape[1]), device=dev)
        total = prior + diffusion + decoder + rounding
        return {"nll": total, "tokens": tokens, "prior": prior, "diffusion": diffusion,
                "decoder": decoder, "rounding": rounding}
