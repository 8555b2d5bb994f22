"""dist-n (distinct n-grams over all n-grams) of a set of samples, as a Hugging Face ``evaluate`` metric.

A thin wrapper: ``_compute`` calls ``textdiff.metrics.text.dist_n``, so the numbers are textdiff's own.
Load it offline with ``evaluate.load(textdiff.metrics.evaluate_module_path("dist_n"))``.
"""
import datasets
import evaluate

from textdiff.metrics.text import dist_n

_DESCRIPTION = """\
dist-n: the number of distinct n-grams divided by the number of all n-grams over the predictions (n-grams
do not cross predictions), after sacreBLEU's tokenizer. 0 when no prediction has n tokens. Higher = more
diverse.
"""

_CITATION = """\
@inproceedings{li-etal-2016-diversity,
  title = {A Diversity-Promoting Objective Function for Neural Conversation Models},
  author = {Li, Jiwei and Galley, Michel and Brockett, Chris and Gao, Jianfeng and Dolan, Bill},
  booktitle = {Proceedings of the 2016 Conference of the North {A}merican Chapter of the Association for
               Computational Linguistics: Human Language Technologies},
  year = {2016},
  pages = {110--119},
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the samples.
    ns (`list` of `int`, defaults to [1, 2, 3, 4]): the n-gram orders.
    tokenize (`str`, defaults to "13a"): sacreBLEU tokenizer name ("none": plain whitespace split).
Returns:
    dist-1 .. dist-4 (`float`): one ratio in [0, 1] per order in `ns`.
Examples:
    >>> import evaluate
    >>> from textdiff.metrics import evaluate_module_path
    >>> dist = evaluate.load(evaluate_module_path("dist_n"))
    >>> dist.compute(predictions=["a a b", "a b c"], ns=[1, 2])
    {'dist-1': 0.5, 'dist-2': 0.75}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class DistN(evaluate.Metric):
    """dist-1 .. dist-4 (``textdiff.metrics.text.dist_n``)."""

    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
            reference_urls=["https://aclanthology.org/N16-1014"],
        )

    def _compute(self, predictions, ns=(1, 2, 3, 4), tokenize="13a"):
        return dist_n(list(predictions), ns=tuple(ns), tokenize=tokenize)
