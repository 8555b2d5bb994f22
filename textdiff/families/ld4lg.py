"""LD4LG (Lovelace et al. 2023, "Latent Diffusion for Language Generation"), in three stages.

* Stage 0, ``BartDenoiser``: a small BART trained from scratch with BART's own text-infilling
  objective (Lewis et al. 2020 §2.2) and exported with ``save_pretrained`` — the stand-in for a
  pre-trained ``facebook/bart-base`` where none can be downloaded (a frozen *random* BART is useless).
* Stage 1, ``LatentAutoencoder``: the frozen BART, a Perceiver compression network (encoder states ->
  32 x 64 latents, each of norm sqrt(64)) and a reconstruction network (latents -> 32 x d_model memory
  for the frozen decoder); only those two train, on the decoder's reconstruction loss (LD4LG §3.1).
* Stage 2, ``LD4LG``: continuous-time Gaussian diffusion on the normalised latents (cos^2 schedule with
  its logSNR clamp and scale, v-prediction, alpha-conditioning, self-conditioning with a learned null
  vector), class-conditional generation with classifier-free guidance or a seq2seq variant that
  cross-attends to the frozen encoder's states of a source; samples decode through the reconstruction
  network and BART's ``generate`` (beam 4, no-repeat-ngram 3, as the official code). ALGORITHMS.md §3.

The diffusion math (schedule, q_sample, v target, x0 from v, reverse steps, guidance combination) is in
``textdiff.core``; this module composes it with the BART pieces.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

import torch
from torch import Tensor
from transformers import BartConfig
from transformers.modeling_outputs import BaseModelOutput

from textdiff.core.gaussian import GaussianProcess, masked_mean
from textdiff.core.guidance import ClassifierFreeGuidance
from textdiff.core.types import Batch
from textdiff.data.datamodule import pad_sequences
from textdiff.families.base import DiffusionModule, OptimizerFactory, SamplerFactory, SchedulerFactory, TextModule
from textdiff.nn.bart import BartSpec, build_bart, strip_decoder_start, text_infilling
from textdiff.nn.ld4lg import LatentDenoiser, LatentReconstructor, PerceiverCompressor

log = logging.getLogger(__name__)

#: BART ``generate`` settings of the official LD4LG decoding (``diffusion/text_denoising_diffusion.py``).
OFFICIAL_GENERATE = {"num_beams": 4, "no_repeat_ngram_size": 3, "repetition_penalty": 1.2, "min_length": 5,
                     "max_length": 64}
AE_CHECKPOINT_KEY = "ld4lg_autoencoder"


def _pad_rows(rows: Sequence[Tensor], pad_id: int) -> Tensor:
    """Stack (n_i, L_i) id blocks into (sum n_i, max L_i), right-padded with ``pad_id``."""
    seqs = [r for block in rows for r in block.tolist()]
    return pad_sequences(seqs, pad_id)[0]


def _bleu_records(module: Any, datamodule: Any, split: str, num_examples: Optional[int],
                  reconstruct: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run each ``reconstruct[name](ids, mask) -> ids`` over ``split`` and score the outputs against the
    inputs: corpus BLEU (sacreBLEU 13a) and exact-match rate per name. Records: id, text, one field per name."""
    from textdiff.evaluation import decode_ids
    from textdiff.metrics.text import corpus_bleu

    texts = datamodule.texts(split)
    loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    limit = len(texts) if num_examples is None else min(int(num_examples), len(texts))
    device = next(module.parameters()).device
    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    for batch in loader:
        if len(records) >= limit:
            break
        keep = min(limit - len(records), batch["ids"].shape[0])
        ids, mask = batch["ids"][:keep].to(device), batch["mask"][:keep].to(device)
        outs = {name: decode_ids(fn(ids, mask).cpu(), datamodule.tokenizer) for name, fn in reconstruct.items()}
        inputs = decode_ids(ids.cpu(), datamodule.tokenizer)
        for k, j in enumerate(batch["index"][:keep].tolist()):
            records.append({"id": j, "text": texts[j], "input": inputs[k][0],
                            **{name: rows[k][0] for name, rows in outs.items()}})
    metrics: dict[str, Any] = {"split": split, "num_examples": len(records),
                               "seconds": round(time.perf_counter() - start, 3)}
    refs = [[r["input"]] for r in records]  # the input as the tokenizer sees it (UNK and all)
    for name in reconstruct:
        hyps = [r[name] for r in records]
        metrics[f"{name}_bleu"] = corpus_bleu(hyps, refs)["bleu"]
        metrics[f"{name}_exact"] = sum(h == r[0] for h, r in zip(hyps, refs)) / max(len(refs), 1)
    return records, metrics


class BartDenoiser(TextModule):
    """Stage 0: a BART trained as a denoising autoencoder (text infilling) on the training corpus.

    Args:
        bart: a ``BartConfig`` mapping (random init, the CPU presets), a directory or hub name, or a model.
        vocab_size, pad_id, bos_id, eos_id, mask_id: from the tokenizer (``${data.vocab_size}``,
            ``${tokens.*}``); the tokenizer must have a mask token.
        mask_ratio, poisson_lambda: text infilling's masked share and mean span length (BART: 0.3, 3).
        generate_kwargs: BART ``generate`` settings for evaluation (default ``OFFICIAL_GENERATE``).
        export_dir: name of the directory under the run directory that ``save_artifacts`` writes.
        optimizer, lr_scheduler, ema_decay: see ``TextModule``.
    """

    def __init__(self, bart: BartSpec, vocab_size: Optional[int] = None, pad_id: Optional[int] = None,
                 bos_id: Optional[int] = None, eos_id: Optional[int] = None, mask_id: Optional[int] = None,
                 mask_ratio: float = 0.3, poisson_lambda: float = 3.0,
                 generate_kwargs: Optional[dict[str, Any]] = None, export_dir: str = "bart",
                 optimizer: Optional[OptimizerFactory] = None, lr_scheduler: Optional[SchedulerFactory] = None,
                 ema_decay: Optional[float] = None) -> None:
        super().__init__(optimizer, lr_scheduler, ema_decay)
        if mask_id is None:
            raise ValueError("BartDenoiser needs a tokenizer with a mask token (tokens.mask_id is null): set "
                             "data.tokenizer.add_mask_token=true or use a BPE tokenizer")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.bart = build_bart(bart, vocab_size, pad_id, bos_id, eos_id)
        self.pad_id = self.bart.config.pad_token_id
        self.mask_id, self.mask_ratio, self.poisson_lambda = int(mask_id), float(mask_ratio), float(poisson_lambda)
        self.generate_kwargs = {**OFFICIAL_GENERATE, **dict(generate_kwargs or {})}
        self.export_dir = export_dir

    @property
    def vocab_size(self) -> int:
        """V of the BART."""
        return int(self.bart.config.vocab_size)

    def compute_loss(self, batch: Batch) -> dict[str, Tensor]:
        ids, mask = batch["ids"], batch["mask"]
        src, src_mask = text_infilling(ids, mask, self.mask_id, self.pad_id, self.mask_ratio, self.poisson_lambda)
        out = self.bart(input_ids=src, attention_mask=src_mask, labels=ids.masked_fill(~mask, -100))
        acc = ((out.logits.argmax(-1) == ids) & mask).sum() / mask.sum()
        return {"loss": out.loss, "token_acc": acc}

    @torch.no_grad()
    def reconstruct(self, ids: Tensor, mask: Tensor, **generate_kwargs: Any) -> Tensor:
        """BART's output for inputs ids/mask (B, L): (B, L') ids ``BOS w EOS PAD...``."""
        was = self.training
        self.eval()
        out = self.bart.generate(input_ids=ids, attention_mask=mask, **{**self.generate_kwargs, **generate_kwargs})
        self.train(was)
        return strip_decoder_start(out)

    def evaluate_on(self, datamodule: Any, *, split: str = "test", num_examples: Optional[int] = None,
                    batch_size: int = 64, seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Reconstruction BLEU on ``split`` from the clean input (``copy``) and from a text-infilled one
        (``denoise``, seeded): how well the stage-0 BART reproduces held-out sentences."""
        gen = torch.Generator().manual_seed(seed)

        def denoise(ids: Tensor, mask: Tensor) -> Tensor:
            src, src_mask = text_infilling(ids.cpu(), mask.cpu(), self.mask_id, self.pad_id, self.mask_ratio,
                                           self.poisson_lambda, generator=gen)
            return self.reconstruct(src.to(ids.device), src_mask.to(ids.device))

        return _bleu_records(self, datamodule, split, num_examples, {"copy": self.reconstruct, "denoise": denoise})

    def save_artifacts(self, run_dir: Union[str, Path], tokenizer: Any = None) -> Path:
        """Write ``<run_dir>/<export_dir>/``: the BART (``save_pretrained``) and the tokenizer beside it, so
        that the directory serves as ``model.bart_path`` *and* ``data.tokenizer_path`` of stage 1.
        Written into a temporary sibling, then renamed (a killed export leaves no half directory)."""
        final = Path(run_dir) / self.export_dir
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        self.bart.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        log.info("saved the stage-0 BART and its tokenizer to %s", final)
        return final


class LatentAutoencoder(TextModule):
    """Stage 1: frozen BART + compression network + reconstruction network (LD4LG §3.1).

    Args:
        bart: the BART (anything ``build_bart`` takes: a stage-0 export directory, ``facebook/bart-base``,
            a config mapping for tests); ``bart_path`` is the same, for configs (give one of the two).
        vocab_size, pad_id, bos_id, eos_id: the tokenizer's (checked against a loaded BART).
        num_latents, latent_dim: the latent shape (32 x 64).
        compress_depth, reconstruct_depth: layers of each network (3 + 3).
        dim_head: head width of the compression network's attention (64).
        reconstruct_heads: heads of the reconstruction network (None = d_model // 64).
        ff_mult: feed-forward expansion of both networks.
        max_seq_len: longest input the compression network's positions cover (64).
        l2_normalize: rescale each latent to norm sqrt(latent_dim) (``--l2_normalize_latent``).
        freeze_bart: keep BART's weights fixed (and in eval mode) — the paper's setting.
        generate_kwargs: BART ``generate`` settings (default ``OFFICIAL_GENERATE``).
        optimizer, lr_scheduler, ema_decay: see ``TextModule``.
    """

    def __init__(self, bart: Optional[BartSpec] = None, vocab_size: Optional[int] = None,
                 pad_id: Optional[int] = None, bos_id: Optional[int] = None, eos_id: Optional[int] = None,
                 num_latents: int = 32, latent_dim: int = 64, compress_depth: int = 3, reconstruct_depth: int = 3,
                 dim_head: int = 64, reconstruct_heads: Optional[int] = None, ff_mult: int = 4,
                 max_seq_len: int = 64, l2_normalize: bool = True, freeze_bart: bool = True,
                 generate_kwargs: Optional[dict[str, Any]] = None, bart_path: Optional[str] = None,
                 optimizer: Optional[OptimizerFactory] = None, lr_scheduler: Optional[SchedulerFactory] = None,
                 ema_decay: Optional[float] = None) -> None:
        super().__init__(optimizer, lr_scheduler, ema_decay)
        if (bart is None) == (bart_path is None):
            raise ValueError("give the BART as exactly one of `bart` and `bart_path` (a stage-0 export "
                             "directory <run>/bart, or a hub name such as facebook/bart-base)")
        self.bart = build_bart(bart if bart is not None else bart_path, vocab_size, pad_id, bos_id, eos_id)
        d_model = self.bart.config.d_model
        self.compressor = PerceiverCompressor(d_model, num_latents, latent_dim, compress_depth, dim_head, ff_mult,
                                              max_seq_len, l2_normalize)
        self.reconstructor = LatentReconstructor(latent_dim, d_model, num_latents, reconstruct_depth,
                                                 reconstruct_heads or max(1, d_model // 64), ff_mult)
        self.num_latents, self.latent_dim, self.freeze_bart = int(num_latents), int(latent_dim), bool(freeze_bart)
        self.pad_id = self.bart.config.pad_token_id
        self.generate_kwargs = {**OFFICIAL_GENERATE, **dict(generate_kwargs or {})}
        self._init_args = {"num_latents": num_latents, "latent_dim": latent_dim, "compress_depth": compress_depth,
                           "reconstruct_depth": reconstruct_depth, "dim_head": dim_head,
                           "reconstruct_heads": reconstruct_heads, "ff_mult": ff_mult, "max_seq_len": max_seq_len,
                           "l2_normalize": l2_normalize, "freeze_bart": freeze_bart,
                           "generate_kwargs": dict(self.generate_kwargs)}
        if self.freeze_bart:
            self.bart.requires_grad_(False)
            self.bart.eval()

    @property
    def vocab_size(self) -> int:
        """V of the BART."""
        return int(self.bart.config.vocab_size)

    def train(self, mode: bool = True) -> "LatentAutoencoder":
        """As ``nn.Module.train``, but a frozen BART stays in eval mode (no dropout)."""
        super().train(mode)
        if self.freeze_bart:
            self.bart.eval()
        return self

    # ----- the two directions -----
    def encode(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Latents of token ids (B, L) with mask (B, L): (B, num_latents, latent_dim)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_bart):
            feats = self.bart.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.compressor(feats, mask)

    def memory(self, latents: Tensor) -> Tensor:
        """The decoder's cross-attention memory for latents (B, N, latent_dim): (B, N, d_model)."""
        return self.reconstructor(latents)

    @torch.no_grad()
    def decode(self, latents: Tensor, **generate_kwargs: Any) -> Tensor:
        """Text ids for latents (B, N, latent_dim) by BART ``generate`` on their memory (no attention mask,
        as the official code): (B, L') ``BOS w EOS PAD...``."""
        was = self.training
        self.eval()
        memory = BaseModelOutput(last_hidden_state=self.memory(latents))
        out = self.bart.generate(encoder_outputs=memory, **{**self.generate_kwargs, **generate_kwargs})
        self.train(was)
        return strip_decoder_start(out)

    def reconstruct(self, ids: Tensor, mask: Tensor, **generate_kwargs: Any) -> Tensor:
        """``decode(encode(ids, mask))``: (B, L) -> (B, L')."""
        with torch.no_grad():
            return self.decode(self.encode(ids, mask), **generate_kwargs)

    # ----- training -----
    def compute_loss(self, batch: Batch) -> dict[str, Tensor]:
        ids, mask = batch["ids"], batch["mask"]
        memory = self.memory(self.encode(ids, mask))
        out = self.bart(encoder_outputs=(memory,), labels=ids.masked_fill(~mask, -100))
        acc = ((out.logits.argmax(-1) == ids) & mask).sum() / mask.sum()
        return {"loss": out.loss, "token_acc": acc}

    def evaluate_on(self, datamodule: Any, *, split: str = "test", num_examples: Optional[int] = None,
                    batch_size: int = 64, seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Reconstruction BLEU and exact-match rate on held-out sentences of ``split`` (the stage's metric)."""
        records, metrics = _bleu_records(self, datamodule, split, num_examples, {"reconstruction": self.reconstruct})
        metrics["bleu"] = metrics["reconstruction_bleu"]
        return records, metrics

    # ----- a self-contained checkpoint -----
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[AE_CHECKPOINT_KEY] = {"bart_config": self.bart.config.to_dict(), "init": dict(self._init_args)}

    @classmethod
    def from_checkpoint(cls, path: Union[str, Path], map_location: Any = "cpu") -> "LatentAutoencoder":
        """Rebuild a trained autoencoder from its Lightning checkpoint alone (the BART's config and weights
        are in it; the stage-0 directory is not needed). Raises a clear error for other checkpoints."""
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"{path} is a directory: give the stage-1 checkpoint file, e.g. "
                             f"{path / 'checkpoints' / 'last.ckpt'}")
        if not path.is_file():
            raise FileNotFoundError(f"no autoencoder checkpoint at {path}")
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
        meta = ckpt.get(AE_CHECKPOINT_KEY)
        if meta is None:
            family = ckpt.get("textdiff", {}).get("family", "unknown")
            raise ValueError(f"{path} is not a LatentAutoencoder checkpoint (family: {family})")
        model = cls(bart=BartConfig.from_dict(meta["bart_config"]), **meta["init"])
        model.load_state_dict(ckpt["state_dict"])
        return model


class LD4LG(DiffusionModule):
    """Stage 2: latent diffusion over a trained, frozen ``LatentAutoencoder`` (LD4LG §3.2-3.3).

    Args:
        autoencoder: a ``LatentAutoencoder`` or the path of its checkpoint; ``autoencoder_path`` is the same,
            for configs (give one of the two). Frozen here.
        vocab_size: the data tokenizer's V, checked against the autoencoder's BART (None = unchecked).
        denoiser: a ``LatentDenoiser`` (its latent_dim and max_len must fit the autoencoder's latents;
            ``num_classes`` > 0 for class-conditional generation; ``context_dim`` = BART's d_model for seq2seq).
        process: a continuous-time ``GaussianProcess``, normally the cos^2 schedule with ``prediction="v"``.
        sampler: the sampler factory (DDPM 250 steps with the "large" variance in the official code).
        self_condition_prob: share of training batches with a self-conditioning pass (0.5).
        class_dropout: probability of replacing the class by the null class in training (0.1).
        context_dropout: seq2seq: probability of replacing the source by the null context (0.1).
        guidance_weight: default classifier-free guidance weight w (1 = plain conditional sampling).
        seq2seq: condition on a source text through the frozen BART encoder (``generate(src_ids, src_mask)``).
        normalize_latents: standardise latents with the mean (per dim) and std (one scalar) of the first
            training batch (official ``--normalize_latent``); kept in buffers, so checkpoints carry them.
        loss_type: "l2" (official default) or "l1" (the paper's seq2seq setting) on the v target.
        generate_kwargs: BART ``generate`` settings for decoding samples (default ``OFFICIAL_GENERATE``).
        optimizer, lr_scheduler, time_sampling, time_eps, ema_decay: see ``DiffusionModule``.
    """

    def __init__(self, denoiser: LatentDenoiser, process: GaussianProcess,
                 autoencoder: Union[LatentAutoencoder, str, None] = None, autoencoder_path: Optional[str] = None,
                 vocab_size: Optional[int] = None,
                 sampler: Optional[SamplerFactory] = None, self_condition_prob: float = 0.5,
                 class_dropout: float = 0.1, context_dropout: float = 0.1, guidance_weight: float = 1.0,
                 seq2seq: bool = False, normalize_latents: bool = True, loss_type: Literal["l2", "l1"] = "l2",
                 generate_kwargs: Optional[dict[str, Any]] = None, optimizer: Optional[OptimizerFactory] = None,
                 lr_scheduler: Optional[SchedulerFactory] = None, time_sampling: str = "uniform",
                 time_eps: float = 0.0, ema_decay: Optional[float] = None) -> None:
        super().__init__(process, sampler, optimizer, lr_scheduler, time_sampling, time_eps, ema_decay)
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
                             f"{ae.vocab_size}: use the stage-1 run's tokenizer (data.tokenizer_path=<stage-1 run>/tokenizer)")
        ae.requires_grad_(False)
        self.autoencoder = ae.eval()
        if loss_type not in ("l2", "l1"):
            raise ValueError(f"loss_type must be 'l2' or 'l1', got {loss_type!r}")
        if denoiser.latent_dim != ae.latent_dim or denoiser.max_len < ae.num_latents:
            raise ValueError(f"denoiser (latent_dim={denoiser.latent_dim}, max_len={denoiser.max_len}) does not fit "
                             f"the autoencoder's {ae.num_latents} x {ae.latent_dim} latents")
        d_model = ae.bart.config.d_model
        if seq2seq and denoiser.context_dim != d_model:
            raise ValueError(f"seq2seq needs denoiser.context_dim = BART's d_model ({d_model}), "
                             f"got {denoiser.context_dim}")
        if not seq2seq and denoiser.context_dim is not None:
            raise ValueError("the denoiser has a context (cross-attention) but seq2seq is false")
        self.denoiser = denoiser
        self.conditional = bool(seq2seq)
        self.num_classes = int(denoiser.num_classes)
        self.self_condition_prob = float(self_condition_prob) if denoiser.self_condition else 0.0
        self.class_dropout, self.context_dropout = float(class_dropout), float(context_dropout)
        self.guidance_weight, self.normalize_latents, self.loss_type = float(guidance_weight), normalize_latents, loss_type
        self.generate_kwargs = {**ae.generate_kwargs, **dict(generate_kwargs or {})}
        self.register_buffer("latent_mean", torch.zeros(ae.latent_dim))
        self.register_buffer("latent_scale", torch.ones(()))
        self.register_buffer("latent_stats_set", torch.zeros((), dtype=torch.bool))
        self.last_labels: Optional[list[int]] = None
        self.last_sample_stats: dict[str, Any] = {}

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
                self.latent_mean.copy_(flat.mean(0))
                self.latent_scale.copy_((flat - self.latent_mean).std(unbiased=False))
                self.latent_stats_set.fill_(True)
                log.info("latent normalisation set from the first batch: |mean| %.3f, scale %.3f",
                         float(self.latent_mean.norm()), float(self.latent_scale))
        return (z - self.latent_mean) / self.latent_scale

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
        """The denoiser's output (v for v-prediction) for x_t (B, N, d) at t (B,)."""
        return self.denoiser(x, self.time_input(t), self_cond=self_cond, class_ids=class_ids, context=context,
                             context_mask=context_mask, drop_context=drop_context)

    def build_sampler(self, **overrides: Any) -> Any:
        """The configured sampler; it self-conditions whenever the denoiser takes a self-conditioning input."""
        return super().build_sampler(**{"self_condition": self.denoiser.self_condition, **overrides})

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
                raise ValueError("this LD4LG is class-conditional (denoiser.num_classes > 0) but the batch has no "
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
                        context_mask: Optional[Tensor] = None) -> tuple[Tensor, int]:
        """Run the sampler for n latents with guidance weight w; returns (x0 (n, N, d) normalised, nfe)."""
        def cond(x: Tensor, t: Tensor, sc: Optional[Tensor]) -> Tensor:
            return self.net(x, t, sc, class_ids=class_ids, context=context, context_mask=context_mask)

        def uncond(x: Tensor, t: Tensor, sc: Optional[Tensor]) -> Tensor:
            drop = torch.ones(x.shape[0], dtype=torch.bool, device=x.device) if context is not None else None
            null = self._null_class(x.shape[0]) if class_ids is not None else None
            return self.net(x, t, sc, class_ids=null, context=context, context_mask=context_mask, drop_context=drop)

        guided = ClassifierFreeGuidance(cond, uncond, weight if (class_ids is not None or context is not None) else 1.0)
        out = sampler.sample(guided, (n, self.autoencoder.num_latents, self.autoencoder.latent_dim),
                             generator=generator, device=self.device)
        return out.x0, guided.nfe  # the official sampler returns x0_hat at the last step

    @torch.no_grad()
    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """Unconditional / class-conditional: ``generate(num_samples, seq_len=None, *, labels=None, ...)``;
        seq2seq: ``generate(src_ids, src_mask, ...)``. See ``sample`` and ``generate_from``."""
        return self.generate_from(*args, **kwargs) if self.conditional else self.sample(*args, **kwargs)

    @torch.no_grad()
    def sample(self, num_samples: int, seq_len: Optional[int] = None, *, labels: Union[Tensor, Sequence[int], None] = None,
               guidance_weight: Optional[float] = None, seed: Optional[int] = None, batch_size: int = 64,
               return_latents: bool = False, decode: Optional[dict[str, Any]] = None,
               **sampler_overrides: Any) -> Any:
        """Sample texts (as token ids).

        Args:
            num_samples: N.
            seq_len: ignored (the latents are fixed-size; BART's EOS decides the length); the decoded
                length is capped by ``decode["max_length"]``.
            labels: class-conditional models: N class ids (default: 0, 1, ..., C-1, 0, ... — balanced);
                kept in ``last_labels``.
            guidance_weight: w for this call (default: the configured ``guidance_weight``).
            seed: seeds the sampler's generator.
            batch_size: latents per sampler call.
            return_latents: also return the final (unnormalised) latents (N, num_latents, latent_dim).
            decode: overrides of BART's ``generate`` settings.
            **sampler_overrides: e.g. ``num_steps=250``, ``eta=1.0``, ``variance="large"``.

        Returns:
            (N, L') token ids ``BOS w EOS PAD...``, or (ids, latents).
        """
        was = self.training
        self.eval()
        sampler = self.build_sampler(**sampler_overrides)
        w = self.guidance_weight if guidance_weight is None else float(guidance_weight)
        if self.num_classes:
            lab = torch.as_tensor(list(labels) if labels is not None and not isinstance(labels, Tensor) else
                                  (labels if labels is not None else torch.arange(num_samples) % self.num_classes),
                                  dtype=torch.long, device=self.device)
            if lab.shape != (num_samples,) or lab.min() < 0 or lab.max() >= self.num_classes:
                raise ValueError(f"labels must be {num_samples} class ids in [0, {self.num_classes})")
            self.last_labels = lab.tolist()
        elif labels is not None:
            raise ValueError("labels were given but this LD4LG is not class-conditional (denoiser.num_classes = 0)")
        gen = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        rows, lats, nfe = [], [], 0
        start = time.perf_counter()
        for s in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - s)
            cls = lab[s:s + n] if self.num_classes else None
            x0, k = self._sample_latents(n, gen, sampler, w, class_ids=cls)
            z = self.unnormalize(x0)
            rows.append(self.autoencoder.decode(z, **{**self.generate_kwargs, **dict(decode or {})}))
            lats.append(z)
            nfe += k
        self.last_sample_stats = {"nfe_per_batch": nfe / max(len(rows), 1), "guidance_weight": w,
                                  "seconds": round(time.perf_counter() - start, 3)}
        self.train(was)
        ids = _pad_rows(rows, self.autoencoder.pad_id).to(self.device)
        return (ids, torch.cat(lats)) if return_latents else ids

    @torch.no_grad()
    def generate_from(self, src_ids: Tensor, src_mask: Tensor, *, guidance_weight: Optional[float] = None,
                      seed: Optional[int] = None, decode: Optional[dict[str, Any]] = None,
                      **sampler_overrides: Any) -> Tensor:
        """Seq2seq: one output per source (B, S) with mask (B, S): (B, L') ids ``BOS w EOS PAD...``."""
        if not self.conditional:
            raise ValueError("generate_from needs a seq2seq LD4LG (seq2seq=true)")
        was = self.training
        self.eval()
        sampler = self.build_sampler(**sampler_overrides)
        w = self.guidance_weight if guidance_weight is None else float(guidance_weight)
        gen = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        ctx = self.context(src_ids, src_mask)
        x0, nfe = self._sample_latents(src_ids.shape[0], gen, sampler, w, context=ctx, context_mask=src_mask)
        ids = self.autoencoder.decode(self.unnormalize(x0), **{**self.generate_kwargs, **dict(decode or {})})
        self.last_sample_stats = {"nfe_per_batch": nfe, "guidance_weight": w}
        self.train(was)
        return ids
