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

Incremental decoding (eval mode): ``start_cache`` builds a ``DecodeCache`` (per decoder layer, the
self-attention keys/values of the positions decoded so far, and for an encoder-decoder the cross-attention
keys/values of the memory, computed once), and ``decode_step`` feeds one token per row and returns the
next-token logits, appending that position's keys/values: a sequence of length L then costs L single-position
passes instead of L passes over prefixes of length 1..L. It runs the layers' math with the layers' own
weights (no new parameters: checkpoints load as before) and matches ``decode`` of the whole prefix up to
float rounding.
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


class DecodeCache:
    """Keys and values for incremental decoding with ``ARTransformer.decode_step`` (made by ``start_cache``).

    N decoder rows. Per decoder layer: the self-attention keys and values of the ``length`` positions decoded
    so far (``keys(i)`` / ``values(i)``, each (N, H, length, dim / H): views of position-major buffers
    (max_len, N, H, dim / H) allocated at the first step and written in place, so that a step copies no old
    position and the filled part is contiguous for ``reorder``), and for an encoder-decoder the
    cross-attention keys and values of the memory, each (N / beams, H, S, dim / H), computed once in
    ``start_cache``, with the memory's padding mask (N / beams, 1, 1, S) bool, True on real positions (None =
    all real). With ``beams`` > 1, rows b * beams .. b * beams + beams - 1 share memory row b (the beams of
    one source in beam search): the memory's keys/values are stored once per source, not once per beam.

    Attributes:
        cross_keys, cross_values: per layer, the memory's keys/values (empty lists for a language model).
        memory_mask: (N / beams, 1, 1, S) bool or None.
        rows: N. beams: decoder rows per memory row. length: positions decoded so far.
        max_len: positions the cache holds at most (<= the network's ``max_len``).
    """

    def __init__(self, rows: int, beams: int, max_len: int, num_layers: int,
                 cross_keys: Optional[list[Tensor]] = None, cross_values: Optional[list[Tensor]] = None,
                 memory_mask: Optional[Tensor] = None) -> None:
        self.rows, self.beams, self.max_len, self.length = int(rows), int(beams), int(max_len), 0
        self.num_layers = int(num_layers)
        self._keys: list[Optional[Tensor]] = [None] * self.num_layers  # (max_len, N, H, dim/H) buffers
        self._values: list[Optional[Tensor]] = [None] * self.num_layers
        self._spare: list[Optional[tuple[Tensor, Tensor]]] = [None] * self.num_layers  # reorder's targets
        self.cross_keys: list[Tensor] = cross_keys or []
        self.cross_values: list[Tensor] = cross_values or []
        self.memory_mask = memory_mask

    def keys(self, layer: int) -> Tensor:
        """Self-attention keys of decoder layer ``layer``: (N, H, length, dim / H) (a view; empty before the
        first step)."""
        k = self._keys[layer]
        return k[:self.length].permute(1, 2, 0, 3) if k is not None else torch.empty(self.rows, 0, 0, 0)

    def values(self, layer: int) -> Tensor:
        """Self-attention values of decoder layer ``layer``: (N, H, length, dim / H) (a view)."""
        v = self._values[layer]
        return v[:self.length].permute(1, 2, 0, 3) if v is not None else torch.empty(self.rows, 0, 0, 0)

    def append(self, layer: int, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Write the keys/values (N, H, 1, dim / H) of position ``length`` for decoder layer ``layer`` and return
        that layer's keys and values of positions 0..length, each (N, H, length + 1, dim / H) (views).
        ``decode_step`` calls it once per layer, then advances ``length``."""
        t = self.length
        if t >= self.max_len:
            raise ValueError(f"the cache is full ({self.max_len} positions)")
        N, H, _, dh = key.shape
        if self._keys[layer] is None:
            self._keys[layer] = key.new_empty(self.max_len, N, H, dh)
            self._values[layer] = value.new_empty(self.max_len, N, H, dh)
        k, v = self._keys[layer], self._values[layer]
        k[t] = key.view(N, H, dh)
        v[t] = value.view(N, H, dh)
        return k[:t + 1].permute(1, 2, 0, 3), v[:t + 1].permute(1, 2, 0, 3)

    def reorder(self, rows: Tensor) -> None:
        """Keep, in place, the decoder rows ``rows`` (R,) long, in that order (``index_select`` on the batch
        dimension): row i of the cache becomes old row ``rows[i]``; beam search calls it with the parent
        beam of each surviving hypothesis.

        With ``beams == 1`` any R and any rows may be taken (the memory's keys/values follow the rows).
        With ``beams > 1`` the memory's keys/values are shared by the beams of a source and stay as they
        are, so ``rows`` must have N entries and map every row to a row of the same source
        (rows[i] // beams == i // beams); a ValueError otherwise.
        """
        rows = rows.reshape(-1).long()
        same = rows.numel() == self.rows
        if self.beams > 1:
            own = torch.arange(self.rows, device=rows.device) // self.beams
            if not same or not torch.equal(rows.div(self.beams, rounding_mode="floor"), own):
                raise ValueError(f"reorder: with beams={self.beams}, rows must be {self.rows} indices that keep "
                                 "every row among the beams of its own source")
        elif self.cross_keys:
            self.cross_keys = [k.index_select(0, rows) for k in self.cross_keys]
            self.cross_values = [v.index_select(0, rows) for v in self.cross_values]
            if self.memory_mask is not None:
                self.memory_mask = self.memory_mask.index_select(0, rows)
        t = self.length
        for i in range(self.num_layers):
            k, v = self._keys[i], self._values[i]
            if k is None or v is None:
                continue
            spare = self._spare[i] if same else None
            if spare is None:  # a second pair of buffers: reordering copies the filled positions once
                spare = (k.new_empty(k.shape[0], rows.numel(), *k.shape[2:]),
                         v.new_empty(v.shape[0], rows.numel(), *v.shape[2:]))
            torch.index_select(k[:t], 1, rows, out=spare[0][:t])
            torch.index_select(v[:t], 1, rows, out=spare[1][:t])
            self._keys[i], self._values[i] = spare
            self._spare[i] = (k, v) if same else None
        self.rows = int(rows.numel())


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

    # ----- incremental decoding (eval mode) -----
    def start_cache(self, memory: Optional[Tensor] = None, memory_mask: Optional[Tensor] = None, *,
                    batch: Optional[int] = None, beams: int = 1, max_len: Optional[int] = None) -> DecodeCache:
        """An empty ``DecodeCache`` for ``decode_step``, with the memory's cross-attention keys/values computed
        once (encoder-decoder).

        Args:
            memory: (B, S, dim) encoder output (``encode``); required iff the network has an encoder.
            memory_mask: (B, S) bool, True on real source positions (padding is not attended to); None = all real.
            batch: decoder rows N for a language model (no memory); with a memory N = B * beams (if given,
                it must be that).
            beams: decoder rows per memory row (beam search: rows b * beams .. b * beams + beams - 1 decode
                source b); the memory's keys/values are then stored once per source, not per beam.
            max_len: positions to decode at most (default and upper bound: the network's ``max_len``).

        Returns:
            a ``DecodeCache`` of N rows at length 0.
        """
        if self.training:
            raise RuntimeError("incremental decoding (start_cache/decode_step) runs in eval mode (no dropout); "
                               "call .eval() first")
        if self.conditional and memory is None:
            raise ValueError("this ARTransformer has an encoder: start_cache() needs `memory` (from encode())")
        if not self.conditional and memory is not None:
            raise ValueError("this ARTransformer is a language model (enc_depth=0): start_cache() takes no memory")
        if int(beams) < 1:
            raise ValueError(f"beams must be >= 1, got {beams}")
        cap = self.max_len if max_len is None else int(max_len)
        if not 1 <= cap <= self.max_len:
            raise ValueError(f"max_len={max_len} must be in [1, {self.max_len}] (the network's positions)")
        if memory is None:
            if batch is None or int(batch) < 1:
                raise ValueError("a language model's start_cache() needs `batch`, the number of rows (>= 1)")
            return DecodeCache(int(batch), 1, cap, self.dec_depth)
        rows = memory.shape[0] * int(beams)
        if batch is not None and int(batch) != rows:
            raise ValueError(f"batch={batch} but the memory has {memory.shape[0]} rows x beams={beams} = {rows}")
        B, S, d = memory.shape
        H = self.decoder[0].multihead_attn.num_heads
        keys, values = [], []
        for layer in self.decoder:
            w, b = _split_in_proj(layer.multihead_attn)
            keys.append(F.linear(memory, w[1], b[1]).view(B, S, H, d // H).transpose(1, 2))
            values.append(F.linear(memory, w[2], b[2]).view(B, S, H, d // H).transpose(1, 2))
        mask = memory_mask.bool().view(B, 1, 1, S) if memory_mask is not None else None
        return DecodeCache(rows, int(beams), cap, self.dec_depth, keys, values, mask)

    def decode_step(self, tokens: Tensor, cache: DecodeCache) -> Tensor:
        """Feed one token per row at position ``cache.length`` and return the next-token logits; the
        position's self-attention keys/values are appended to ``cache`` (its ``length`` grows by one).

        After steps with tokens y_0 (BOS) .. y_t, the logits equal ``decode(y[:, :t+1], memory,
        memory_mask)[:, t]`` (eval mode) up to float rounding.

        Args:
            tokens: (N,) long, the token at position ``cache.length`` of every row.
            cache: from ``start_cache``, updated in place.

        Returns:
            logits (N, V) of the token at position ``cache.length`` + 1 (before the update).
        """
        if self.training:
            raise RuntimeError("incremental decoding (start_cache/decode_step) runs in eval mode (no dropout); "
                               "call .eval() first")
        tokens = tokens.reshape(-1)
        t, N = cache.length, tokens.shape[0]
        if N != cache.rows:
            raise ValueError(f"decode_step: {N} tokens for a cache of {cache.rows} rows")
        if t >= cache.max_len:
            raise ValueError(f"decode_step: the cache is full ({cache.max_len} positions)")
        if self.conditional != bool(cache.cross_keys):
            raise ValueError("decode_step: the cache was not made by this network's start_cache()")
        x = self.embed_scale * self.embed(tokens) + self.dec_pos.weight[t]  # (N, dim); dropout is off
        for i, layer in enumerate(self.decoder):
            x = self._layer_step(layer, x, cache, i)
        cache.length = t + 1
        h = self.dec_norm(x)
        return self.out_proj(h) if self.out_proj is not None else F.linear(h, self.embed.weight)

    def _layer_step(self, layer: nn.Module, x: Tensor, cache: DecodeCache, i: int) -> Tensor:
        """The new position (N, dim) through decoder layer ``i`` with that layer's own weights and the same math
        as its forward in eval mode (dropout off): a ``TransformerDecoderLayer`` (self-attention,
        cross-attention, FFN; norm1..3) or, in a language model, a ``TransformerEncoderLayer`` under the causal
        mask (self-attention, FFN; norm1, norm2); post-LN, or pre-LN with ``layer.norm_first``."""
        cross = self.conditional
        ff_norm = layer.norm3 if cross else layer.norm2
        if layer.norm_first:
            x = x + self._self_attend(layer.self_attn, layer.norm1(x), cache, i)
            if cross:
                x = x + self._cross_attend(layer.multihead_attn, layer.norm2(x), cache, i)
            return x + layer.linear2(layer.activation(layer.linear1(ff_norm(x))))
        x = layer.norm1(x + self._self_attend(layer.self_attn, x, cache, i))
        if cross:
            x = layer.norm2(x + self._cross_attend(layer.multihead_attn, x, cache, i))
        return ff_norm(x + layer.linear2(layer.activation(layer.linear1(x))))

    @staticmethod
    def _self_attend(attn: nn.MultiheadAttention, x: Tensor, cache: DecodeCache, i: int) -> Tensor:
        """Self-attention of the new position (N, dim) over the cached ones and itself; appends its keys/values."""
        N, d = x.shape
        H = attn.num_heads
        q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).view(N, 3, H, 1, d // H).unbind(1)
        k, v = cache.append(i, k, v)  # (N, H, t + 1, d/H)
        out = F.scaled_dot_product_attention(q.to(k.dtype), k, v)  # (N, H, 1, d/H)
        return attn.out_proj(out.reshape(N, d))

    @staticmethod
    def _cross_attend(attn: nn.MultiheadAttention, x: Tensor, cache: DecodeCache, i: int) -> Tensor:
        """Cross-attention of the new position (N, dim) over the memory; the beams of a source attend as one
        row of ``beams`` queries."""
        N, d = x.shape
        H, K = attn.num_heads, cache.beams
        w, b = _split_in_proj(attn)
        q = F.linear(x, w[0], b[0]).view(N // K, K, H, d // H).transpose(1, 2)  # (B, H, K, d/H)
        k, v = cache.cross_keys[i], cache.cross_values[i]
        out = F.scaled_dot_product_attention(q.to(k.dtype), k, v, attn_mask=cache.memory_mask)  # (B, H, K, d/H)
        return attn.out_proj(out.transpose(1, 2).reshape(N, d))

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


def _split_in_proj(attn: nn.MultiheadAttention) -> tuple[tuple[Tensor, ...], tuple[Optional[Tensor], ...]]:
    """The query, key and value projections of a MultiheadAttention: weights ((dim, dim),) * 3 and biases
    ((dim,) or None,) * 3 (views of its packed ``in_proj_weight`` / ``in_proj_bias``)."""
    w = attn.in_proj_weight.chunk(3, dim=0)
    b = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None, None, None)
    return w, b
