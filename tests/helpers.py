"""Test helpers: oracle denoisers (return the truth) and a GPU marker."""
from __future__ import annotations

import pytest
import torch

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def gaussian_oracle(process, x0: torch.Tensor):
    """A denoiser that knows x0: returns the exact x0 / eps / v target for its input x_t."""

    def denoise(xt, t, self_cond):
        a, sigma = process.coefs(t)
        a, sigma = a.view(-1, 1, 1), sigma.view(-1, 1, 1)
        if process.prediction == "x0":
            return x0.clone()
        eps = (xt - a * x0) / sigma.clamp_min(1e-12)
        return eps if process.prediction == "eps" else a * eps - sigma * x0

    return denoise


def absorbing_oracle(x0: torch.Tensor, vocab_size: int, confidence: float = 30.0):
    """A denoiser whose logits put (almost) all mass on the true token."""

    def denoise(xt, t, self_cond):
        logits = torch.zeros(*x0.shape, vocab_size)
        logits.scatter_(-1, x0.unsqueeze(-1), confidence)
        return logits

    return denoise


TINY_BART = {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
             "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
             "max_position_embeddings": 64}
TINY_AE = {"num_latents": 4, "latent_dim": 8, "compress_depth": 1, "reconstruct_depth": 1, "dim_head": 8,
           "reconstruct_heads": 2, "max_seq_len": 64}


def save_ld4lg_assets(root, texts):
    """Stand-ins for LD4LG's stage-0 and stage-1 outputs, built without training: ``root/bart`` (a tiny BART
    with ``save_pretrained`` and a word tokenizer with [MASK] beside it) and ``root/ae`` (a run directory
    with ``checkpoints/last.ckpt`` of a tiny ``LatentAutoencoder`` on that BART and its ``tokenizer/``).
    Returns (bart_dir, ae_checkpoint)."""
    from pathlib import Path

    from textdiff.data.tokenizers import build_word_tokenizer
    from textdiff.families.ld4lg import BartDenoiser, LatentAutoencoder

    root = Path(root)
    tok = build_word_tokenizer(texts, add_mask_token=True)
    stage0 = BartDenoiser(dict(TINY_BART), tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id)
    bart_dir = stage0.save_artifacts(root, tok)
    ae = LatentAutoencoder(bart_path=str(bart_dir), vocab_size=tok.vocab_size, **TINY_AE)
    ckpt = {"state_dict": ae.state_dict()}
    ae.on_save_checkpoint(ckpt)
    path = root / "ae" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save(ckpt, path)
    tok.save(root / "ae" / "tokenizer")
    return bart_dir, path
