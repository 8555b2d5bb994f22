"""Text and likelihood metrics (sacreBLEU, rouge-score); no network, no Lightning/transformers.

The same metrics as Hugging Face ``evaluate`` modules, offline: ``evaluate.load(evaluate_module_path(name))``
(see :mod:`textdiff.metrics.evaluate_modules`).

``rouge_score`` (which pulls nltk) is imported on the first ``rouge`` call and ``torch`` only when
tensors reach ``MeanNLL``.
"""
from textdiff.metrics.evaluate_modules import EVALUATE_MODULES, evaluate_module_path
from textdiff.metrics.fluency import lm_perplexity, lm_perplexity_per_text
from textdiff.metrics.likelihood import MeanNLL, nll_summary
from textdiff.metrics.text import (
    bleu_against_set,
    corpus_bleu,
    corpus_chrf,
    corpus_entropy,
    dist_n,
    distinct_n,
    diversity,
    memorization,
    rouge,
    score_conditional,
    score_unconditional,
    self_bleu,
    unigram_entropy,
)

__all__ = [
    "EVALUATE_MODULES", "MeanNLL", "bleu_against_set", "corpus_bleu", "corpus_chrf", "corpus_entropy", "dist_n",
    "distinct_n", "diversity", "evaluate_module_path", "lm_perplexity", "lm_perplexity_per_text", "memorization",
    "nll_summary", "rouge", "score_conditional", "score_unconditional", "self_bleu", "unigram_entropy",
]
