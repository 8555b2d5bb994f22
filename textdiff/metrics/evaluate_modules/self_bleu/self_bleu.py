"""Self-BLEU of a set of samples, as a Hugging Face ``evaluate`` metric.

A thin wrapper: ``_compute`` calls ``textdiff.metrics.text.self_bleu``, so the number is textdiff's own
(corpus-level, leave-one-out). Load it offline with
``evaluate.load(textdiff.metrics.evaluate_module_path("self_bleu"))``.
"""
import datasets
import evaluate

from textdiff.metrics.text import self_bleu

_DESCRIPTION = """\
Corpus-level self-BLEU: each prediction's references are all the other predictions (leave-one-out), and
sacreBLEU's statistics are summed over the predictions before its formula, i.e. the value of
sacrebleu.corpus_bleu(predictions, streams) with prediction i's references = the others. Higher = less
diverse. Texygen's self-BLEU averages sentence-level NLTK BLEU instead: the two are not comparable.
"""

_CITATION = """\
@inproceedings{zhu2018texygen,
  title = {Texygen: A Benchmarking Platform for Text Generation Models},
  author = {Zhu, Yaoming and Lu, Sidi and Zheng, Lei and Guo, Jiaxian and Zhang, Weinan and Wang, Jun and Yu, Yong},
  booktitle = {The 41st International ACM SIGIR Conference on Research and Development in Information Retrieval},
  year = {2018},
  pages = {1097--1100},
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): at least two samples.
    tokenize (`str`, defaults to "13a"): sacreBLEU tokenizer name.
    max_order (`int`, defaults to 4): largest n-gram order.
Returns:
    self_bleu (`float`): self-BLEU in 0-100.
Examples:
    >>> import evaluate
    >>> from textdiff.metrics import evaluate_module_path
    >>> self_bleu = evaluate.load(evaluate_module_path("self_bleu"))
    >>> out = self_bleu.compute(predictions=["the cat sat on the mat .", "the cat sat on the mat ."])
    >>> round(out["self_bleu"], 1)
    100.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SelfBleu(evaluate.Metric):
    """Corpus-level self-BLEU (``textdiff.metrics.text.self_bleu``)."""

    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
            codebase_urls=["https://github.com/mjpost/sacrebleu"],
            reference_urls=["https://arxiv.org/abs/1802.01886"],
        )

    def _compute(self, predictions, tokenize="13a", max_order=4):
        return {"self_bleu": self_bleu(list(predictions), tokenize=tokenize, max_order=max_order)}
