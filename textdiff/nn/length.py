"""Target-length prediction from the encoder (Difformer; fairseq NAT's ``forward_length``).

The source encoding is mean-pooled over real positions and mapped by a bias-free linear layer to
``num_classes`` classes. With ``offset=True`` (Difformer's ``--pred-length-offset``) class c means
target length = source length + c - num_classes // 2; otherwise class c is the length itself.
Lengths count every real token, BOS and EOS included.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from textdiff.nn.layers import masked_mean_pool


class LengthPredictor(nn.Module):
    """Classifies the target length from the encoder output.

    Args:
        dim: encoder width.
        num_classes: number of length classes (Difformer: 256).
        offset: predict target length minus source length (shifted by num_classes // 2).
        detach: stop the length loss's gradient into the encoder (fairseq ``--sg-length-pred``).
    """

    def __init__(self, dim: int, num_classes: int = 256, offset: bool = True, detach: bool = False) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes, self.offset, self.detach = int(num_classes), bool(offset), bool(detach)
        self.proj = nn.Linear(dim, num_classes, bias=False)  # fairseq's embed_length used as a linear map
        nn.init.normal_(self.proj.weight, std=0.02)

    def forward(self, memory: Tensor, src_mask: Optional[Tensor]) -> Tensor:
        """Length logits (B, num_classes) from ``memory`` (B, S, dim) and ``src_mask`` (B, S)."""
        pooled = masked_mean_pool(memory, src_mask)
        return self.proj(pooled.detach() if self.detach else pooled)

    def target(self, tgt_lengths: Tensor, src_lengths: Tensor) -> Tensor:
        """The class of each true length (B,) long, clamped to [0, num_classes - 1]."""
        shift = self.num_classes // 2
        cls = tgt_lengths - src_lengths + shift if self.offset else tgt_lengths
        return cls.long().clamp(0, self.num_classes - 1)

    def to_length(self, classes: Tensor, src_lengths: Tensor) -> Tensor:
        """Lengths for classes (same shape as ``classes``; ``src_lengths`` broadcasts), before clamping."""
        if not self.offset:
            return classes.long()
        return classes.long() - self.num_classes // 2 + src_lengths.long()

    def predict(self, logits: Tensor, src_lengths: Tensor, beam: int = 1, min_len: int = 2,
                max_len: Optional[int] = None) -> Tensor:
        """Candidate lengths (B, beam): the argmax length plus offsets -beam//2 .. beam - 1 - beam//2
        (Difformer's length beam), clamped to [min_len, max_len]."""
        best = self.to_length(logits.argmax(-1), src_lengths)  # (B,)
        offsets = torch.arange(beam, device=logits.device) - beam // 2
        lengths = best.unsqueeze(-1) + offsets
        return lengths.clamp(min=min_len, max=max_len) if max_len is not None else lengths.clamp(min=min_len)
