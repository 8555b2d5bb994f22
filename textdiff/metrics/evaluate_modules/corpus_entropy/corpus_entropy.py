"""Unigram entropy (nats) of all the predictions' tokens pooled, as a Hugging Face ``evaluate`` metric.

A thin wrapper: ``_compute`` calls ``textdiff.metrics.text.corpus_entropy``, so the number is textdiff's own
(``corpus_entropy`` of ``score_unconditional``, the x axis of the tables' frontier). Load it offline with
``evaluate.load(textdiff.metrics.evaluate_module_path("corpus_entropy"))``.
"""
import datasets
import evaluate

from textdiff.metrics.text import corpus_entropy

_DESCRIPTION = """\
The Shannon entropy in nats of the empirical distribution of every prediction's tokens pooled (sacreBLEU's
tokenizer, then a whitespace split): H = -sum_w (c_w / N) ln(c_w / N) with c_w the count of token w over all
predictions and N the total count. ["a b", "a c"] scores -(1/2 ln 1/2 + 2 x 1/4 ln 1/4) = 1.5 ln 2. Short
samples barely repeat a word inside themselves, so the per-sample entropy (unigram_entropy) cannot see a
low-temperature sampler; this does. It grows with the number of predictions: compare sets of the same size.
"""

_CITATION = """\
@article{shannon1948mathematical,
  title = {A Mathematical Theory of Communication},
  author = {Shannon, Claude E.},
  journal = {Bell System Technical Journal},
  volume = {27},
  number = {3},
  pages = {379--423},
  year = {1948},
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the samples.
    tokenize (`str`, defaults to "13a"): sacreBLEU tokenizer name ("none": plain whitespace split).
Returns:
    corpus_entropy (`float`): the entropy of the pooled tokens in nats.
Examples:
    >>> import evaluate
    >>> from textdiff.metrics import evaluate_module_path
    >>> entropy = evaluate.load(evaluate_module_path("corpus_entropy"))
    >>> round(entropy.compute(predictions=["a b", "a c"])["corpus_entropy"], 4)  # 1.5 ln 2
    1.0397
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CorpusEntropy(evaluate.Metric):
    """Unigram entropy of the pooled tokens (``textdiff.metrics.text.corpus_entropy``)."""

    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, tokenize="13a"):
        return {"corpus_entropy": corpus_entropy(list(predictions), tokenize=tokenize)}
