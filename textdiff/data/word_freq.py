"""Corpus statistics an absorbing model needs: token counts for DiffusionBERT's spindle schedule
(official ``word_freq.py``: counts over the training split under the model's tokenizer) and the
distribution of sequence lengths (to draw sample lengths).

Shapes: counts (V,) long; weights (V,) float in [0, 1]; length counts (L_max + 1,) long.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor

log = logging.getLogger(__name__)


def token_counts(seqs: Iterable[Sequence[int]], vocab_size: int) -> Tensor:
    """How often each id occurs in ``seqs`` (each a list of ids): (V,) long."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for seq in seqs:
        if len(seq):
            ids = torch.as_tensor(seq, dtype=torch.long)
            if int(ids.max()) >= vocab_size or int(ids.min()) < 0:
                raise ValueError(f"token id {int(ids.max())} out of range for a vocabulary of {vocab_size}")
            counts += torch.bincount(ids, minlength=vocab_size)
    return counts


def spindle_weights(counts: Tensor, zero_ids: Sequence[int] = ()) -> Tensor:
    """f = log(1 + count) / max log(1 + count) (DiffusionBERT ``word_freq.py``), with f = 0 for
    ``zero_ids`` (PAD, as the official code). (V,) long -> (V,) float32 in [0, 1]."""
    f = torch.log1p(counts.double())
    for i in zero_ids:
        f[i] = 0.0
    top = f.max()
    return (f / top if top > 0 else f).float()


def length_counts(seqs: Iterable[Sequence[int]], max_len: int, pad_id: Optional[int] = None) -> Tensor:
    """Histogram of sequence lengths (non-PAD tokens), (max_len + 1,) long."""
    hist = torch.zeros(max_len + 1, dtype=torch.long)
    for seq in seqs:
        n = sum(1 for i in seq if i != pad_id) if pad_id is not None else len(seq)
        hist[min(n, max_len)] += 1
    return hist


def cached_token_counts(seqs: Sequence[Sequence[int]], vocab_size: int,
                        cache: Optional[str | os.PathLike] = None) -> Tensor:
    """``token_counts`` read from / written to ``cache`` (a ``.pt`` file). The cache is reused only
    when its vocabulary size, number of sequences and number of tokens match ``seqs``; otherwise it
    is recomputed and overwritten (write-then-rename). (V,) long."""
    n_seq, n_tok = len(seqs), sum(len(s) for s in seqs)
    path = Path(cache) if cache else None
    if path is not None and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if (saved.get("vocab_size"), saved.get("num_sequences"), saved.get("num_tokens")) == (vocab_size, n_seq, n_tok):
            log.info("token counts read from %s", path)
            return saved["counts"]
        log.info("token counts in %s are for another corpus or tokenizer: recomputing", path)
    counts = token_counts(seqs, vocab_size)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")  # ranks may race: each its own
        torch.save({"counts": counts, "vocab_size": vocab_size, "num_sequences": n_seq, "num_tokens": n_tok}, tmp)
        os.replace(tmp, path)
        log.info("token counts of %d sequences (%d tokens) cached in %s", n_seq, n_tok, path)
    return counts
