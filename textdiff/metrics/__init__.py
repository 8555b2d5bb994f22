"""Text and likelihood metrics (sacreBLEU, rouge-score); no network, no Lightning/transformers.

``rouge_score`` (which pulls nltk) is imported on the first ``rouge`` call and ``torch`` only when
tensors reach ``MeanNLL``.
"""
from textdiff.metrics.fluency import lm_perplexity, lm_perplexity_per_text
from textdiff.metrics.likelihood import MeanNLL, nll_summary
from textdiff.metrics.text import (
    bleu_against_set,
    corpus_bleu,
    corpus_chrf,
    dist_n,
    distinct_n,
    diversity,
    memorization,
    rouge,
    score_conditional,
    score_unconditional,
    self_bleu,
)

__all__ = [
    "MeanNLL", "bleu_against_set", "corpus_bleu", "corpus_chrf", "dist_n", "distinct_n",
    "diversity", "lm_perplexity", "lm_perplexity_per_text", "memorization", "nll_summary", "rouge",
    "score_conditional", "score_unconditional", "self_bleu",
]
