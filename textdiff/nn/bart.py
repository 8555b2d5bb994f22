"""BART for LD4LG: building it (hub name, local directory or config), its generation conventions,
and BART's own denoising corruption (text infilling) for training a small one from scratch.

Generation convention (the hub BART's, kept for our own): the decoder starts from
``decoder_start_token_id`` (EOS for BART) and produces ``BOS w EOS``; ``strip_decoder_start`` drops
that first column so rows read ``BOS w EOS PAD...`` like the DataModules' sequences.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Optional, Union

import torch
from torch import Tensor
from transformers import BartConfig, BartForConditionalGeneration

from textdiff.core.types import pad_sequences
from textdiff.nn.hf import build_hf_model

BartSpec = Union[str, "os.PathLike[str]", Mapping, BartConfig, BartForConditionalGeneration]


def build_bart(bart: BartSpec, vocab_size: Optional[int] = None, pad_id: Optional[int] = None,
               bos_id: Optional[int] = None, eos_id: Optional[int] = None) -> BartForConditionalGeneration:
    """A ``BartForConditionalGeneration`` from a hub name / local directory (``from_pretrained``), a
    mapping of ``BartConfig`` fields or a ``BartConfig`` (random init), or a model.

    For a config, the tokenizer's special ids are written into it (PAD, BOS, EOS; the decoder starts
    from EOS as in BART; no forced BOS/EOS), and ``vocab_size`` is set; a pre-trained model keeps its
    own config and ``vocab_size`` is checked against it.
    """
    overrides = {}
    if pad_id is not None:
        overrides.update(pad_token_id=pad_id)
    if bos_id is not None:
        overrides.update(bos_token_id=bos_id)
    if eos_id is not None:
        overrides.update(eos_token_id=eos_id, decoder_start_token_id=eos_id, forced_eos_token_id=None,
                         forced_bos_token_id=None)
    return build_hf_model(bart, BartForConditionalGeneration, BartConfig, vocab_size, overrides, what="BART")


def strip_decoder_start(generated: Tensor) -> Tensor:
    """Drop the decoder-start column of ``generate``'s output: (B, L + 1) -> (B, L)."""
    return generated[:, 1:]


def text_infilling(ids: Tensor, mask: Tensor, mask_id: int, pad_id: int, ratio: float = 0.3,
                   poisson_lambda: float = 3.0, generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """BART's text infilling (Lewis et al. 2020, §2.2): spans with lengths drawn from Poisson(lambda)
    are each replaced by a single mask token until ``ratio`` of each sequence's tokens are masked;
    a 0-length span inserts a mask token. The first and last real tokens (BOS, EOS) are kept.

    Args:
        ids: (B, L) long, ``BOS w EOS PAD...``; mask: (B, L) bool, True on real tokens.
        mask_id, pad_id: the tokenizer's mask and padding ids.
        ratio: share of the inner tokens to mask (BART: 0.3).
        poisson_lambda: mean span length (BART: 3).
        generator: RNG (seeds the corruption).

    Returns:
        The corrupted ids (B, L') padded with ``pad_id`` and their mask (B, L'), L' <= L + (number of
        0-length spans) (usually shorter than L: spans shrink to one token).
    """
    rows = []
    lengths = mask.sum(1).tolist()
    for row, n in zip(ids.tolist(), lengths):
        inner = row[1:n - 1]
        budget = int(math.ceil(ratio * len(inner))) if inner else 0
        out, i, masked = [], 0, 0
        # choose span starts left to right: each position starts a span with the probability that gives
        # ``budget`` masked tokens in expectation over the sequence, then masks a Poisson length
        start_p = budget / max(len(inner), 1) / max(poisson_lambda, 1.0)
        while i < len(inner):
            if masked < budget and float(torch.rand((), generator=generator)) < start_p:
                span = int(torch.poisson(torch.tensor(float(poisson_lambda)), generator=generator))
                span = min(span, budget - masked, len(inner) - i)
                out.append(mask_id)
                if span == 0:  # insertion: a mask token with nothing removed
                    out.append(inner[i])
                    i += 1
                    masked += 1  # count it, so insertions cannot loop forever
                    continue
                i += span
                masked += span
                continue
            out.append(inner[i])
            i += 1
        rows.append(row[:1] + out + row[n - 1:n])
    out_ids, out_mask = pad_sequences(rows, pad_id)
    return out_ids.to(ids.device), out_mask.to(ids.device)
