"""Memorisation (share of the samples' n-grams found in the training texts), as a Hugging Face ``evaluate``
metric.

A thin wrapper: ``_compute`` calls ``textdiff.metrics.text.memorization``, so the number is textdiff's own.
Load it offline with ``evaluate.load(textdiff.metrics.evaluate_module_path("memorization"))``.
"""
import datasets
import evaluate

from textdiff.metrics.text import memorization

_DESCRIPTION = """\
Memorisation ("Mem" of LD4LG): the share of the predictions' n-grams (4-grams by default), counted with
multiplicity, that occur anywhere in the training texts, after sacreBLEU's tokenizer (LD4LG tokenises with
spaCy). 0 when the predictions have no n-grams. The training texts are not paired with the predictions, so
they are passed as the keyword `train_texts`.
"""

_CITATION = """\
@inproceedings{lovelace2023latent,
  title = {Latent Diffusion for Language Generation},
  author = {Lovelace, Justin and Kishore, Varsha and Wan, Chao and Shekhtman, Eliot and Weinberger, Kilian Q.},
  booktitle = {Advances in Neural Information Processing Systems},
  year = {2023},
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the samples.
    train_texts (`list` of `str`): the training corpus.
    n (`int`, defaults to 4): n-gram order.
    tokenize (`str`, defaults to "13a"): sacreBLEU tokenizer name.
Returns:
    memorization (`float`): a ratio in [0, 1].
Examples:
    >>> import evaluate
    >>> from textdiff.metrics import evaluate_module_path
    >>> mem = evaluate.load(evaluate_module_path("memorization"))
    >>> mem.compute(predictions=["the cat sat on the mat ."], train_texts=["the cat sat on the rug ."])
    {'memorization': 0.5}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Memorization(evaluate.Metric):
    """Memorisation against training texts (``textdiff.metrics.text.memorization``)."""

    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
            reference_urls=["https://arxiv.org/abs/2212.09462"],
        )

    def _compute(self, predictions, train_texts=None, n=4, tokenize="13a"):
        if train_texts is None:
            raise ValueError("memorization needs compute(..., train_texts=[...]): the training corpus")
        return {"memorization": memorization(list(predictions), list(train_texts), n=n, tokenize=tokenize)}
