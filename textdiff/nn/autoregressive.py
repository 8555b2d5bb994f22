"""An autoregressive Transformer (Vaswani et al. 2017): encoder-decoder for seq2seq, decoder-only
for language modelling.

Shaped after fairseq's ``transformer_iwslt_de_en`` (the autoregressive row of Difformer's tables):
one token embedding shared by encoder and decoder and tied to the output projection
(``--share-all-embeddings``), inputs scaled by sqrt(dim), learned positions, post-LN layers, ReLU
feed-forward, no bias on the output projection. Differences from fairseq, all minor: positions are
learned from index 0 (fairseq offsets them past the pad index), and torch's layers use one dropout
rate for attention weights, the FFN activation and the residual branches (fairseq's IWSLT recipe
drops only the residual branches, ``attention_dropout = activation_dropout = 0``).

``enc_depth=0`` gives a decoder-only language model: the decoder layers then have no cross-attention
(plain self-attention layers under the causal mask).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def causal_mask(length: int, device: Optional[torch.device] = None) -> Tensor:
    """Bool (L, L) attention mask, True where attention is *not* allowed (key j > query i)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).triu(1)


class ARTransformer(nn.Module):
    """Token-level Transformer producing next-token logits.

    Args:
        vocab_size: number of tokens V.
        dim: model width (fairseq IWSLT: 512).
        enc_depth: encoder layers; 0 = decoder-only language model (no encoder, no cross-attention).
        dec_depth: decoder layers.
        heads: attention heads (fairseq IWSLT: 4).
        ffn_dim: feed-forward width (fairseq IWSLT: 1024).
        max_len: decoder positions L (target length including BOS/EOS).
        max_src_len: encoder positions S (source length including BOS/EOS); unused when enc_depth=0.
        dropout: dropout on embeddings and inside the layers (fairseq IWSLT: 0.3).
        activation: "relu" (fairseq) or "gelu".
        norm_first: pre-LN layers plus a final LayerNorm (False = post-LN, as fairseq's default).
        tie_embeddings: output projection = the token embedding matrix (transposed).
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int = 512,
        enc_depth: int = 6,
        dec_depth: int = 6,
        heads: int = 8,
        ffn_dim: int = 1024,
        max_len: int = 64,
        max_src_len: int = 128,
        dropout: float = 0.3,
        activation: str = "relu",
        norm_first: bool = False,
        tie_embeddings: bool = True,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        if enc_depth < 0 or dec_depth < 1:
            raise ValueError(f"need enc_depth >= 0 and dec_depth >= 1, got {enc_depth} and {dec_depth}")
        if activation not in ("relu", "gelu"):
            raise ValueError(f"activation must be 'relu' or 'gelu', got {activation!r}")
        self.vocab_size, self.dim, self.max_len, self.max_src_len = int(vocab_size), dim, max_len, max_src_len
        self.enc_depth, self.dec_depth = enc_depth, dec_depth
        self.conditional = enc_depth > 0
        self.embed_scale = math.sqrt(dim)  # fairseq: embed_scale = sqrt(embed_dim)
        self.embed = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.embed.weight, std=dim**-0.5)  # fairseq's Embedding init
        self.dec_pos = nn.Embedding(max_len, dim)
        nn.init.normal_(self.dec_pos.weight, std=dim**-0.5)
        self.drop = nn.Dropout(dropout)
        kw = dict(d_model=dim, nhead=heads, dim_feedforward=ffn_dim, dropout=dropout, activation=activation,
                  batch_first=True, norm_first=norm_first)
        if self.conditional:
            self.enc_pos = nn.Embedding(max_src_len, dim)
            nn.init.normal_(self.enc_pos.weight, std=dim**-0.5)
            self.encoder = nn.ModuleList([nn.TransformerEncoderLayer(**kw) for _ in range(enc_depth)])
            self.enc_norm = nn.LayerNorm(dim) if norm_first else nn.Identity()
            self.decoder = nn.ModuleList([nn.TransformerDecoderLayer(**kw) for _ in range(dec_depth)])
        else:  # decoder-only: self-attention layers run under the causal mask
            self.decoder = nn.ModuleList([nn.TransformerEncoderLayer(**kw) for _ in range(dec_depth)])
        self.dec_norm = nn.LayerNorm(dim) if norm_first else nn.Identity()
        self.out_proj = None if tie_embeddings else nn.Linear(dim, vocab_size, bias=False)

    def _embed(self, ids: Tensor, pos: nn.Embedding, limit: int, what: str) -> Tensor:
        if ids.shape[1] > limit:
            raise ValueError(f"{what} length {ids.shape[1]} exceeds the network's {limit} positions")
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.drop(self.embed_scale * self.embed(ids) + pos(positions).unsqueeze(0))

    def encode(self, src_ids: Tensor, src_mask: Optional[Tensor] = None) -> Tensor:
        """Encode a source.

        Args:
            src_ids: (B, S) long source tokens.
            src_mask: (B, S) bool, True on real tokens (padding is not attended to); None = all real.

        Returns:
            memory (B, S, dim). Rows at padded positions are meaningless (they are masked later).
        """
        if not self.conditional:
            raise ValueError("this ARTransformer has enc_depth=0 (a language model): it has no encoder")
        h = self._embed(src_ids, self.enc_pos, self.max_src_len, "source")
        pad = ~src_mask.bool() if src_mask is not None else None
        for layer in self.encoder:
            h = layer(h, src_key_padding_mask=pad)
        return self.enc_norm(h)

    def decode(self, tgt_in: Tensor, memory: Optional[Tensor] = None, memory_mask: Optional[Tensor] = None,
               tgt_mask: Optional[Tensor] = None, last_only: bool = False) -> Tensor:
        """Next-token logits under a causal mask: position i sees tgt_in[:, :i+1] (and the memory).

        Args:
            tgt_in: (B, L) long decoder input (BOS first).
            memory: (B, S, dim) encoder output; required iff the network has an encoder.
            memory_mask: (B, S) bool, True on real source positions; None = all real.
            tgt_mask: (B, L) bool, True on real target tokens (a key-padding mask). With right padding
                it changes nothing at real positions (they only see earlier, real, tokens).
            last_only: project only the last position to the vocabulary (decoding needs no more).

        Returns:
            logits (B, L, V): row i is the distribution of token i + 1; (B, 1, V) with ``last_only``.
        """
        if self.conditional and memory is None:
            raise ValueError("this ARTransformer has an encoder: decode() needs `memory` (from encode())")
        if not self.conditional and memory is not None:
            raise ValueError("this ARTransformer is a language model (enc_depth=0): decode() takes no memory")
        h = self._embed(tgt_in, self.dec_pos, self.max_len, "target")
        causal = causal_mask(tgt_in.shape[1], tgt_in.device)
        pad = ~tgt_mask.bool() if tgt_mask is not None else None
        if self.conditional:
            mpad = ~memory_mask.bool() if memory_mask is not None else None
            for layer in self.decoder:
                h = layer(h, memory, tgt_mask=causal, tgt_key_padding_mask=pad, memory_key_padding_mask=mpad,
                          tgt_is_causal=True)
        else:
            for layer in self.decoder:
                h = layer(h, src_mask=causal, src_key_padding_mask=pad, is_causal=True)
        h = self.dec_norm(h[:, -1:] if last_only else h)
        return self.out_proj(h) if self.out_proj is not None else F.linear(h, self.embed.weight)

    def forward(self, tgt_in: Tensor, src_ids: Optional[Tensor] = None, src_mask: Optional[Tensor] = None,
                tgt_mask: Optional[Tensor] = None) -> Tensor:
        """``decode(tgt_in, encode(src_ids, src_mask), src_mask, tgt_mask)`` (no source for an LM).
        (B, L) [+ (B, S)] -> logits (B, L, V)."""
        if self.conditional:
            if src_ids is None:
                raise ValueError("this ARTransformer has an encoder: forward() needs `src_ids`")
            return self.decode(tgt_in, self.encode(src_ids, src_mask), src_mask, tgt_mask)
        if src_ids is not None:
            raise ValueError("this ARTransformer is a language model (enc_depth=0): it takes no source")
        return self.decode(tgt_in, tgt_mask=tgt_mask)
