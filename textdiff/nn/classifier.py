"""A small Transformer text classifier (token ids -> class logits).

Used to measure the class accuracy of generated text (LD4LG's class-conditional generation and the
controllable-generation evaluation): it is trained on clean text by ``textdiff.families.TextClassifier``.
Token embedding plus learned positions, pre-LN ``nn.TransformerEncoder`` (GELU), mean over the real
tokens, LayerNorm, linear head.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from textdiff.nn.layers import TimeEmbedding, masked_mean_pool


def pre_ln_encoder(dim: int, heads: int, ffn_mult: int, dropout: float, depth: int) -> nn.TransformerEncoder:
    """``depth`` pre-LN ``nn.TransformerEncoderLayer`` (GELU, FFN ``ffn_mult * dim``, batch first): (B, L, dim)."""
    layer = nn.TransformerEncoderLayer(int(dim), int(heads), int(ffn_mult) * int(dim), dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, int(depth), enable_nested_tensor=False)


class TransformerClassifier(nn.Module):
    """Bidirectional Transformer encoder with masked mean pooling and a linear class head.

    Args:
        vocab_size: number of tokens V.
        num_classes: number of classes C (>= 1; training needs >= 2).
        dim: model width D.
        depth: encoder layers.
        heads: attention heads (must divide ``dim``).
        ffn_mult: feed-forward width = ``ffn_mult * dim``.
        max_len: positions L_max (the longest input, BOS/EOS included).
        dropout: dropout on the embeddings and inside the layers.
        pad_id: the padding token (its embedding row starts at zero and gets no gradient).
    """

    def __init__(self, vocab_size: int, num_classes: int, dim: int = 128, depth: int = 2, heads: int = 4,
                 ffn_mult: int = 4, max_len: int = 64, dropout: float = 0.1, pad_id: int = 0) -> None:
        super().__init__()
        if int(num_classes) < 1:  # 1 is allowed so that configs build on tiny data subsets; fit needs 2
            raise ValueError(f"num_classes={num_classes}: a classifier needs classes (is the data config's "
                             "label_field set? data.num_classes is 0 without labels)")
        if int(vocab_size) < 1 or int(max_len) < 1 or int(depth) < 1:
            raise ValueError(f"vocab_size, max_len and depth must be >= 1, got {vocab_size}, {max_len}, {depth}")
        if int(dim) % int(heads):
            raise ValueError(f"heads={heads} must divide dim={dim}")
        self.vocab_size, self.num_classes = int(vocab_size), int(num_classes)
        self.dim, self.max_len, self.pad_id = int(dim), int(max_len), int(pad_id)
        self.embed = nn.Embedding(self.vocab_size, self.dim, padding_idx=self.pad_id)
        self.pos = nn.Embedding(self.max_len, self.dim)
        self.drop = nn.Dropout(dropout)
        self.encoder = pre_ln_encoder(self.dim, heads, ffn_mult, dropout, depth)
        self.norm = nn.LayerNorm(self.dim)
        self.head = nn.Linear(self.dim, self.num_classes)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)
        with torch.no_grad():
            self.embed.weight[self.pad_id].zero_()

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Class logits.

        Args:
            ids: (B, L) long token ids, L <= ``max_len``.
            mask: (B, L) bool, True on real tokens (BOS/EOS included), False on padding; every row
                needs at least one True.

        Returns:
            (B, C) float logits.
        """
        if ids.dim() != 2 or mask.shape != ids.shape:
            raise ValueError(f"ids and mask must both be (B, L), got {tuple(ids.shape)} and {tuple(mask.shape)}")
        L = ids.shape[1]
        if L > self.max_len:
            raise ValueError(f"sequence length {L} exceeds the classifier's max_len={self.max_len}")
        mask = mask.bool()
        positions = torch.arange(L, device=ids.device)
        h = self.drop(self.embed(ids) + self.pos(positions)[None])  # (B, L, D)
        h = self.encoder(h, src_key_padding_mask=~mask)  # (B, L, D)
        return self.head(self.norm(masked_mean_pool(h, mask)))  # (B, C)


class LatentClassifier(nn.Module):
    """A classifier of noisy diffusion latents x_t at time t (Diffusion-LM's attribute classifier for
    plug-and-play control): Linear(d -> dim) + learned positions + a time embedding added to every
    position, a pre-LN Transformer encoder, the mean over all positions (PAD is a token of the sequence,
    as in Diffusion-LM's fixed-length samples), LayerNorm, linear head.

    Args:
        in_dim: latent width d (the diffusion model's embedding dim).
        num_classes: C. vocab_size: the diffusion model's V (recorded, for the family's checks).
        dim, depth, heads, ffn_mult, dropout: the encoder. max_len: positions L_max.
    """

    def __init__(self, in_dim: int, num_classes: int, vocab_size: int, dim: int = 128, depth: int = 2,
                 heads: int = 4, ffn_mult: int = 4, max_len: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        if int(num_classes) < 1 or int(dim) % int(heads):
            raise ValueError(f"need num_classes >= 1 and heads | dim; got {num_classes}, heads={heads}, dim={dim}")
        self.in_dim, self.num_classes, self.vocab_size = int(in_dim), int(num_classes), int(vocab_size)
        self.dim, self.max_len = int(dim), int(max_len)
        self.proj = nn.Linear(self.in_dim, self.dim)
        self.pos = nn.Embedding(self.max_len, self.dim)
        self.time = TimeEmbedding(self.dim)
        self.drop = nn.Dropout(dropout)
        self.encoder = pre_ln_encoder(self.dim, heads, ffn_mult, dropout, depth)
        self.norm = nn.LayerNorm(self.dim)
        self.head = nn.Linear(self.dim, self.num_classes)

    def forward(self, x: Tensor, time: Tensor) -> Tensor:
        """Class logits (B, C) of latents ``x`` (B, L, d) at network time ``time`` (B,) (the diffusion
        model's ``time_input(t)``)."""
        if x.dim() != 3 or x.shape[-1] != self.in_dim:
            raise ValueError(f"x must be (B, L, {self.in_dim}), got {tuple(x.shape)}")
        L = x.shape[1]
        if L > self.max_len:
            raise ValueError(f"sequence length {L} exceeds the classifier's max_len={self.max_len}")
        positions = torch.arange(L, device=x.device)
        h = self.proj(x) + self.pos(positions)[None] + self.time(time)[:, None]  # (B, L, dim)
        h = self.encoder(self.drop(h))
        return self.head(self.norm(h.mean(1)))  # (B, C)
