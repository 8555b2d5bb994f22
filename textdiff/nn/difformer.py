"""Difformer's encoder-decoder denoiser (Gao et al. 2022, §3; ALGORITHMS.md §1, official ``modules.py``).

- One token embedding E (V, d_latent) for source and target, N(0, 0.02) (``--apply-bert-init``); the
  diffused latent of token w is z0 = sqrt(d_latent) E[w] and read out as logits z . E^T (no bias).
- Latent <-> model width through bias-free linear maps (``project_in_dim`` / ``project_out_dim``).
- Encoder: sqrt(d_latent) E[src] -> project in -> + learned positions -> dropout -> post-LN layers.
- Decoder input: project_in(z_t) [self-conditioning: FFN(2d -> d -> d) of the concatenation with
  project_in(z0_prev)] + time FFN(sinusoid(t, d) -> 4d -> d) + learned positions -> the *embedding
  LayerNorm* -> dropout -> layers with no causal mask and cross-attention -> project out -> z0_hat.
- The embedding LayerNorm has the two placements of the official code: "after_proj" (on the d-wide
  decoder input; the scripts' choice) and "before_proj" (on z0 itself, in latent space); "none" ablates it.
- A length classifier over the mean-pooled encoder output (``LengthPredictor``).
- Regularisation as fairseq's: ``dropout`` on the embeddings, the residual branches and the self-conditioning
  FFN; ``attention_dropout`` and ``activation_dropout`` (fairseq ``base_architecture``: 0, and the scripts do
  not set them) on the attention weights and the FFN activation.
- Initialisation (``init="official"``): the decoder side (its projections, positions, time and
  self-conditioning FFNs, layers, the length head and the shared embedding) from N(0, 0.02) as
  ``--apply-bert-init`` (``decoder.apply(init_bert_params)``); encoder positions from N(0, dim^-1/2) as
  fairseq's learned ``PositionalEmbedding``; the encoder layers keep torch's initialisation (fairseq's
  attention uses Xavier with gain 1/sqrt(2) there, a small difference). ``init="torch"`` is the earlier
  behaviour: torch's defaults, positions from N(0, 1).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from textdiff.nn.layers import bert_init_, set_layer_dropouts, timestep_embedding
from textdiff.nn.length import LengthPredictor

EMBED_NORMS = ("none", "after_proj", "before_proj")
INITS = ("official", "torch")
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


def _ffn(d_in: int, d_hidden: int, d_out: int, activation: str, dropout: Optional[float] = None) -> nn.Sequential:
    layers = [nn.Linear(d_in, d_hidden), _ACTIVATIONS[activation](), nn.Linear(d_hidden, d_out)]
    return nn.Sequential(*layers, *([nn.Dropout(dropout)] if dropout is not None else []))


class DifformerNet(nn.Module):
    """Encoder-decoder denoiser with a shared latent embedding and a length head.

    Args:
        vocab_size: V (one joint vocabulary for source and target).
        latent_dim: width of the diffused latents (128).
        dim: model width (iwslt preset 512).
        enc_depth, dec_depth: encoder / decoder layers (6 + 6).
        heads: attention heads (iwslt 4, base 8).
        ffn_dim: feed-forward width (iwslt 1024, base 2048).
        max_len: maximum target length L (learned decoder positions).
        max_src_len: maximum source length S (learned encoder positions).
        dropout: dropout of the embeddings, the layers' residual branches and the self-conditioning FFN
            (iwslt 0.3).
        attention_dropout: dropout on the attention weights (fairseq default 0).
        activation_dropout: dropout after the FFN activation (fairseq default 0).
        activation: "relu" (fairseq default), "gelu" or "silu".
        embed_norm: "after_proj", "before_proj" or "none" (ablation).
        embed_norm_affine: learn the LayerNorm's scale and shift (the scripts' ``--embed-norm-affine``).
        self_condition: accept the previous z0 estimate as a second decoder input.
        share_project_in: encoder and decoder share the input projection.
        length_classes: number of length classes (256); length_offset: predict the offset to the
            source length (``--pred-length-offset``).
        scale_embedding: multiply E by sqrt(latent_dim) (False = fairseq ``--no-scale-embedding``).
        init: "official" (the scripts' ``--apply-bert-init`` on the decoder side, fairseq's encoder positions)
            or "torch" (torch's defaults and N(0, 1) positions).
    """

    def __init__(
        self,
        vocab_size: int,
        latent_dim: int = 128,
        dim: int = 512,
        enc_depth: int = 6,
        dec_depth: int = 6,
        heads: int = 4,
        ffn_dim: int = 1024,
        max_len: int = 64,
        max_src_len: int = 128,
        dropout: float = 0.3,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        activation: str = "relu",
        embed_norm: str = "after_proj",
        embed_norm_affine: bool = True,
        self_condition: bool = True,
        share_project_in: bool = False,
        length_classes: int = 256,
        length_offset: bool = True,
        scale_embedding: bool = True,
        init: str = "official",
    ) -> None:
        super().__init__()
        if embed_norm not in EMBED_NORMS:
            raise ValueError(f"embed_norm must be one of {EMBED_NORMS}, got {embed_norm!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.vocab_size, self.latent_dim, self.dim = int(vocab_size), int(latent_dim), int(dim)
        self.max_len, self.max_src_len = int(max_len), int(max_src_len)
        self.embed_norm_position, self.self_condition = embed_norm, bool(self_condition)
        self.embed_scale = math.sqrt(latent_dim) if scale_embedding else 1.0
        self.embedding = nn.Embedding(vocab_size, latent_dim)
        nn.init.normal_(self.embedding.weight, std=0.02)  # BERT init, the shared table included
        self.enc_in = nn.Linear(latent_dim, dim, bias=False)
        self.dec_in = self.enc_in if share_project_in else nn.Linear(latent_dim, dim, bias=False)
        self.dec_out = nn.Linear(dim, latent_dim, bias=False)
        self.enc_pos, self.dec_pos = nn.Embedding(max_src_len, dim), nn.Embedding(max_len, dim)
        self.time = _ffn(dim, 4 * dim, dim, activation)
        self.self_cond_proj = _ffn(2 * dim, dim, dim, activation, dropout) if self_condition else None
        norm_dim = latent_dim if embed_norm == "before_proj" else dim
        self.embed_norm = nn.LayerNorm(norm_dim, elementwise_affine=embed_norm_affine) if embed_norm != "none" else None
        self.drop = nn.Dropout(dropout)
        kw = dict(d_model=dim, nhead=heads, dim_feedforward=ffn_dim, dropout=dropout, activation=activation,
                  batch_first=True, norm_first=False)
        drops = dict(attention=attention_dropout, activation=activation_dropout)
        self.encoder = nn.ModuleList([set_layer_dropouts(nn.TransformerEncoderLayer(**kw), **drops)
                                      for _ in range(enc_depth)])
        self.decoder = nn.ModuleList([set_layer_dropouts(nn.TransformerDecoderLayer(**kw), **drops)
                                      for _ in range(dec_depth)])
        self.length = LengthPredictor(dim, length_classes, offset=length_offset)
        if init == "official":
            nn.init.normal_(self.enc_pos.weight, std=dim ** -0.5)  # fairseq LearnedPositionalEmbedding
            for module in self.decoder_side():  # --apply-bert-init: decoder.apply(init_bert_params)
                bert_init_(module)

    def decoder_side(self) -> list[nn.Module]:
        """The modules of the official ``DifformerDecoder`` (what ``--apply-bert-init`` initialises): the shared
        embedding, the decoder's projections, positions, time and self-conditioning FFNs, its layers and the
        length head (fairseq NAT keeps ``embed_length`` in the decoder)."""
        mods = [self.embedding, self.dec_in, self.dec_out, self.dec_pos, self.time, self.decoder, self.length]
        return mods + ([self.self_cond_proj] if self.self_cond_proj is not None else [])

    # ----- embeddings and read-out -----
    def embed(self, ids: Tensor) -> Tensor:
        """z0 = sqrt(d_latent) E[ids] (then the LayerNorm in the "before_proj" placement).
        (B, L) -> (B, L, d_latent)."""
        z = self.embed_scale * self.embedding(ids)
        return self.embed_norm(z) if self.embed_norm_position == "before_proj" else z

    def logits(self, z: Tensor) -> Tensor:
        """Token logits z . E^T (the tied output projection, no bias). (B, L, d_latent) -> (B, L, V)."""
        return z @ self.embedding.weight.t()

    # ----- encoder -----
    def encode(self, src_ids: Tensor, src_mask: Optional[Tensor] = None) -> Tensor:
        """Source encoding (B, S, dim) of ``src_ids`` (B, S); ``src_mask`` (B, S) True on real tokens."""
        S = src_ids.shape[1]
        if S > self.max_src_len:
            raise ValueError(f"source length {S} exceeds the network's max_src_len={self.max_src_len}")
        h = (self.enc_in(self.embed_scale * self.embedding(src_ids))
             + self.enc_pos(torch.arange(S, device=src_ids.device)))
        h = self.drop(h)
        pad = ~src_mask.bool() if src_mask is not None else None
        for layer in self.encoder:
            h = layer(h, src_key_padding_mask=pad)
        return h

    def length_logits(self, memory: Tensor, src_mask: Optional[Tensor]) -> Tensor:
        """Length-class logits (B, length_classes) from the encoding (B, S, dim)."""
        return self.length(memory, src_mask)

    # ----- decoder -----
    def memory_kv(self, memory: Tensor, repeat: int = 1) -> list[tuple[Tensor, Tensor]]:
        """Each decoder layer's cross-attention keys and values of ``memory`` (B, S, dim), for ``forward(...,
        memory_kv=...)``: they do not change along the reverse chain, so ``generate`` computes them once (fairseq's
        ``encoder_out`` reuse), from the B sources and not their B x ``repeat`` candidates. Returns one (k, v) per
        layer, each (B * repeat, heads, S, dim / heads), rows source-major (as ``repeat_interleave``)."""
        out = []
        for layer in self.decoder:
            attn = layer.multihead_attn
            w, b = attn.in_proj_weight, attn.in_proj_bias  # rows: [W_q; W_k; W_v] (nn.MultiheadAttention)
            kv = nn.functional.linear(memory, w[self.dim:], None if b is None else b[self.dim:])  # (B, S, 2 dim)
            k, v = (x.unflatten(-1, (attn.num_heads, -1)).transpose(1, 2).repeat_interleave(repeat, 0)
                    for x in kv.chunk(2, dim=-1))
            out.append((k, v))
        return out

    def _cross_attention(self, layer: nn.TransformerDecoderLayer, x: Tensor, kv: tuple[Tensor, Tensor],
                         src_pad: Optional[Tensor]) -> Tensor:
        """``layer``'s cross-attention block (``_mha_block``: attention, output projection, dropout) with its keys
        and values precomputed by ``memory_kv``. x (B, L, dim); src_pad (B, S) True on padding."""
        attn = layer.multihead_attn
        w, b = attn.in_proj_weight, attn.in_proj_bias
        q = nn.functional.linear(x, w[:self.dim], None if b is None else b[:self.dim])
        q = q.unflatten(-1, (attn.num_heads, -1)).transpose(1, 2)  # (B, H, L, dh)
        keep = None if src_pad is None else ~src_pad[:, None, None, :]  # (B, 1, 1, S) True where attended
        o = nn.functional.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=keep,
                                                       dropout_p=attn.dropout if self.training else 0.0)
        return layer.dropout2(attn.out_proj(o.transpose(1, 2).flatten(2)))

    def forward(self, z_t: Tensor, t: Tensor, memory: Optional[Tensor], *, mask: Optional[Tensor] = None,
                src_mask: Optional[Tensor] = None, self_cond: Optional[Tensor] = None,
                memory_kv: Optional[list[tuple[Tensor, Tensor]]] = None) -> Tensor:
        """Predict z0 from z_t.

        Args:
            z_t: (B, L, d_latent) noisy latents.
            t: (B,) time input (the family's rescaled chain index).
            memory: (B, S, dim) source encoding from ``encode`` (None with ``memory_kv``).
            mask: (B, L) True on the target positions to generate (padding is not attended to).
            src_mask: (B, S) True on real source tokens.
            self_cond: (B, L, d_latent) previous z0 estimate, or None (zeros: the first pass).
            memory_kv: the decoder layers' cross-attention keys and values of the memory (``memory_kv``), instead
                of ``memory``; the same result.

        Returns:
            z0_hat (B, L, d_latent).
        """
        B, L, _ = z_t.shape
        if L > self.max_len:
            raise ValueError(f"target length {L} exceeds the network's max_len={self.max_len}")
        if (memory is None) == (memory_kv is None):
            raise ValueError("pass exactly one of memory and memory_kv")
        h = self.dec_in(z_t)
        if self.self_condition:
            prev = self_cond if self_cond is not None else torch.zeros_like(z_t)
            h = self.self_cond_proj(torch.cat([h, self.dec_in(prev)], dim=-1))
        h = h + self.time(timestep_embedding(t, self.dim).to(h.dtype)).unsqueeze(1)
        h = h + self.dec_pos(torch.arange(L, device=z_t.device))
        if self.embed_norm_position == "after_proj":
            h = self.embed_norm(h)
        h = self.drop(h)
        pad = ~mask.bool() if mask is not None else None
        mpad = ~src_mask.bool() if src_mask is not None else None
        for i, layer in enumerate(self.decoder):
            if memory_kv is None:
                h = layer(h, memory, tgt_key_padding_mask=pad, memory_key_padding_mask=mpad)
            else:  # nn.TransformerDecoderLayer.forward (post-norm), the cross-attention from cached keys/values
                h = layer.norm1(h + layer._sa_block(h, None, pad))
                h = layer.norm2(h + self._cross_attention(layer, h, memory_kv[i], mpad))
                h = layer.norm3(h + layer._ff_block(h))
        return self.dec_out(h)
