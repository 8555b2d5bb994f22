"""Text metrics: BLEU, chrF (sacreBLEU), ROUGE (rouge-score), set/self-BLEU, dist-n, diversity, Mem,
unigram entropy.

The libraries are called directly (``evaluate.load("sacrebleu")`` needs the hub). Set-BLEU and
self-BLEU reuse sacreBLEU's ``BLEU._preprocess_segment``, ``helpers.extract_all_word_ngrams`` and
``BLEU.compute_bleu``, organising only the reference statistics (tests/metrics: equal to sacreBLEU).
"""
from __future__ import annotations

import bisect
import functools
import math
import warnings
from collections import Counter
from typing import Any, Callable, Iterator, Optional, Sequence

import sacrebleu
from sacrebleu.metrics.bleu import BLEU
from sacrebleu.metrics.chrf import CHRF
from sacrebleu.metrics.helpers import extract_all_word_ngrams

if not sacrebleu.__version__.startswith("2."):  # the private pieces used here are those of 2.x
    warnings.warn(f"textdiff.metrics was checked with sacrebleu 2.x, found {sacrebleu.__version__}:"
                  " run tests/metrics to confirm set-BLEU and self-BLEU", stacklevel=2)


def _nonempty(items: Sequence[Any], what: str) -> None:
    if len(items) == 0:
        raise ValueError(f"{what} is empty: nothing to score")
    bad = next((i for i, s in enumerate(items) if not isinstance(s, str)), None)
    if bad is not None:
        raise TypeError(f"{what}[{bad}] is {type(items[bad]).__name__}, expected str")


def _streams(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> list[list[Any]]:
    """Check the inputs; return sacreBLEU's reference streams, padded with None (which sacreBLEU
    drops, giving a variable number of references per segment; "" would be an empty reference)."""
    _nonempty(hypotheses, "hypotheses")
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    for i, refs in enumerate(references):
        if isinstance(refs, str):
            raise TypeError(f"references[{i}] is a str; pass a list of references per hypothesis")
        _nonempty(refs, f"references[{i}] (every hypothesis needs a reference)")
    width = max(len(r) for r in references)
    return [[refs[j] if j < len(refs) else None for refs in references] for j in range(width)]


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                tokenize: str = "13a", lowercase: bool = False) -> dict[str, Any]:
    """Corpus BLEU (Papineni et al. 2002) exactly as ``sacrebleu.corpus_bleu`` (Post 2018) gives it.

    Clipped n-gram matches (n = 1..4, clipped by the largest count in any reference of the segment),
    hypothesis and closest reference lengths are summed over the corpus; BLEU = BP * exp(mean log
    precision), with sacreBLEU's default ``exp`` smoothing.

    Args:
        hypotheses: N system outputs (detokenised text).
        references: N lists of references, ``references[i]`` for ``hypotheses[i]``; the lists may
            differ in length (the signature then says ``nrefs:var``).
        tokenize: sacreBLEU tokenizer name ("13a", "intl", "none" for pre-tokenised text, ...).
        lowercase: lowercase before tokenising.

    Returns:
        ``{"bleu": 0-100, "bp": brevity penalty, "precisions": [p1..p4] in %, "sys_len",
        "ref_len", "signature": sacreBLEU's signature string}``.

    Raises:
        ValueError: empty input, mismatched lengths, or a hypothesis without references.
    """
    streams = _streams(hypotheses, references)
    bleu = BLEU(tokenize=tokenize, lowercase=lowercase)
    s = bleu.corpus_score(list(hypotheses), streams)
    return {"bleu": float(s.score), "bp": float(s.bp),
            "precisions": [float(p) for p in s.precisions], "sys_len": int(s.sys_len),
            "ref_len": int(s.ref_len), "signature": str(bleu.get_signature())}


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Corpus chrF (Popović 2015) as ``sacrebleu.corpus_chrf`` gives it (char 6-grams, beta = 2).

    Args:
        hypotheses: N system outputs.
        references: N lists of references, variable lengths allowed (checked as in ``corpus_bleu``).

    Returns:
        ``{"chrf": 0-100, "signature": sacreBLEU's signature string}``.
    """
    streams = _streams(hypotheses, references)
    chrf = CHRF()
    score = chrf.corpus_score(list(hypotheses), streams)
    return {"chrf": float(score.score), "signature": str(chrf.get_signature())}


def rouge(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """ROUGE-1/2/L F1 (Lin 2004) with Google's rouge-score, ``RougeScorer(..., use_stemmer=True)``.

    rouge-score lowercases, keeps ``[a-z0-9]`` tokens and Porter-stems them. The best F1 over an
    example's references counts (``RougeScorer.score_multi``, per type); then the mean.

    Args:
        hypotheses: N system outputs.
        references: N non-empty lists of references (checked as in ``corpus_bleu``).

    Returns:
        ``{"rouge1", "rouge2", "rougeL"}``: mean F1 in 0-100.
    """
    from rouge_score import rouge_scorer  # imports nltk: keep it out of the module import

    _streams(hypotheses, references)  # checks the inputs
    keys = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
    sums = dict.fromkeys(keys, 0.0)
    for hyp, refs in zip(hypotheses, references):
        best = scorer.score_multi(list(refs), hyp)
        for k in keys:
            sums[k] += best[k].fmeasure
    return {k: 100.0 * v / len(hypotheses) for k, v in sums.items()}


@functools.lru_cache(maxsize=None)
def _metric(tokenize: str, max_order: int = 4) -> BLEU:  # for preprocessing/settings, never scored
    if max_order < 1:
        raise ValueError(f"max_order must be >= 1, got {max_order}")
    return BLEU(tokenize=tokenize, max_ngram_order=max_order)


def _extract(bleu: BLEU, text: str) -> tuple[Counter, int]:  # sacreBLEU's segment pipeline
    return extract_all_word_ngrams(bleu._preprocess_segment(text), 1, bleu.max_ngram_order)


def _closest(sorted_lens: Sequence[int], hyp_len: int) -> int:
    """sacreBLEU's closest reference length (``BLEU._get_closest_ref_len``): ties -> shorter."""
    i = bisect.bisect_left(sorted_lens, hyp_len)
    return min(sorted_lens[max(0, i - 1): i + 1], key=lambda r: (abs(hyp_len - r), r))


def _bleu_from(bleu: BLEU, segments: Iterator[tuple[Counter, int, int, Callable]]) -> Any:
    """Sum sacreBLEU's statistics over (ngrams, hyp_len, ref_len, ref_max) segments, clipping each
    n-gram by ``ref_max(ngram)``, and apply ``BLEU.compute_bleu`` with ``bleu``'s settings."""
    order = bleu.max_ngram_order
    correct, total, sys_len, ref_len = [0] * order, [0] * order, 0, 0
    for ngrams, hyp_len, closest, ref_max in segments:
        sys_len += hyp_len
        ref_len += closest
        for g, c in ngrams.items():
            total[len(g) - 1] += c
            correct[len(g) - 1] += min(c, ref_max(g))
    return BLEU.compute_bleu(correct, total, sys_len, ref_len, smooth_method=bleu.smooth_method,
                             smooth_value=bleu.smooth_value, effective_order=bleu.effective_order,
                             max_ngram_order=order)


def bleu_against_set(hypotheses: Sequence[str], reference_set: Sequence[str], tokenize: str = "13a",
                     max_order: int = 4) -> dict[str, Any]:
    """Corpus BLEU where every hypothesis has the whole ``reference_set`` as its references.

    How unconditional samples are scored against a test split (e.g. DiffusionBERT, He et al. 2023).
    Equal to ``sacrebleu.corpus_bleu(hyps, [[r] * len(hyps) for r in reference_set])`` (tokenizer,
    clipping, closest length with ties to the shorter, ``exp`` smoothing) in one pass over the
    set: clipping needs each n-gram's largest count over it; closest lengths come by bisection.

    Args:
        hypotheses: the samples.
        reference_set: the references shared by every sample.
        tokenize: sacreBLEU tokenizer name.
        max_order: largest n-gram order (sacreBLEU's ``max_ngram_order``).

    Returns:
        ``{"bleu": 0-100, "bp", "precisions", "signature"}``; the signature is sacreBLEU's with
        ``nrefs:set-of-<len(reference_set)>`` (plus ``order:<n>`` when ``max_order != 4``).

    Raises:
        ValueError: empty hypotheses or reference set.
    """
    _nonempty(hypotheses, "hypotheses")
    _nonempty(reference_set, "reference_set")
    bleu = _metric(tokenize, max_order)
    max_counts: Counter = Counter()  # n-gram -> its largest count in any reference (0 if none)
    lens = []
    for ref in reference_set:
        ngrams, n = _extract(bleu, ref)
        lens.append(n)
        for g, c in ngrams.items():
            max_counts[g] = max(c, max_counts[g])
    lens.sort()
    hyps = (_extract(bleu, h) for h in hypotheses)
    score = _bleu_from(bleu, ((ng, n, _closest(lens, n), max_counts.__getitem__) for ng, n in hyps))
    sig_bleu = BLEU(tokenize=tokenize, max_ngram_order=max_order)
    sig_bleu.num_refs = 1  # sacreBLEU sets this while caching references; its signature needs it
    sig = sig_bleu.get_signature()
    sig.update("nrefs", f"set-of-{len(reference_set)}")
    if max_order != 4:
        sig.update("order", max_order)
    return {"bleu": float(score.score), "bp": float(score.bp),
            "precisions": [float(p) for p in score.precisions], "signature": str(sig)}


def self_bleu(samples: Sequence[str], tokenize: str = "13a", max_order: int = 4) -> float:
    """Corpus-level self-BLEU: each sample's references are all the *other* samples (leave-one-out).

    Statistics are summed over samples before sacreBLEU's formula: the value equals
    ``sacrebleu.corpus_bleu(samples, streams)`` with sample i's references = the others. Exact in
    O(total n-grams): per n-gram the largest count, its sample and the second-largest count give
    each leave-one-out maximum; closest lengths use the sorted lengths with multiplicities.
    Texygen (Zhu et al. 2018) instead averages sentence-level NLTK BLEU (per-sentence smoothing
    and brevity penalty): the two kinds of numbers are not comparable. Higher = less diverse.

    Args:
        samples: at least two samples.
        tokenize, max_order: sacreBLEU tokenizer name and largest n-gram order.

    Returns:
        Self-BLEU in 0-100.

    Raises:
        ValueError: fewer than two samples.
    """
    _nonempty(samples, "samples")
    if len(samples) < 2:
        raise ValueError(f"self-BLEU needs at least 2 samples, got {len(samples)}")
    bleu = _metric(tokenize, max_order)
    extracted = [_extract(bleu, s) for s in samples]
    top: dict[tuple, list[int]] = {}  # n-gram -> [largest count, sample holding it, second largest]
    for j, (ngrams, _) in enumerate(extracted):
        for g, c in ngrams.items():
            t = top.setdefault(g, [0, -1, 0])
            if c > t[0]:
                t[2], t[0], t[1] = t[0], c, j
            elif c > t[2]:
                t[2] = c
    lens = sorted(n for _, n in extracted)
    mult = Counter(lens)

    def segments() -> Iterator[tuple[Counter, int, int, Callable]]:
        for i, (ngrams, n) in enumerate(extracted):
            if mult[n] > 1:  # another sample has the same length
                closest = n
            else:  # drop this sample's own (unique) length: the neighbours are the candidates
                k = bisect.bisect_left(lens, n)
                closest = _closest(lens[max(0, k - 1): k] + lens[k + 1: k + 2], n)
            yield ngrams, n, closest, lambda g, i=i: top[g][2] if top[g][1] == i else top[g][0]

    return float(_bleu_from(bleu, segments()).score)


def _tokens(texts: Sequence[str], tokenize: str) -> list[list[str]]:
    return [_metric(tokenize)._preprocess_segment(t).split() for t in texts]


def _ngrams(tokens: Sequence[str], n: int) -> Iterator[tuple]:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return zip(*(tokens[i:] for i in range(n)))


def _distinct(token_lists: Sequence[Sequence[str]], n: int) -> float:
    grams = [g for toks in token_lists for g in _ngrams(toks, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def distinct_n(samples: Sequence[str], n: int, tokenize: str = "13a") -> float:
    """dist-n (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation
    Models"): distinct n-grams / all n-grams over the samples (n-grams do not cross samples).

    Args:
        samples: the generated texts.
        n: n-gram order (>= 1).
        tokenize: sacreBLEU tokenizer applied before splitting on whitespace ("none": plain split).

    Returns:
        A ratio in [0, 1]; 0.0 when no sample has n tokens.

    Raises:
        ValueError: empty ``samples`` or ``n < 1``.
    """
    _nonempty(samples, "samples")
    return _distinct(_tokens(samples, tokenize), n)


def dist_n(samples: Sequence[str], ns: Sequence[int] = (1, 2, 3, 4),
           tokenize: str = "13a") -> dict[str, float]:
    """dist-n for several orders (definition and reference in ``distinct_n``; Li et al. 2016).

    Args:
        samples: the generated texts.
        ns: the orders; tokenize: sacreBLEU tokenizer name.

    Returns:
        ``{"dist-1": ..., "dist-2": ...}`` for each n in ``ns``.
    """
    _nonempty(samples, "samples")
    toks = _tokens(samples, tokenize)
    return {f"dist-{n}": _distinct(toks, n) for n in ns}


def diversity(samples: Sequence[str], tokenize: str = "13a") -> float:
    """Diversity of LD4LG (Lovelace et al. 2023, "Latent Diffusion for Language Generation"): the
    product over n = 2, 3, 4 of distinct / total n-grams, i.e. of (1 - n-gram repetition). LD4LG
    tokenises with spaCy; here sacreBLEU's ``tokenize`` is used.

    Args:
        samples: the generated texts.
        tokenize: sacreBLEU tokenizer name.

    Returns:
        A value in [0, 1] (0 when some order has no n-grams).

    Raises:
        ValueError: empty ``samples``.
    """
    _nonempty(samples, "samples")
    toks = _tokens(samples, tokenize)
    return math.prod(_distinct(toks, n) for n in (2, 3, 4))


def memorization(samples: Sequence[str], train_texts: Sequence[str], n: int = 4,
                 tokenize: str = "13a") -> float:
    """Memorisation ("Mem") of LD4LG (Lovelace et al. 2023): the share of the samples' n-grams,
    counted with multiplicity, that occur anywhere in the training texts. LD4LG tokenises with
    spaCy; here sacreBLEU's ``tokenize``. The training n-grams form a set of tuples built once;
    the 13a tokenizer dominates the cost (~6 s per 100k sentences of 20 words on one core).

    Args:
        samples: the generated texts.
        train_texts: the training corpus.
        n: n-gram order (LD4LG uses 4).
        tokenize: sacreBLEU tokenizer name.

    Returns:
        A ratio in [0, 1]; 0.0 when the samples have no n-grams.

    Raises:
        ValueError: empty ``samples`` or ``train_texts``, or ``n < 1``.
    """
    _nonempty(samples, "samples")
    if len(train_texts) == 0:
        raise ValueError("train_texts is empty: nothing to compare the samples with")
    grams = [g for toks in _tokens(samples, tokenize) for g in _ngrams(toks, n)]
    pre = _metric(tokenize)._preprocess_segment
    train: set = set()
    for text in dict.fromkeys(train_texts):  # each distinct text once
        train.update(_ngrams(pre(text).split(), n))
    return sum(g in train for g in grams) / len(grams) if grams else 0.0


def unigram_entropy(samples: Sequence[str], tokenize: str = "13a") -> float:
    """Mean per-sample unigram entropy (nats): how varied the words are *within* each sample.

    For sample s with token counts c_w (sacreBLEU's ``tokenize``, then whitespace split, as the
    other n-gram metrics here) and n = sum_w c_w tokens, p_w = c_w / n and

        H(s) = -sum_w p_w ln p_w,

    then the mean of H(s) over the samples. An empty sample counts as 0 (as does a sample repeating
    one token); a sample of n distinct tokens scores ln n. E.g. "a a b b" -> ln 2, "a a a" -> 0.
    dist-n measures repetition across samples; this measures it inside each one (a degenerate
    "the the the ..." sample scores 0 however diverse the set).

    Args:
        samples: the generated texts.
        tokenize: sacreBLEU tokenizer name ("none": plain whitespace split).

    Returns:
        The mean entropy in nats (>= 0).

    Raises:
        ValueError: empty ``samples``.
    """
    _nonempty(samples, "samples")
    per_sample = [0.0 - math.fsum(c / len(toks) * math.log(c / len(toks)) for c in Counter(toks).values())
                  for toks in _tokens(samples, tokenize)]  # empty sample: fsum([]) = 0; `0.0 -`: never -0.0
    return math.fsum(per_sample) / len(samples)


def corpus_entropy(samples: Sequence[str], tokenize: str = "13a") -> float:
    """Unigram entropy (nats) of all the samples' tokens pooled: how varied the words are *across* the set.

    With c_w the count of token w over every sample (tokenised as ``unigram_entropy``) and N = sum_w c_w,
    H = -sum_w (c_w / N) ln(c_w / N). Short samples (a sentence of six words) barely repeat a word, so their
    per-sample entropy (``unigram_entropy``) stays near ln(length) whatever the sampler; lowering the temperature
    shows here instead (fewer, commoner words). A plug-in estimate: it grows with the number of samples, so
    compare sets of the same size. 0 for no tokens.

    Args:
        samples: the generated texts.
        tokenize: sacreBLEU tokenizer name.

    Returns:
        The entropy in nats (>= 0).

    Raises:
        ValueError: empty ``samples``.
    """
    _nonempty(samples, "samples")
    counts = Counter(tok for toks in _tokens(samples, tokenize) for tok in toks)
    total = sum(counts.values())
    return 0.0 - math.fsum(c / total * math.log(c / total) for c in counts.values()) if total else 0.0


def score_unconditional(samples: Sequence[str], reference_set: Optional[Sequence[str]] = None,
                        train_texts: Optional[Sequence[str]] = None,
                        tokenize: str = "13a") -> dict[str, Any]:
    """All scores of unconditional samples, as a flat dict (definitions: see each function).

    Args:
        samples: the generated texts.
        reference_set: if given, ``bleu`` = ``bleu_against_set`` against it (e.g. the test split).
        train_texts: if given, ``memorization`` (4-grams) against them.
        tokenize: sacreBLEU tokenizer for every n-gram metric.

    Returns:
        ``num_samples``, ``mean_length`` (whitespace tokens of the raw texts), ``self_bleu`` (NaN
        for a single sample), ``dist-1`` .. ``dist-4``, ``diversity``, ``entropy`` (mean per-sample
        unigram entropy in nats, ``unigram_entropy``), ``corpus_entropy`` (of the pooled tokens,
        ``corpus_entropy``); ``bleu`` and ``bleu_signature`` with a
        reference set; ``memorization`` with training texts.

    Raises:
        ValueError: empty ``samples`` (or empty reference set / training texts when given).
    """
    _nonempty(samples, "samples")
    out: dict[str, Any] = {"num_samples": len(samples),
                           "mean_length": sum(len(s.split()) for s in samples) / len(samples)}
    if reference_set is not None:
        b = bleu_against_set(samples, reference_set, tokenize=tokenize)
        out["bleu"], out["bleu_signature"] = b["bleu"], b["signature"]
    out["self_bleu"] = self_bleu(samples, tokenize=tokenize) if len(samples) > 1 else float("nan")
    out.update(dist_n(samples, tokenize=tokenize))
    out["diversity"] = diversity(samples, tokenize=tokenize)
    out["entropy"] = unigram_entropy(samples, tokenize=tokenize)
    out["corpus_entropy"] = corpus_entropy(samples, tokenize=tokenize)
    if train_texts is not None:
        out["memorization"] = memorization(samples, train_texts, tokenize=tokenize)
    return out


def score_conditional(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                      tokenize: str = "13a") -> dict[str, Any]:
    """All scores of conditional outputs against their own references, as a flat dict.

    Args:
        hypotheses: N outputs.
        references: N non-empty lists of references (checked as in ``corpus_bleu``).
        tokenize: sacreBLEU tokenizer for BLEU (chrF and ROUGE have their own).

    Returns:
        ``bleu``, ``bleu_signature`` (``corpus_bleu``), ``chrf``, ``chrf_signature``
        (``corpus_chrf``), ``rouge1``, ``rouge2``, ``rougeL`` (``rouge``), ``num_samples``.
    """
    _streams(hypotheses, references)  # checks the inputs
    b = corpus_bleu(hypotheses, references, tokenize=tokenize)
    c = corpus_chrf(hypotheses, references)
    return {"bleu": b["bleu"], "bleu_signature": b["signature"], "chrf": c["chrf"],
            "chrf_signature": c["signature"], **rouge(hypotheses, references),
            "num_samples": len(hypotheses)}
