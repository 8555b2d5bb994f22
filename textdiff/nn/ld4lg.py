"""LD4LG's three networks (Lovelace et al. 2023; ALGORITHMS.md §3; official ``latent_models/perceiver_ae.py``,
``model/diffusion_transformer.py``, ``model/x_transformer.py``).

- ``PerceiverCompressor``: frozen-encoder features (B, S, dim_in) -> (B, 32, 64) latents (Perceiver resampler with
  Flamingo-style keys/values [features; latents], QK-RMSNorm, final LN, optional L2 norm sqrt(64)).
- ``LatentReconstructor``: latents -> (B, 32, dim_out) "encoder memory" for the frozen decoder (pre-LN Transformer).
- ``LatentDenoiser``: the 12x768 pre-LN diffusion Transformer (GeGLU FF, time scale-shift, dense U-ViT skips,
  learned self-conditioning null, class embedding, cross-attention with a learned null context).

Learned absolute positions follow x-transformers' ``AbsolutePositionalEmbedding``: an N(0, 1) table times dim^-1/2.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textdiff.nn.layers import timestep_embedding


def _split_heads(t: Tensor, heads: int) -> Tensor:
    return t.unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, L, H*Dh) -> (B, H, L, Dh)


def _attend(q: Tensor, k: Tensor, v: Tensor, heads: int, key_mask: Optional[Tensor] = None, dropout: float = 0.0,
            q_norm: Optional[nn.Module] = None, k_norm: Optional[nn.Module] = None) -> Tensor:
    """Multi-head softmax(q k^T / sqrt(Dh)) v. q (B, Lq, H*Dh), k/v (B, Lk, H*Dh), key_mask (B, Lk) bool True =
    visible. Optional per-head norms on q and k (QK-RMSNorm). Returns (B, Lq, H*Dh)."""
    q, k, v = (_split_heads(t, heads) for t in (q, k, v))
    if q_norm is not None:
        q, k = q_norm(q), k_norm(k)
    mask = key_mask[:, None, None, :] if key_mask is not None else None
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    return out.transpose(1, 2).flatten(2)


def _abs_pos(table: nn.Embedding, n: int) -> Tensor:
    """First n rows of a learned position table, scaled by dim^-1/2 (x-transformers). Returns (n, dim)."""
    return table.weight[:n] * table.embedding_dim ** -0.5


def _mlp(dim: int, mult: int, dropout: float = 0.0) -> nn.Sequential:
    """Pre-LN feed-forward of the autoencoder: LN -> Linear(dim, mult dim) -> GELU -> Dropout -> Linear(back)."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, mult * dim), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(mult * dim, dim))


class _PerceiverAttention(nn.Module):
    """Latents (B, N, latent_dim) attend to [features; latents] (official ``PerceiverAttention``)."""

    def __init__(self, dim_in: int, latent_dim: int, dim_head: int) -> None:
        super().__init__()
        inner = max(latent_dim, dim_in)
        if inner % dim_head:
            raise ValueError(f"inner width max(latent_dim, dim_in)={inner} must be divisible by dim_head={dim_head}")
        self.heads = inner // dim_head
        self.norm, self.norm_latents = nn.LayerNorm(dim_in), nn.LayerNorm(latent_dim)
        # QK-RMSNorm over each head with a learned gain (official RMSNorm clamps |x| instead of adding eps)
        self.q_norm, self.k_norm = nn.RMSNorm(dim_head, eps=1e-8), nn.RMSNorm(dim_head, eps=1e-8)
        self.to_q = nn.Linear(latent_dim, inner, bias=False)
        self.to_kv = nn.Linear(dim_in, 2 * inner, bias=False)
        # the official code reuses to_kv for the latents when the widths agree
        self.latent_to_kv = nn.Linear(latent_dim, 2 * inner, bias=False) if latent_dim != dim_in else None
        self.to_out = nn.Linear(inner, latent_dim)  # official: with bias

    def forward(self, x: Tensor, latents: Tensor, mask: Optional[Tensor]) -> Tensor:
        """x (B, S, dim_in), latents (B, N, latent_dim), mask (B, S) bool or None -> (B, N, latent_dim)."""
        x, latents = self.norm(x), self.norm_latents(latents)
        latent_kv = (self.latent_to_kv if self.latent_to_kv is not None else self.to_kv)(latents)
        k, v = torch.cat([self.to_kv(x), latent_kv], dim=1).chunk(2, dim=-1)  # Flamingo: keys over [x; latents]
        if mask is not None:  # latent keys are always visible
            mask = F.pad(mask.bool(), (0, latents.shape[1]), value=True)
        out = _attend(self.to_q(latents), k, v, self.heads, mask, q_norm=self.q_norm, k_norm=self.k_norm)
        return self.to_out(out)


class PerceiverCompressor(nn.Module):
    """LD4LG's compression network: encoder features (B, S, dim_in) -> latents (B, num_latents, latent_dim).

    Learned queries (N(0, 0.02)) read the features (+ learned absolute positions) through ``depth`` blocks of
    residual Perceiver attention (keys/values from [features; latents], QK-RMSNorm, source padding masked) and a
    pre-LN GELU feed-forward; then a final LayerNorm and, with ``l2_normalize``, each latent vector is rescaled to
    L2 norm sqrt(latent_dim) (``--l2_normalize_latent``).

    Args:
        dim_in: encoder width (BART-base 768).
        num_latents: number of latent vectors N (32).
        latent_dim: width of each latent (64); kept throughout (the code has no separate down-projection).
        depth: number of attention + feed-forward blocks (3).
        dim_head: attention head width; heads = max(latent_dim, dim_in) // dim_head.
        ff_mult: feed-forward expansion (4).
        max_seq_len: maximum source length S (learned positions, 64).
        l2_normalize: rescale each output vector to norm sqrt(latent_dim).
    """

    def __init__(self, dim_in: int, num_latents: int = 32, latent_dim: int = 64, depth: int = 3, dim_head: int = 64,
                 ff_mult: int = 4, max_seq_len: int = 64, l2_normalize: bool = True) -> None:
        super().__init__()
        self.dim_in, self.num_latents, self.latent_dim = dim_in, num_latents, latent_dim
        self.max_seq_len, self.l2_normalize = max_seq_len, l2_normalize
        self.pos = nn.Embedding(max_seq_len, dim_in)
        self.latents = nn.Parameter(torch.randn(num_latents, latent_dim) * 0.02)
        self.layers = nn.ModuleList(
            nn.ModuleList([_PerceiverAttention(dim_in, latent_dim, dim_head), _mlp(latent_dim, ff_mult)])
            for _ in range(depth)
        )
        self.final_norm = nn.LayerNorm(latent_dim)

    def forward(self, feats: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Compress.

        Args:
            feats: (B, S, dim_in) encoder hidden states.
            mask: (B, S) bool, True on real tokens; None = all real.

        Returns:
            (B, num_latents, latent_dim).
        """
        B, S, _ = feats.shape
        if S > self.max_seq_len:
            raise ValueError(f"source length {S} exceeds the compressor's max_seq_len={self.max_seq_len}")
        x = feats + _abs_pos(self.pos, S)
        latents = self.latents.expand(B, -1, -1)
        for attn, ff in self.layers:
            latents = attn(x, latents, mask) + latents
            latents = ff(latents) + latents
        latents = self.final_norm(latents)
        if self.l2_normalize:  # official: F.normalize(latents) * sqrt(d_latent)
            latents = F.normalize(latents, dim=-1) * self.latent_dim ** 0.5
        return latents


class _QKNormSelfAttention(nn.Module):
    """Pre-LN self-attention with QK-RMSNorm (official ``perceiver_ae.Attention``). (B, N, dim) -> (B, N, dim)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm = nn.LayerNorm(dim)
        self.q_norm, self.k_norm = nn.RMSNorm(dim // heads, eps=1e-8), nn.RMSNorm(dim // heads, eps=1e-8)
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=-1)
        drop = self.dropout if self.training else 0.0
        return self.to_out(_attend(q, k, v, self.heads, dropout=drop, q_norm=self.q_norm, k_norm=self.k_norm))


class LatentReconstructor(nn.Module):
    """LD4LG's reconstruction network: latents (B, N, latent_dim) -> (B, N, dim_out) decoder memory.

    Linear(latent_dim, dim_out) + learned positions, ``depth`` pre-LN blocks of residual QK-RMSNorm self-attention
    and GELU feed-forward, final LayerNorm (official ``perceiver_ae.Transformer``, ``--transformer_decoder``). The
    frozen BART decoder cross-attends to the output (all positions visible).

    Args:
        latent_dim: latent width (64).
        dim_out: decoder width (BART-base 768).
        num_latents: maximum number of latents N (learned positions, 32).
        depth: number of blocks (3).
        heads: attention heads (head width dim_out // heads = 64).
        ff_mult: feed-forward expansion (4).
        dropout: dropout on attention weights and the feed-forward hidden layer (official: none).
    """

    def __init__(self, latent_dim: int = 64, dim_out: int = 768, num_latents: int = 32, depth: int = 3,
                 heads: int = 12, ff_mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        if dim_out % heads:
            raise ValueError(f"dim_out ({dim_out}) must be divisible by heads ({heads})")
        self.latent_dim, self.dim_out, self.num_latents = latent_dim, dim_out, num_latents
        self.input_proj = nn.Linear(latent_dim, dim_out)
        self.pos = nn.Embedding(num_latents, dim_out)
        self.layers = nn.ModuleList(
            nn.ModuleList([_QKNormSelfAttention(dim_out, heads, dropout), _mlp(dim_out, ff_mult, dropout)])
            for _ in range(depth)
        )
        self.final_norm = nn.LayerNorm(dim_out)

    def forward(self, z: Tensor) -> Tensor:
        """Reconstruct. z: (B, N, latent_dim) -> (B, N, dim_out)."""
        N = z.shape[1]
        if N > self.num_latents:
            raise ValueError(f"{N} latents exceed the reconstructor's num_latents={self.num_latents}")
        h = self.input_proj(z) + _abs_pos(self.pos, N)
        for attn, ff in self.layers:
            h = attn(h) + h
            h = ff(h) + h
        return self.final_norm(h)


class _Attention(nn.Module):
    """Bias-free multi-head attention (x-transformers ``Attention``); dropout on the attention weights."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, context: Tensor, key_mask: Optional[Tensor]) -> Tensor:
        """x (B, N, dim) attends to context (B, M, dim) with key_mask (B, M) -> (B, N, dim)."""
        drop = self.dropout if self.training else 0.0
        out = _attend(self.to_q(x), self.to_k(context), self.to_v(context), self.heads, key_mask, drop)
        return self.to_out(out)


class _GeGLU(nn.Module):
    """Linear(dim, 2 * hidden) -> value * GELU(gate) -> Dropout -> Linear(hidden, dim) (x-transformers ff_glu)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.proj_in, self.drop, self.proj_out = nn.Linear(dim, 2 * hidden), nn.Dropout(dropout), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(self.drop(value * F.gelu(gate)))


class _DenoiserLayer(nn.Module):
    """Pre-LN self-attention, [pre-LN cross-attention], pre-LN GeGLU FF with optional time scale-shift."""

    def __init__(self, dim: int, heads: int, dropout: float, cross: bool, time_dim: Optional[int]) -> None:
        super().__init__()
        self.attn_norm, self.attn = nn.LayerNorm(dim), _Attention(dim, heads, dropout)
        self.cross_norm = nn.LayerNorm(dim) if cross else None
        self.cross = _Attention(dim, heads, dropout) if cross else None
        self.ff_norm, self.ff = nn.LayerNorm(dim), _GeGLU(dim, 4 * dim, dropout)
        self.scale_shift = None
        if time_dim is not None:  # x-transformers TimeConditionedResidual: post-branch LN, x (1 + s) + b, zero-init
            self.post_ff_norm = nn.LayerNorm(dim)
            self.scale_shift = nn.Sequential(nn.GELU(), nn.Linear(time_dim, 2 * dim))
            nn.init.zeros_(self.scale_shift[1].weight)
            nn.init.zeros_(self.scale_shift[1].bias)

    def forward(self, h: Tensor, time_emb: Tensor, mask: Optional[Tensor], context: Optional[Tensor],
                context_mask: Optional[Tensor]) -> Tensor:
        """h (B, N, dim), time_emb (B, time_dim), masks (B, N) / (B, M) bool, context (B, M, dim) -> (B, N, dim)."""
        x = self.attn_norm(h)
        h = h + self.attn(x, x, mask)
        if self.cross is not None:
            h = h + self.cross(self.cross_norm(h), context, context_mask)
        out = self.ff(self.ff_norm(h))
        if self.scale_shift is not None:
            scale, shift = self.scale_shift(time_emb).unsqueeze(1).chunk(2, dim=-1)
            out = self.post_ff_norm(out) * (1 + scale) + shift
        return h + out


class LatentDenoiser(nn.Module):
    """LD4LG's diffusion Transformer: noisy latents (B, N, latent_dim) + time (B,) -> (B, N, latent_dim).

    time_emb = MLP(sinusoid(time, dim)) (B, 4 dim) [+ class embedding]; input = input_proj([x; self_cond]) + learned
    positions + Linear(GELU(time_emb)); ``depth`` pre-LN layers (self-attention, optional cross-attention to a
    projected context, GeGLU FF whose output is LayerNorm-ed and time-modulated x (1 + s) + b with ``scale_shift``);
    dense U-ViT skips from the first ``num_skips`` layer outputs into the inputs of the last ``num_skips`` layers via
    Linear(2 dim, dim); final LayerNorm; zero-initialised output projection (a fresh net outputs exactly 0).

    Args:
        latent_dim: width of the diffused latents (64).
        dim: model width (768).
        depth: number of layers (12).
        heads: attention heads (12; head width dim // heads).
        max_len: maximum number of latents N (learned positions, 32).
        dropout: dropout on attention weights and in the feed-forward (0.1).
        self_condition: input [x; self_cond]; a learned null vector (N(0, 0.02)) stands in when self_cond is None.
        num_classes: C > 0 adds Embedding(C + 1, dim) -> Linear(dim, 4 dim) to the time embedding; id C = null class.
        context_dim: width of a conditioning sequence (seq2seq: BART encoder, 768); adds cross-attention.
        num_skips: dense skip connections (default depth // 4; needs 2 num_skips <= depth).
        scale_shift: time scale-shift of every feed-forward output (``--scale_shift``).
    """

    def __init__(self, latent_dim: int = 64, dim: int = 768, depth: int = 12, heads: int = 12, max_len: int = 32,
                 dropout: float = 0.1, self_condition: bool = True, num_classes: int = 0,
                 context_dim: Optional[int] = None, num_skips: Optional[int] = None, scale_shift: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        num_skips = depth // 4 if num_skips is None else num_skips
        if num_skips < 0 or 2 * num_skips > depth:
            raise ValueError(f"num_skips={num_skips} needs 0 <= 2 * num_skips <= depth={depth}")
        self.latent_dim, self.dim, self.max_len = latent_dim, dim, max_len
        self.num_classes, self.self_condition, self.context_dim = num_classes, self_condition, context_dim
        self.num_skips = num_skips
        time_dim = 4 * dim
        self.time_mlp = nn.Sequential(nn.Linear(dim, time_dim), nn.GELU(), nn.Linear(time_dim, time_dim))
        self.time_to_input = nn.Sequential(nn.GELU(), nn.Linear(time_dim, dim))  # official time_pos_embed_mlp
        self.class_emb = (nn.Sequential(nn.Embedding(num_classes + 1, dim), nn.Linear(dim, time_dim))
                          if num_classes > 0 else None)
        self.null_self_cond = nn.Parameter(torch.randn(latent_dim) * 0.02) if self_condition else None
        self.input_proj = nn.Linear(2 * latent_dim if self_condition else latent_dim, dim)
        self.pos = nn.Embedding(max_len, dim)
        if context_dim is not None:
            self.context_proj = nn.Linear(context_dim, dim)
            # official null_embedding_seq2seq: nn.Embedding(1, dim) (N(0, 1)), used in place of the projected context
            self.null_context = nn.Parameter(torch.randn(1, dim))
        self.layers = nn.ModuleList(
            _DenoiserLayer(dim, heads, dropout, context_dim is not None, time_dim if scale_shift else None)
            for _ in range(depth)
        )
        self.skip_projs = nn.ModuleList(nn.Linear(2 * dim, dim) for _ in range(num_skips))
        self.norm = nn.LayerNorm(dim)
        self.output_proj = nn.Linear(dim, latent_dim)
        nn.init.zeros_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        x: Tensor,
        time: Tensor,
        *,
        mask: Optional[Tensor] = None,
        self_cond: Optional[Tensor] = None,
        class_ids: Optional[Tensor] = None,
        context: Optional[Tensor] = None,
        context_mask: Optional[Tensor] = None,
        drop_context: Optional[Tensor] = None,
    ) -> Tensor:
        """Denoise.

        Args:
            x: (B, N, latent_dim) noisy latents z_t.
            time: (B,) already-scaled time input (LD4LG conditions on alpha: the family passes 1000 alpha).
            mask: (B, N) bool, True on real positions (padded keys are not attended to); None = all real.
            self_cond: (B, N, latent_dim) previous x0 estimate, or None for the learned null vector.
            class_ids: (B,) long in [0, num_classes] (num_classes = null class); None = null class for every row.
            context: (B, M, context_dim) conditioning sequence (required iff built with context_dim).
            context_mask: (B, M) bool, True on real context positions; None = all real.
            drop_context: (B,) bool; rows where True attend only to the learned null context token.

        Returns:
            (B, N, latent_dim).
        """
        B, N, _ = x.shape
        if N > self.max_len:
            raise ValueError(f"{N} latents exceed the denoiser's max_len={self.max_len}")
        time_emb = self.time_mlp(timestep_embedding(time, self.dim))  # official: time_mlp(1000 alpha)
        if self.class_emb is not None:
            if class_ids is None:
                class_ids = torch.full((B,), self.num_classes, dtype=torch.long, device=x.device)
            elif bool(((class_ids < 0) | (class_ids > self.num_classes)).any()):
                raise ValueError(f"class ids must lie in [0, {self.num_classes}] (num_classes = null class)")
            time_emb = time_emb + self.class_emb(class_ids)
        elif class_ids is not None:
            raise ValueError("class_ids given to a denoiser built with num_classes=0")

        if self.self_condition:
            x = torch.cat([x, self_cond if self_cond is not None else self.null_self_cond.expand(B, N, -1)], dim=-1)
        elif self_cond is not None:
            raise ValueError("self_cond given to a denoiser built with self_condition=False")
        h = self.input_proj(x) + _abs_pos(self.pos, N) + self.time_to_input(time_emb).unsqueeze(1)

        if (context is None) != (self.context_dim is None):
            raise ValueError("`context` is required iff the denoiser was built with context_dim "
                             f"(context_dim={self.context_dim}, context given: {context is not None})")
        if drop_context is not None and context is None:
            raise ValueError("drop_context needs a denoiser built with context_dim and a `context`")
        if context is not None:
            context = self.context_proj(context)
            context_mask = (torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
                            if context_mask is None else context_mask.bool())
            if drop_context is not None:  # prepend the null token; dropped rows see only it
                drop = drop_context.bool().unsqueeze(1)
                context = torch.cat([self.null_context.expand(B, 1, -1), context], dim=1)
                context_mask = torch.cat([drop, context_mask & ~drop], dim=1)

        key_mask = mask.bool() if mask is not None else None
        skips = []
        first_skip_in = len(self.layers) - self.num_skips
        for i, layer in enumerate(self.layers):
            if i >= first_skip_in:  # U-ViT dense skip: the last stored hidden state is used first
                h = self.skip_projs[i - first_skip_in](torch.cat([h, skips.pop()], dim=-1))
            h = layer(h, time_emb, key_mask, context, context_mask)
            if i < self.num_skips:
                skips.append(h)
        return self.output_proj(self.norm(h))
