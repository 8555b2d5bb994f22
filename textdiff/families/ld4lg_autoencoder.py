"""LD4LG's first two stages (Lovelace et al. 2023; ALGORITHMS.md §3): the BART and the latent autoencoder.

* Stage 0, ``BartDenoiser``: a small BART trained from scratch with BART's own text-infilling objective
  (Lewis et al. 2020 §2.2) and exported with ``save_pretrained`` — the stand-in for a pre-trained
  ``facebook/bart-base`` where none can be downloaded (a frozen *random* BART is useless).
* Stage 1, ``LatentAutoencoder``: the frozen BART, a Perceiver compression network (encoder states -> 32 x 64
  latents, each of norm sqrt(64)) and a reconstruction network (latents -> 32 x d_model memory for the frozen
  decoder); only those two train, on the decoder's reconstruction loss (LD4LG §3.1). Its checkpoint is
  self-contained (``LatentAutoencoder.from_checkpoint``).

Stage 2 (the diffusion) is ``textdiff.families.ld4lg.LD4LG``.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor
from transformers import BartConfig
from transformers.modeling_outputs import BaseModelOutput

from textdiff.core.types import Batch
from textdiff.families.base import OptimizerFactory, SchedulerFactory, TextModule
from textdiff.nn.bart import BartSpec, build_bart, strip_decoder_start, text_infilling
from textdiff.nn.ld4lg import LatentReconstructor, PerceiverCompressor

log = logging.getLogger(__name__)

#: BART ``generate`` settings of the official LD4LG decoding (``diffusion/text_denoising_diffusion.py``).
OFFICIAL_GENERATE = {"num_beams": 4, "no_repeat_ngram_size": 3, "repetition_penalty": 1.2, "min_length": 5,
                     "max_length": 64}
AE_CHECKPOINT_KEY = "ld4lg_autoencoder"



def _bleu_records(module: Any, datamodule: Any, split: str, num_examples: Optional[int],
                  reconstruct: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run each ``reconstruct[name](ids, mask) -> ids`` over ``split`` and score the outputs against the
    inputs: corpus BLEU (sacreBLEU 13a) and exact-match rate per name. Records: id, text, one field per name."""
    from textdiff.data.tokenizers import decode_ids
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

    @property
    def l2_normalize(self) -> bool:
        """Whether each latent is rescaled to norm sqrt(latent_dim) (``--l2_normalize_latent``)."""
        return bool(self.compressor.l2_normalize)

    def compute_loss(self, batch: Batch) -> dict[str, Tensor]:
        ids, mask = batch["ids"], batch["mask"]
        src, src_mask = text_infilling(ids, mask, self.mask_id, self.pad_id, self.mask_ratio, self.poisson_lambda)
        out = self.bart(input_ids=src, attention_mask=src_mask, labels=ids.masked_fill(~mask, -100))
        acc = ((out.logits.argmax(-1) == ids) & mask).sum() / mask.sum()
        return {"loss": out.loss, "token_acc": acc}

    @torch.no_grad()
    def reconstruct(self, ids: Tensor, mask: Tensor, **generate_kwargs: Any) -> Tensor:
        """BART's output for inputs ids/mask (B, L): (B, L') ids ``BOS w EOS PAD...``."""
        with self.sampling():
            out = self.bart.generate(input_ids=ids, attention_mask=mask, **{**self.generate_kwargs, **generate_kwargs})
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
        no_decay_below_ndim: 2 (default) = the official AdamW groups of latent_finetuning.py (no weight
            decay on biases / LayerNorm gains, ndim < 2); None = decay on every trainable parameter.
        optimizer, lr_scheduler, ema_decay: see ``TextModule``.
    """

    def __init__(self, bart: Optional[BartSpec] = None, vocab_size: Optional[int] = None,
                 pad_id: Optional[int] = None, bos_id: Optional[int] = None, eos_id: Optional[int] = None,
                 num_latents: int = 32, latent_dim: int = 64, compress_depth: int = 3, reconstruct_depth: int = 3,
                 dim_head: int = 64, reconstruct_heads: Optional[int] = None, ff_mult: int = 4,
                 max_seq_len: int = 64, l2_normalize: bool = True, freeze_bart: bool = True,
                 generate_kwargs: Optional[dict[str, Any]] = None, bart_path: Optional[str] = None,
                 optimizer: Optional[OptimizerFactory] = None, lr_scheduler: Optional[SchedulerFactory] = None,
                 ema_decay: Optional[float] = None, no_decay_below_ndim: Optional[int] = 2) -> None:
        super().__init__(optimizer, lr_scheduler, ema_decay, no_decay_below_ndim)
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

    @property
    def l2_normalize(self) -> bool:
        """Whether each latent is rescaled to norm sqrt(latent_dim) (``--l2_normalize_latent``)."""
        return bool(self.compressor.l2_normalize)

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
        with self.sampling():
            memory = BaseModelOutput(last_hidden_state=self.memory(latents))
            out = self.bart.generate(encoder_outputs=memory, **{**self.generate_kwargs, **generate_kwargs})
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
