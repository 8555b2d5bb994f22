"""textdiff's metrics as Hugging Face ``evaluate`` modules that load offline from the installed package.

``evaluate.load("sacrebleu")`` fetches its script from the hub; these scripts ship inside textdiff and
``evaluate.load`` takes a local path, so they load with ``HF_HUB_OFFLINE=1 HF_EVALUATE_OFFLINE=1``::

    import evaluate
    from textdiff.metrics import evaluate_module_path

    self_bleu = evaluate.load(evaluate_module_path("self_bleu"))
    self_bleu.compute(predictions=samples)            # {"self_bleu": ...}

Each module is one folder ``<name>/<name>.py`` (evaluate's layout for a local metric) holding an
``evaluate.Metric`` whose ``_compute`` calls textdiff's own function, so the numbers are textdiff's:

=====================  =====================================================  ==========================
name                   textdiff function                                      extra ``compute`` kwargs
=====================  =====================================================  ==========================
``bleu_against_set``   ``textdiff.metrics.text.bleu_against_set``             ``reference_set``
``self_bleu``          ``textdiff.metrics.text.self_bleu``
``dist_n``             ``textdiff.metrics.text.dist_n`` (dist-1 .. dist-4)
``unigram_entropy``    ``textdiff.metrics.text.unigram_entropy``
``corpus_entropy``     ``textdiff.metrics.text.corpus_entropy``
``memorization``       ``textdiff.metrics.text.memorization``                 ``train_texts``
``judge_perplexity``   ``textdiff.metrics.fluency.lm_perplexity`` of a run    ``run_dir``
=====================  =====================================================  ==========================

``judge_perplexity`` loads an AR language-model run directory with ``textdiff.cli.runs.load_judges``
(Hydra), which the metrics layer may not import: its script lives in ``textdiff/cli/evaluate_modules/``
and :func:`evaluate_module_path` only builds that path (no import crosses the layers).

The script folders are data, not subpackages (no ``__init__.py``): ``setup.cfg``'s ``package_data`` ships
them. Nothing here imports ``evaluate``.
"""
from __future__ import annotations

from pathlib import Path

#: module name -> the folder, relative to the ``textdiff`` package, that holds ``<name>/<name>.py``
_HOMES = {
    "bleu_against_set": "metrics/evaluate_modules",
    "self_bleu": "metrics/evaluate_modules",
    "dist_n": "metrics/evaluate_modules",
    "unigram_entropy": "metrics/evaluate_modules",
    "corpus_entropy": "metrics/evaluate_modules",
    "memorization": "metrics/evaluate_modules",
    "judge_perplexity": "cli/evaluate_modules",
}

#: the names :func:`evaluate_module_path` knows
EVALUATE_MODULES = tuple(_HOMES)


def evaluate_module_path(name: str) -> str:
    """The folder of textdiff's ``evaluate`` module ``name``, for ``evaluate.load(evaluate_module_path(name))``.

    Args:
        name: one of :data:`EVALUATE_MODULES` (``"bleu_against_set"``, ``"self_bleu"``, ``"dist_n"``,
            ``"unigram_entropy"``, ``"memorization"``, ``"judge_perplexity"``).

    Returns:
        The absolute path of the folder holding ``<name>.py`` (evaluate's layout for a local module).

    Raises:
        ValueError: an unknown name.
        FileNotFoundError: the script is missing from the installation.
    """
    if name not in _HOMES:
        raise ValueError(f"no textdiff evaluate module {name!r}; known: {', '.join(EVALUATE_MODULES)}")
    package = Path(__file__).resolve().parents[1].parent  # .../textdiff
    folder = package.joinpath(*_HOMES[name].split("/"), name)
    if not (folder / f"{name}.py").is_file():
        raise FileNotFoundError(f"{folder / (name + '.py')} is missing: is textdiff installed with its "
                                "package data (setup.cfg [options.package_data])?")
    return str(folder)
