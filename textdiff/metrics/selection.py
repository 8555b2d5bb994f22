"""Choosing one output among several candidates for the same input (Difformer's 2D parallel decoding,
DiffuSeq's and LD4LG's MBR).

- ``mbr_select``: minimum Bayes risk with sentence BLEU as the gain (Kumar & Byrne 2004): candidate
  i scores (1 / (n - 1)) sum_{j != i} BLEU(hypothesis c_j | reference c_i), candidate i as the *reference*
  of the others, as the official Difformer ``bleu_rerank`` (``generator.py``, ``--bleu-mbr``) writes
  ``sentence_bleu(s_j, [s_i])``; ``as_reference=False`` scores it as the hypothesis, BLEU(c_i | c_j), the
  textbook expected-gain form. BLEU is not symmetric (the brevity penalty and the clipping follow the
  reference), so the two can choose differently. The best score wins.
- ``best_by_score``: the highest given score per group (mean token log-prob, or an external
  reranker's mean log-prob: Difformer's default and ``--ppl-mbr``).
"""
from __future__ import annotations

import functools
from typing import Sequence, Union

import torch
from sacrebleu.metrics import BLEU
from torch import Tensor

from textdiff.metrics.text import _bleu_from, _extract

Candidate = Union[str, Sequence[int]]


@functools.lru_cache(maxsize=None)
def _sentence_metric(tokenize: str) -> BLEU:  # sacreBLEU's sentence_bleu settings
    return BLEU(tokenize=tokenize, effective_order=True)


def _as_text(c: Candidate) -> str:
    return c if isinstance(c, str) else " ".join(str(int(i)) for i in c)


def mbr_scores(candidates: Sequence[Candidate], tokenize: str = "none", as_reference: bool = True) -> list[float]:
    """Expected sentence BLEU (0-100) of each candidate against the others.

    Args:
        candidates: n >= 1 strings, or token-id sequences (compared as space-joined ids with
            ``tokenize="none"``, i.e. BLEU on the model's own tokens).
        tokenize: sacreBLEU tokenizer for string candidates ("13a" for detokenized text).
        as_reference: score candidate i as the reference of the others (official ``bleu_rerank``) rather
            than as their hypothesis.

    Returns:
        n scores: ``sacrebleu.sentence_bleu(c_j, [c_i]).score`` (``as_reference``; else
        ``sentence_bleu(c_i, [c_j])``) averaged over j != i; 0 when n = 1. As in the official code an empty
        candidate is never chosen over a non-empty one (its score is -inf) and adds nothing to the others'.
    """
    if tokenize != "none" and not all(isinstance(c, str) for c in candidates):
        raise ValueError("token-id candidates are compared with tokenize='none'")
    n = len(candidates)
    if n == 0:
        raise ValueError("mbr_scores needs at least one candidate")
    if n == 1:
        return [0.0]
    bleu = _sentence_metric(tokenize)
    texts = [_as_text(c) for c in candidates]
    ext = [_extract(bleu, t) for t in texts]

    def sentence_bleu(hyp: int, ref: int) -> float:  # one segment: hypothesis `hyp` against the reference `ref`
        (ngrams, length), (ref_ngrams, ref_len) = ext[hyp], ext[ref]
        return _bleu_from(bleu, iter([(ngrams, length, ref_len, ref_ngrams.__getitem__)])).score

    scores = []
    for i in range(n):
        if not texts[i]:
            scores.append(float("-inf"))
            continue
        others = [j for j in range(n) if j != i and texts[j]]
        total = sum(sentence_bleu(j, i) if as_reference else sentence_bleu(i, j) for j in others)
        scores.append(total / (n - 1))  # the official divides by beam_size - 1 whatever is empty
    return scores


def mbr_select(groups: Sequence[Sequence[Candidate]], tokenize: str = "none", as_reference: bool = True) -> list[int]:
    """Index of the MBR choice in each group (ties: the first). ``groups[b]`` are input b's candidates;
    ``as_reference`` as in ``mbr_scores``."""
    out = []
    for group in groups:
        scores = mbr_scores(group, tokenize, as_reference)
        out.append(max(range(len(scores)), key=scores.__getitem__))
    return out


def best_by_score(scores: Tensor) -> Tensor:
    """Index of the highest score per group: scores (B, n) -> (B,) long (ties: the first)."""
    return torch.as_tensor(scores).argmax(-1)
