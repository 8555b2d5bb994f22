"""Fluency of generated text as its perplexity under an autoregressive language model.

The judge is a decoder-only :class:`textdiff.families.Autoregressive` (``network.enc_depth == 0``)
trained on the same training split as the models it judges (e.g. ``experiment=ar_lm_tatoeba_cpu``).
It has its own tokenizer: the texts are re-tokenised with it, so the judged model may use any
vocabulary. Each text is framed as the LM saw its training data, ``[BOS] encode(text) [EOS]``, and

    PPL = exp(-(1/N) sum_i log p(w_i | w_<i)),

the sum running over every text's predicted tokens (BOS is given, not predicted; every word and
EOS are predicted) and N being their number: a token-weighted corpus perplexity, not a mean of
per-text perplexities. With a word tokenizer, out-of-vocabulary words become UNK, which an LM
predicts easily; ``lm_unk_rate`` reports how much of the text that is (a high rate makes the
perplexity flattering and not comparable across systems).

``torch`` and the data helpers are imported on the first call, so ``import textdiff.metrics``
stays cheap.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

from textdiff.metrics.likelihood import nll_summary


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str):
        raise TypeError("texts is a str; pass a sequence of texts")
    if len(texts) == 0:
        raise ValueError("texts is empty: nothing to score")
    bad = next((i for i, s in enumerate(texts) if not isinstance(s, str)), None)
    if bad is not None:
        raise TypeError(f"texts[{bad}] is {type(texts[bad]).__name__}, expected str")


def _check_lm(lm: Any, tokenizer: Any) -> None:
    if getattr(lm, "conditional", None) is not False or not hasattr(lm, "score"):
        raise ValueError(
            f"lm must be an unconditional autoregressive language model (an Autoregressive with "
            f"network.enc_depth == 0); got {type(lm).__name__} with conditional="
            f"{getattr(lm, 'conditional', None)!r}: an encoder-decoder model needs a source to "
            "score a text")
    mine = (lm.pad_id, lm.bos_id, lm.eos_id, lm.vocab_size)
    theirs = (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.vocab_size)
    if mine != theirs:
        raise ValueError(
            f"the tokenizer does not belong to the LM: (pad, bos, eos, vocab_size) = {theirs} vs "
            f"the LM's {mine}; pass the LM run's own tokenizer (load_run(...)[1].tokenizer)")


def _score_texts(lm: Any, tokenizer: Any, texts: Sequence[str], batch_size: int,
                 max_len: Optional[int]) -> tuple[list[float], list[int], dict[str, int]]:
    """Frame, truncate and score every text.

    Returns:
        (nll per text in nats (N,), predicted tokens per text (N,), counts ``truncated``, ``unk``
        and ``words`` (text tokens scored, i.e. predicted tokens other than EOS)).
    """
    import torch

    from textdiff.core.types import pad_sequences

    _check_texts(texts)
    _check_lm(lm, tokenizer)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    limit = int(lm.network.max_len)
    L = limit if max_len is None else int(max_len)
    if not 2 <= L <= limit:
        raise ValueError(f"max_len={max_len} must be in [2, {limit}] (BOS and EOS included; the "
                         "upper end is the LM network's max_len)")
    bos, eos, pad, unk = tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.unk_id
    count_unk = unk not in (bos, eos, pad)  # GPT-2-like tokenizers have no UNK of their own

    seqs: list[list[int]] = []
    truncated = unk_count = words = 0
    encoded = tokenizer.encode_batch([t if t.strip() else "" for t in texts])
    for t, ids in zip(texts, encoded):
        ids = list(ids) if t.strip() else []  # an empty output is a real one: scored as [BOS][EOS]
        seq = [bos, *ids, eos]
        if len(seq) > L:  # as the datamodules' overflow="truncate": first L - 1 tokens, then EOS
            seq = seq[:L - 1] + [eos]
            truncated += 1
        body = seq[1:-1]
        words += len(body)
        if count_unk:
            unk_count += sum(1 for i in body if i == unk)
        seqs.append(seq)

    nll = [0.0] * len(seqs)
    tokens = [0] * len(seqs)
    # similar lengths share a batch: less padding to compute
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    device = next(lm.parameters()).device
    was_training = lm.training
    lm.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), int(batch_size)):
                rows = order[start:start + int(batch_size)]
                ids, mask = pad_sequences([seqs[i] for i in rows], pad)
                out = lm.score(ids.to(device), mask.to(device))
                for i, lp, n in zip(rows, out["logprob"].double().tolist(), out["tokens"].tolist()):
                    nll[i], tokens[i] = -lp, int(n)
    finally:
        lm.train(was_training)
    return nll, tokens, {"truncated": truncated, "unk": unk_count, "words": words}


def lm_perplexity(lm: Any, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 64,
                  max_len: Optional[int] = None) -> dict[str, Any]:
    """Corpus perplexity of ``texts`` under an autoregressive language model.

    Each text is framed as ``[BOS] tokenizer.encode(text) [EOS]`` (the LM's training layout); a text
    longer than ``max_len`` keeps its first ``max_len - 1`` tokens and then EOS (as the datamodules'
    ``overflow="truncate"``). A text that is empty after ``strip()`` is scored as ``[BOS][EOS]``: an
    empty sample is a real model output, and the LM judges how likely it is to end at once.
    Scoring uses ``lm.score`` on the LM's device, under ``torch.no_grad`` in eval mode (the previous
    mode is restored), in batches of ``batch_size`` texts of similar length (so the result does not
    depend on the order of ``texts`` beyond float rounding).

    Definitions: PPL = exp(-(1/N) sum log p(w_i | w_<i)), summed over every predicted token of every
    text (all tokens after BOS, EOS included; N of them).

    Args:
        lm: an unconditional ``Autoregressive`` (``lm.conditional`` False), e.g.
            ``load_run(...)[0]``.
        tokenizer: the LM's own tokenizer (``load_run(...)[1].tokenizer``); its PAD/BOS/EOS ids and
            vocabulary size must equal the LM's.
        texts: N texts (detokenised strings, e.g. decoded samples of another model).
        batch_size: texts scored together.
        max_len: length cap, BOS and EOS included (default and maximum: ``lm.network.max_len``).

    Returns:
        ``{"lm_ppl": exp(lm_nll) (inf on overflow), "lm_nll": nats per predicted token,
        "lm_tokens": N (predicted tokens, EOS included), "lm_num_texts": number of texts,
        "lm_truncated": texts cut to max_len, "lm_unk_rate": share of the scored text tokens
        (EOS excluded) that are UNK (0.0 when there are none, or when the tokenizer's UNK id doubles
        as PAD/BOS/EOS)}``.

    Raises:
        ValueError: ``texts`` empty, a conditional (encoder-decoder) model, a tokenizer whose
            special ids or vocabulary size differ from the LM's, ``max_len`` out of [2, network
            max_len], ``batch_size < 1``.
        TypeError: ``texts`` is a str or holds a non-str.
    """
    nll, tokens, counts = _score_texts(lm, tokenizer, texts, batch_size, max_len)
    total = sum(tokens)
    summary = nll_summary(math.fsum(nll), total)
    return {
        "lm_ppl": summary["ppl"],
        "lm_nll": summary["nll"],
        "lm_tokens": total,
        "lm_num_texts": len(tokens),
        "lm_truncated": counts["truncated"],
        "lm_unk_rate": counts["unk"] / counts["words"] if counts["words"] else 0.0,
    }


def lm_perplexity_per_text(lm: Any, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 64,
                           max_len: Optional[int] = None) -> list[float]:
    """Per-text NLL per predicted token (nats), framed and scored exactly as in ``lm_perplexity``.

    Element i is -(1/n_i) sum_j log p(w_ij | w_i,<j) over text i's n_i predicted tokens (EOS
    included, so n_i >= 1); exp of it is that text's own perplexity. For reporting (the worst
    samples, a histogram); the corpus figure is ``lm_perplexity``, which weights texts by length.

    Returns:
        N floats, in the order of ``texts``. Raises as ``lm_perplexity``.
    """
    nll, tokens, _ = _score_texts(lm, tokenizer, texts, batch_size, max_len)
    return [v / n for v, n in zip(nll, tokens)]
