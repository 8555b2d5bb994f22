"""LD4LG (Lovelace et al. 2023, "Latent Diffusion for Language Generation"), in three stages.

* Stage 0, ``BartDenoiser``: a small BART trained from scratch with BART's own text-infilling
  objective (Lewis et al. 2020 §2.2) and exported with ``save_pretrained`` — the stand-in for a
  pre-trained ``facebook/bart-base`` where none can be downloaded (a frozen *random* BART is useless).
* Stage 1, ``LatentAutoencoder``: the frozen BART, a Perceiver compression network (encoder states ->
  32 x 64 latents, each of norm sqrt(64)) and a reconstruction network (latents -> 32 x d_model memory
  for the frozen decoder); only those two train, on the decoder's reconstruction loss (LD4LG §3.1).
* Stage 2, ``LD4LG``: continuous-time Gaussian diffusion on the L2-normalised latents (cos^2 schedule with
  its logSNR clamp and scale, v-prediction, alpha-conditioning, self-conditioning with a learned null
  vector), class-conditional generation with classifier-free guidance or a seq2seq variant that
  cross-attends to the frozen encoder's states of a source; samples decode through the reconstruction
  network and BART's ``generate`` (beam 4, no-repeat-ngram 3, as the official code). ALGORITHMS.md §3.

Stages 0 and 1 live in ``textdiff.families.ld4lg_autoencoder`` (re-exported here). The diffusion math
(schedule, q_sample, v target, x0 from v, reverse steps, guidance combination) is in ``textdiff.core``; this
module composes it with the BART pieces.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from textdiff.core.gaussian import GaussianProcess, masked_mean
from textdiff.core.guidance import ClassifierFreeGuidance
from textdiff.core.hooks import L2Renormalize
from textdiff.core.sampler import SampleOutput, Sampler
from textdiff.core.types import Batch, pad_sequences
from textdiff.data.samplers import process_position
from textdiff.families.base import DiffusionModule, OptimizerFactory, SamplerFactory, SchedulerFactory
from textdiff.families.interface import SamplingRun
from textdiff.families.ld4lg_autoencoder import OFFICIAL_GENERATE, BartDenoiser, LatentAutoencoder
from textdiff.nn.ld4lg import LatentDenoiser

__all__ = ["OFFICIAL_GENERATE", "BartDenoiser", "LatentAutoencoder", "LD4LG"]

log = logging.getLogger(__name__)

RENORMALIZE = ("official", "always", "off")


def _pad_rows(rows: Sequence[Tensor], pad_id: int) -> Tensor:
    """Stack (n_i, L_i) id blocks into (sum n_i, max L_i), right-padded with ``pad_id``."""
    seqs = [r for block in rows for r in block.tolist()]
    return pad_sequences(seqs, pad_id)[0]


class LD4LG(DiffusionModule):
    """Stage 2: latent diffusion over a trained, frozen ``LatentAutoencoder`` (LD4LG §3.2-3.3).

    Args:
        autoencoder: a ``LatentAutoencoder`` or the path of its checkpoint; ``autoencoder_path`` is the same,
            for configs (give one of the two). Frozen here.
        vocab_size: the data tokenizer's V, checked against the autoencoder's BART (None = unchecked).
        network: a ``LatentDenoiser`` (its latent_dim and max_len must fit the autoencoder's latents;
            ``num_classes`` > 0 for class-conditional generation; ``context_dim`` = BART's d_model for seq2seq).
        process: a continuous-time ``GaussianProcess``, normally the cos^2 schedule with ``prediction="v"``.
        sampler: the sampler factory (DDPM 250 steps with the "large" variance in the official code).
        self_condition_prob: share of training batches with a self-conditioning pass (0.5).
        class_dropout: probability of replacing the class by the null class in training (0.1).
        context_dropout: seq2seq: probability of replacing the source by the null context (0.1).
        guidance_weight: default classifier-free guidance weight w (1 = plain conditional sampling).
        seq2seq: condition on a source text through the frozen BART encoder (``generate(src_ids, src_mask)``).
        normalize_latents: standardise latents with the mean (per dim) and std (one scalar) of the first
            training batch (official ``--normalize_latent``, off by default); kept in buffers, so checkpoints
            carry them. Under DDP/FSDP: of the union of the ranks' first batches, the same on every rank.
            Refused with an L2-normalising autoencoder, as the official trainer asserts: that flag belongs to
            its no-autoencoder baseline, and dividing norm-sqrt(d) latents by a pooled std below 1 would raise
            every SNR.
        l2_renormalize: with an L2-normalising autoencoder, where x0_hat is rescaled to norm sqrt(d) (official
            ``F.normalize(x) * sqrt(d)``, then eps and v re-derived from it): "official" = the self-conditioning
            input in training (every run) and x0_hat at every sampling step of the seq2seq sampler only;
            "always" = also at every step of the unconditional and class-conditional samplers; "off" = never.
            ⚠ The official code thus trains unconditional models on renormalised self-conditioning inputs but
            samples them without renormalisation (its ``sample()`` does not pass ``l2_normalize``), a
            train/sample mismatch that "official" reproduces and "always" removes.
        loss_type: "l2" (official default) or "l1" (the paper's seq2seq setting) on the v target.
        generate_kwargs: BART ``generate`` settings for decoding samples (default ``OFFICIAL_GENERATE``).
        no_decay_below_ndim: 2 (default) = the official AdamW groups: weight decay only on
            parameters with ndim >= 2 (see ``decay_despite_ndim``); None = decay on every parameter.
        optimizer, lr_scheduler, time_sampling, time_eps, ema_decay: see ``DiffusionModule``.
    """

    renamed_weights = {"denoiser.": "network."}  # checkpoints saved before the network was called `network`

    # Official (justinlovelace/latent-diffusion-for-language, diffusion/optimizer.py,
    # separate_weight_decayable_params, used by get_adamw_optimizer in diffusion/text_denoising_diffusion.py
    # and latent_models/latent_finetuning.py): no weight decay for params with ndim < 2 (biases, LayerNorm
    # affine), decay for everything else, chosen by shape alone. The learned null vectors are therefore
    # decayed there: the self-conditioning null ``init_self_cond`` is (1, latent_dim), the seq2seq null
    # ``null_embedding_seq2seq`` an Embedding(1, dim), the null class a row of the class Embedding
    # (model/diffusion_transformer.py). Ours has null_context (1, dim) and the class table 2-D as well, but
    # null_self_cond is (latent_dim,): named here so it is decayed as in the official code.
    decay_despite_ndim = ("network.null_self_cond",)
    # the null self-conditioning vector takes no part in a self-conditioned step's loss; the official trainer
    # also runs DDP with find_unused_parameters=True
    ddp_find_unused_parameters = True

    def __init__(self, network: LatentDenoiser, process: GaussianProcess,
                 autoencoder: Union[LatentAutoencoder, str, None] = None, autoencoder_path: Optional[str] = None,
                 vocab_size: Optional[int] = None,
                 sampler: Optional[SamplerFactory] = None, self_condition_prob: float = 0.5,
                 class_dropout: float = 0.1, context_dropout: float = 0.1, guidance_weight: float = 1.0,
                 seq2seq: bool = False, normalize_latents: bool = False,
                 l2_renormalize: Literal["official", "always", "off"] = "official",
                 loss_type: Literal["l2", "l1"] = "l2",
                 generate_kwargs: Optional[dict[str, Any]] = None, optimizer: Optional[OptimizerFactory] = None,
                 lr_scheduler: Optional[SchedulerFactory] = None, time_sampling: str = "uniform",
                 time_eps: float = 0.0, ema_decay: Optional[float] = None,
                 no_decay_below_ndim: Optional[int] = 2) -> None:
        super().__init__(process, sampler, optimizer, lr_scheduler, time_sampling, time_eps, ema_decay,
                         no_decay_below_ndim)
        if not isinstance(process, GaussianProcess):
            raise TypeError(f"LD4LG needs a GaussianProcess, got {type(process).__name__}")
        if self.num_train_steps:
            raise ValueError("LD4LG diffuses in continuous time: use a continuous schedule (diffusion_steps=null)")
        if (autoencoder is None) == (autoencoder_path is None):
            raise ValueError("give the stage-1 autoencoder as exactly one of `autoencoder` and `autoencoder_path` "
                             "(its checkpoint, e.g. <stage-1 run>/checkpoints/last.ckpt)")
        ae = autoencoder if autoencoder is not None else autoencoder_path
        if not isinstance(ae, LatentAutoencoder):
            ae = LatentAutoencoder.from_checkpoint(ae)
        if vocab_size is not None and int(vocab_size) != ae.vocab_size:
            raise ValueError(f"the data's tokenizer has {vocab_size} tokens but the autoencoder's BART has "
                             f"{ae.vocab_size}: use the stage-1 run's tokenizer "
                             "(data.tokenizer_path=<stage-1 run>/tokenizer)")
        ae.requires_grad_(False)
        self.autoencoder = ae.eval()
        if loss_type not in ("l2", "l1"):
            raise ValueError(f"loss_type must be 'l2' or 'l1', got {loss_type!r}")
        if l2_renormalize not in RENORMALIZE:
            raise ValueError(f"l2_renormalize must be one of {RENORMALIZE}, got {l2_renormalize!r}")
        if normalize_latents and ae.l2_normalize:
            raise ValueError(
                "normalize_latents=true with an autoencoder that L2-normalises its latents (l2_normalize=true): the "
                "official trainer refuses this combination (`assert not args.normalize_latent`); set "
                "model.normalize_latents=false (the default). Runs trained with both before this check cannot be "
                "rebuilt with this class.")
        if network.latent_dim != ae.latent_dim or network.max_len < ae.num_latents:
            raise ValueError(f"network (latent_dim={network.latent_dim}, max_len={network.max_len}) does not fit "
                             f"the autoencoder's {ae.num_latents} x {ae.latent_dim} latents")
        d_model = ae.bart.config.d_model
        if seq2seq and network.context_dim != d_model:
            raise ValueError(f"seq2seq needs network.context_dim = BART's d_model ({d_model}), "
                             f"got {network.context_dim}")
        if not seq2seq and network.context_dim is not None:
            raise ValueError("the network has a context (cross-attention) but seq2seq is false")
        self.network = network
        self.conditional = bool(seq2seq)
        self.num_classes = int(network.num_classes)
        self.self_condition_prob = float(self_condition_prob) if network.self_condition else 0.0
        self.class_dropout, self.context_dropout = float(class_dropout), float(context_dropout)
        self.guidance_weight, self.normalize_latents, self.loss_type = (float(guidance_weight), normalize_latents,
                                                                        loss_type)
        self.l2_renormalize = l2_renormalize if ae.l2_normalize else "off"  # only L2 latents are renormalised
        self.generate_kwargs = {**ae.generate_kwargs, **dict(generate_kwargs or {})}
        self.register_buffer("latent_mean", torch.zeros(ae.latent_dim))
        self.register_buffer("latent_scale", torch.ones(()))
        self.register_buffer("latent_stats_set", torch.zeros((), dtype=torch.bool))

    @property
    def vocab_size(self) -> int:
        """V of the autoencoder's BART."""
        return self.autoencoder.vocab_size

    def train(self, mode: bool = True) -> "LD4LG":
        """As ``nn.Module.train``; the frozen autoencoder stays in eval mode."""
        super().train(mode)
        self.autoencoder.eval()
        return self

    # ----- latents -----
    @torch.no_grad()
    def latents(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Normalised latents x0 of token ids (B, L): (B, N, d) = (encode - mean) / scale."""
        z = self.autoencoder.encode(ids, mask)
        if self.normalize_latents and not bool(self.latent_stats_set):
            if not self.training:
                log.warning("latent statistics are not set yet (no training batch seen): using mean 0, scale 1")
            else:  # official: from the first batch; mean per dim, one std (biased) for all dims
                flat = z.reshape(-1, z.shape[-1])
                if process_position()[1] > 1:
                    self._set_latent_stats_distributed(flat)
                else:
                    self.latent_mean.copy_(flat.mean(0))
                    self.latent_scale.copy_((flat - self.latent_mean).std(unbiased=False))
                self.latent_stats_set.fill_(True)
                log.info("latent normalisation set from the first batch: |mean| %.3f, scale %.3f",
                         float(self.latent_mean.norm()), float(self.latent_scale))
        return (z - self.latent_mean) / self.latent_scale

    def _set_latent_stats_distributed(self, flat: Tensor) -> None:
        """Mean and scale over the union of every rank's first batch (flat: (n_rank, d)), identical on
        all ranks. Without it each rank would keep the statistics of its own batch (DDP's
        ``broadcast_buffers`` copies rank 0's buffers only before later forwards, FSDP not at all).
        Two all-reduces in float64: sums and counts, then the squared deviations from the global mean."""
        import torch.distributed as dist

        x = flat.double()
        head = torch.cat([x.sum(0), x.new_tensor([x.shape[0]])])
        dist.all_reduce(head)
        mean = head[:-1] / head[-1]
        sq = ((x - mean) ** 2).sum().reshape(1)
        dist.all_reduce(sq)
        self.latent_mean.copy_(mean)
        self.latent_scale.copy_((sq / (head[-1] * x.shape[1])).sqrt().squeeze(0))

    def renormalize(self, x0: Tensor) -> Tensor:
        """x0_hat (B, N, d) rescaled to norm sqrt(d) per latent (official ``F.normalize(x, dim=-1) * sqrt(d)``)."""
        return F.normalize(x0, dim=-1) * math.sqrt(x0.shape[-1])

    def renormalizes_when_sampling(self) -> bool:
        """Whether this model's sampler renormalises x0_hat at every step (``l2_renormalize``)."""
        return self.l2_renormalize == "always" or (self.l2_renormalize == "official" and self.conditional)

    def unnormalize(self, x: Tensor) -> Tensor:
        """Back to the autoencoder's latent space: x * scale + mean, (B, N, d)."""
        return x * self.latent_scale + self.latent_mean

    @torch.no_grad()
    def context(self, src_ids: Tensor, src_mask: Tensor) -> Tensor:
        """The frozen BART encoder's states of a source (B, S) -> (B, S, d_model) (seq2seq conditioning)."""
        return self.autoencoder.bart.get_encoder()(input_ids=src_ids, attention_mask=src_mask).last_hidden_state

    # ----- the network -----
    def time_input(self, t: Tensor) -> Tensor:
        """LD4LG conditions on alpha, not t: 1000 * abar(t) (the official ``alpha`` conditioning). (B,)."""
        return 1000.0 * self.process.schedule.alpha_bar(t).float()

    def net(self, x: Tensor, t: Tensor, self_cond: Optional[Tensor] = None, class_ids: Optional[Tensor] = None,
            context: Optional[Tensor] = None, context_mask: Optional[Tensor] = None,
            drop_context: Optional[Tensor] = None) -> Tensor:
        """The network's output (v for v-prediction) for x_t (B, N, d) at t (B,)."""
        return self.network(x, self.time_input(t), self_cond=self_cond, class_ids=class_ids, context=context,
                             context_mask=context_mask, drop_context=drop_context)

    def build_sampler(self, **overrides: Any) -> Any:
        """The configured sampler; it self-conditions whenever the network takes a self-conditioning input."""
        return super().build_sampler(**{"self_condition": self.network.self_condition, **overrides})

    def _null_class(self, n: int) -> Tensor:
        return torch.full((n,), self.num_classes, dtype=torch.long, device=self.device)

    # ----- training -----
    def compute_loss(self, batch: Batch) -> dict[str, Tensor]:
        ids, mask = batch["ids"], batch["mask"]
        B = ids.shape[0]
        x0 = self.latents(ids, mask)
        t = self.sample_t(B)
        noise = torch.randn_like(x0)
        xt = self.process.q_sample(x0, t, noise)
        kw: dict[str, Any] = {}
        if self.num_classes:
            if "labels" not in batch:
                raise ValueError("this LD4LG is class-conditional (network.num_classes > 0) but the batch has no "
                                 "labels: set data.label_field (and data.label_slot for E2E)")
            drop = torch.rand(B, device=self.device) < self.class_dropout  # classifier-free guidance training
            kw["class_ids"] = torch.where(drop, self._null_class(B), batch["labels"])
        if self.conditional:
            kw["context"], kw["context_mask"] = self.context(batch["src_ids"], batch["src_mask"]), batch["src_mask"]
            kw["drop_context"] = torch.rand(B, device=self.device) < self.context_dropout
        self_cond = None
        if self.self_condition_prob > 0 and float(torch.rand(())) < self.self_condition_prob:
            with torch.no_grad():  # Chen et al. 2023 self-conditioning: a first pass, stop-gradient
                self_cond = self.process.to_x0(self.net(xt, t, None, **kw), xt, t).detach()
                if self.l2_renormalize != "off":  # official forward(): renormalised whenever the AE L2-normalises
                    self_cond = self.renormalize(self_cond)
        out = self.net(xt, t, self_cond, **kw)
        target = self.process.target(x0, noise, t)
        err = (out - target) ** 2 if self.loss_type == "l2" else (out - target).abs()
        loss = masked_mean(err, None)  # mean over latents and dims, per example
        with torch.no_grad():
            x0_mse = masked_mean((self.process.to_x0(out, xt, t) - x0) ** 2, None).mean()
        return {"loss": loss.mean(), "x0_mse": x0_mse}

    # ----- sampling -----
    def _sample_latents(self, n: int, generator: Optional[torch.Generator], sampler: Any, weight: float,
                        class_ids: Optional[Tensor] = None, context: Optional[Tensor] = None,
                        context_mask: Optional[Tensor] = None) -> tuple[SampleOutput, int]:
        """Run the sampler for n latents with guidance weight w; returns (its output, whose ``x0`` (n, N, d) is the
        normalised latents, and the network calls of the guided denoiser)."""
        def cond(x: Tensor, t: Tensor, sc: Optional[Tensor]) -> Tensor:
            return self.net(x, t, sc, class_ids=class_ids, context=context, context_mask=context_mask)

        def uncond(x: Tensor, t: Tensor, sc: Optional[Tensor]) -> Tensor:
            drop = torch.ones(x.shape[0], dtype=torch.bool, device=x.device) if context is not None else None
            null = self._null_class(x.shape[0]) if class_ids is not None else None
            return self.net(x, t, sc, class_ids=null, context=context, context_mask=context_mask, drop_context=drop)

        guided = ClassifierFreeGuidance(cond, uncond, weight if (class_ids is not None or context is not None) else 1.0)
        # official diffusion_model_predictions(l2_normalize=True): x0_hat renormalised at every step and the
        # reverse step taken from it (our steps use the posterior at x0_hat, which re-derives eps_hat)
        hooks = [L2Renormalize()] if self.renormalizes_when_sampling() else []
        out = sampler.sample(guided, (n, self.autoencoder.num_latents, self.autoencoder.latent_dim),
                             generator=generator, device=self.device, hooks=hooks)
        return out, guided.nfe  # the official sampler returns x0_hat at the last step

    def generate_run(self, *args: Any, **kwargs: Any) -> SamplingRun:
        """Unconditional / class-conditional: ``generate_run(num_samples, seq_len=None, *, labels=None, ...)``;
        seq2seq: ``generate_run(src_ids, src_mask, ...)``. See ``sample_run`` and ``seq2seq_run``."""
        return self.seq2seq_run(*args, **kwargs) if self.conditional else self.sample_run(*args, **kwargs)

    @torch.no_grad()
    def sample_run(self, num_samples: int, seq_len: Optional[int] = None, *,
                   labels: Union[Tensor, Sequence[int], None] = None,
                   guidance_weight: Optional[float] = None, seed: Optional[int] = None, batch_size: int = 64,
                   decode: Optional[dict[str, Any]] = None, sampler: Optional[Sampler] = None,
                   **sampler_overrides: Any) -> SamplingRun:
        """Sample texts (as token ids).

        Args:
            num_samples: N.
            seq_len: ignored (the latents are fixed-size; BART's EOS decides the length); the decoded
                length is capped by ``decode["max_length"]``.
            labels: class-conditional models: N class ids (default: 0, 1, ..., C-1, 0, ... — balanced).
            guidance_weight: w for this call (default: the configured ``guidance_weight``).
            seed: seeds the sampler's generator.
            batch_size: latents per sampler call.
            decode: overrides of BART's ``generate`` settings.
            sampler: a built ``Sampler`` to run; or **sampler_overrides, e.g. ``num_steps=250``, ``variance="large"``.

        Returns:
            a ``SamplingRun``: ids (N, L') ``BOS w EOS PAD...``; ``labels``, the class asked of each row
            (class-conditional models); ``extras["latents"]``, the final unnormalised latents (N, num_latents,
            latent_dim); ``nfe``, network calls per sequence (2 K under guidance).
        """
        start_time = time.perf_counter()
        with self.sampling():
            sampler = self.sampler_for(sampler, sampler_overrides)
            w = self.guidance_weight if guidance_weight is None else float(guidance_weight)
            lab = None
            if self.num_classes:
                if labels is None:  # balanced: 0, 1, ..., C-1, 0, ...
                    labels = torch.arange(num_samples) % self.num_classes
                lab = torch.as_tensor(labels, dtype=torch.long, device=self.device)
                if lab.shape != (num_samples,) or lab.min() < 0 or lab.max() >= self.num_classes:
                    raise ValueError(f"labels must be {num_samples} class ids in [0, {self.num_classes})")
            elif labels is not None:
                raise ValueError("labels were given but this LD4LG is not class-conditional (network.num_classes = 0)")
            gen = self.seeded_generator(seed)
            rows, lats, nfe, out = [], [], 0, None
            for s, n in self.batches(num_samples, batch_size):
                cls = lab[s:s + n] if lab is not None else None
                out, k = self._sample_latents(n, gen, sampler, w, class_ids=cls)
                z = self.unnormalize(out.x0)
                rows.append(self.autoencoder.decode(z, **{**self.generate_kwargs, **dict(decode or {})}))
                lats.append(z)
                nfe += k * n
        ids = _pad_rows(rows, self.autoencoder.pad_id).to(self.device)
        return SamplingRun(ids, sampler, nfe=nfe / max(num_samples, 1), seconds=time.perf_counter() - start_time,
                           labels=None if lab is None else lab.tolist(), details={"guidance_weight": w},
                           output=out, extras={"latents": torch.cat(lats)})

    @torch.no_grad()
    def seq2seq_run(self, src_ids: Tensor, src_mask: Tensor, *, guidance_weight: Optional[float] = None,
                    seed: Optional[int] = None, decode: Optional[dict[str, Any]] = None,
                    sampler: Optional[Sampler] = None, **sampler_overrides: Any) -> SamplingRun:
        """Seq2seq: one output per source (B, S) with mask (B, S): a ``SamplingRun`` of (B, L') ids
        ``BOS w EOS PAD...``. Arguments as ``sample_run``."""
        if not self.conditional:
            raise ValueError("seq2seq_run needs a seq2seq LD4LG (seq2seq=true)")
        start_time = time.perf_counter()
        with self.sampling():
            sampler = self.sampler_for(sampler, sampler_overrides)
            w = self.guidance_weight if guidance_weight is None else float(guidance_weight)
            gen = self.seeded_generator(seed)
            ctx = self.context(src_ids, src_mask)
            out, nfe = self._sample_latents(src_ids.shape[0], gen, sampler, w, context=ctx, context_mask=src_mask)
            z = self.unnormalize(out.x0)
            ids = self.autoencoder.decode(z, **{**self.generate_kwargs, **dict(decode or {})})
        return SamplingRun(ids, sampler, nfe=float(nfe), seconds=time.perf_counter() - start_time,
                           details={"guidance_weight": w}, output=out, extras={"latents": z})
