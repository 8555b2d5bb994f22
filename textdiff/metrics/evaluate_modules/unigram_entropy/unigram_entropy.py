"""Mean per-sample unigram entropy (nats), as a Hugging Face ``evaluate`` metric.

A thin wrapper: ``_compute`` calls ``textdiff.metrics.text.unigram_entropy``, so the number is textdiff's
own (``entropy`` of ``score_unconditional``). Load it offline with
``evaluate.load(textdiff.metrics.evaluate_module_path("unigram_entropy"))``.
"""
import datasets
import evaluate

from textdiff.metrics.text import unigram_entropy

_DESCRIPTION = """\
For each prediction, the Shannon entropy in nats of the empirical distribution of its tokens (sacreBLEU's
tokenizer, then a whitespace split): H = -sum_w p_w ln p_w with p_w = count(w) / length; then the mean over
the predictions, an empty prediction counting as 0. "a a b b" scores ln 2, "a a a" scores 0. It measures
repetition inside each sample (dist-n measures it across samples).
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
    entropy (`float`): the mean per-sample unigram entropy in nats.
Examples:
    >>> import evaluate
    >>> from textdiff.metrics import evaluate_module_path
    >>> entropy = evaluate.load(evaluate_module_path("unigram_entropy"))
    >>> round(entropy.compute(predictions=["a a b b", "a a a"])["entropy"], 4)  # (ln 2 + 0) / 2
    0.3466
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class UnigramEntropy(evaluate.Metric):
    """Mean per-sample unigram entropy (``textdiff.metrics.text.unigram_entropy``)."""

    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, tokenize="13a"):
        return {"entropy": unigram_entropy(list(predictions), tokenize=tokenize)}
