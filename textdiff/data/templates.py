"""Infilling templates: text with blanks (``_`` by default), one blank per position to generate."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from textdiff.data.sources import DataError


def encode_templates(templates: Sequence[str], tokenizer, length: int, blank: str = "_",
                     add_bos_eos: bool = True) -> tuple[Tensor, Tensor]:
    """Encode infilling templates for a model that generates ``length`` positions.

    Each template is split on whitespace; a piece equal to ``blank`` is one position to generate, any
    other piece is encoded with ``tokenizer`` (one or more fixed tokens). The sequence is framed with
    BOS/EOS (``add_bos_eos``, as in training) and padded with PAD to ``length``; BOS, EOS and PAD are
    fixed too. Returns ``context`` (N, length) long (PAD at the blanks) and ``fill`` (N, length) bool
    (True at the blanks). A template longer than ``length`` or without a blank raises DataError naming it.
    """
    rows, fills = [], []
    for i, text in enumerate(templates):
        ids, fill = [], []
        for piece in text.split():
            if piece == blank:
                ids.append(tokenizer.pad_id)
                fill.append(True)
            else:
                enc = tokenizer.encode(piece)
                ids.extend(enc)
                fill.extend([False] * len(enc))
        if add_bos_eos:
            ids, fill = [tokenizer.bos_id, *ids, tokenizer.eos_id], [False, *fill, False]
        if not any(fill):
            raise DataError(f"infilling template {i} ({text!r}) has no blank {blank!r} to fill")
        if len(ids) > length:
            raise DataError(f"infilling template {i} ({text!r}) needs {len(ids)} positions; the model makes {length}")
        pad = length - len(ids)
        rows.append(ids + [tokenizer.pad_id] * pad)
        fills.append(fill + [False] * pad)
    return torch.tensor(rows, dtype=torch.long), torch.tensor(fills, dtype=torch.bool)
