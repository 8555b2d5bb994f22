"""BLEU of samples against a whole reference set, as a Hugging Face ``evaluate`` metric.

A thin wrapper: ``_compute`` calls ``textdiff.metrics.text.bleu_against_set``, so the number is textdiff's
own (what ``textdiff-sample`` writes as ``bleu`` for unconditional samples). Load it offline with
``evaluate.load(textdiff.metrics.evaluate_module_path("bleu_against_set"))``.
"""
import datasets
import evaluate

from textdiff.metrics.text import bleu_against_set

_DESCRIPTION = """\
Corpus BLEU (sacreBLEU's tokenizer, clipping, closest reference length and exp smoothing) where every
prediction has the whole reference set as its references: how unconditional samples are scored against a
test split (e.g. DiffusionBERT). Equal to sacrebleu.corpus_bleu(predictions, [[r] * len(predictions) for r
in reference_set]), computed in one pass over the set. The references are not paired with the predictions,
so they are passed as the keyword `reference_set`, not as `references`.
"""

_CITATION = """\
@inproceedings{papineni-etal-2002-bleu,
  title = {{B}leu: a Method for Automatic Evaluation of Machine Translation},
  author = {Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing},
  booktitle = {Proceedings of the 40th Annual Meeting of the Association for Computational Linguistics},
  year = {2002},
  pages = {311--318},
}
@inproceedings{post-2018-call,
  title = {A Call for Clarity in Reporting {BLEU} Scores},
  author = {Post, Matt},
  booktitle = {Proceedings of the Third Conference on Machine Translation: Research Papers},
  year = {2018},
  pages = {186--191},
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the samples (detokenised text).
    reference_set (`list` of `str`): the references every prediction shares (e.g. the test split).
    tokenize (`str`, defaults to "13a"): sacreBLEU tokenizer name ("none" for pre-tokenised text).
    max_order (`int`, defaults to 4): largest n-gram order.
Returns:
    bleu (`float`): BLEU in 0-100.
    bp (`float`): brevity penalty.
    precisions (`list` of `float`): n-gram precisions in %.
    signature (`str`): sacreBLEU's signature, with nrefs:set-of-<len(reference_set)>.
Examples:
    >>> import evaluate
    >>> from textdiff.metrics import evaluate_module_path
    >>> bleu = evaluate.load(evaluate_module_path("bleu_against_set"))
    >>> out = bleu.compute(predictions=["the cat sat on the mat ."],
    ...                    reference_set=["the cat sat on the mat .", "a dog ran ."])
    >>> round(out["bleu"], 1)
    100.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BleuAgainstSet(evaluate.Metric):
    """BLEU of predictions against a shared reference set (``textdiff.metrics.text.bleu_against_set``)."""

    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
            codebase_urls=["https://github.com/mjpost/sacrebleu"],
            reference_urls=["https://aclanthology.org/P02-1040", "https://aclanthology.org/W18-6319"],
        )

    def _compute(self, predictions, reference_set=None, tokenize="13a", max_order=4):
        if reference_set is None:
            raise ValueError("bleu_against_set needs compute(..., reference_set=[...]): the texts every "
                             "prediction is scored against")
        return bleu_against_set(list(predictions), list(reference_set), tokenize=tokenize, max_order=max_order)
