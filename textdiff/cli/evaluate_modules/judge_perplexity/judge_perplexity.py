"""Perplexity of samples under a trained textdiff language-model run, as a Hugging Face ``evaluate`` metric.

A thin wrapper: ``_compute`` loads the judge with ``textdiff.cli.runs.load_judges`` (what ``textdiff-sample
lm=<run>`` and ``eval.lm`` use: the run's config.yaml rebuilt, its best checkpoint, its own tokenizer) and
scores with ``textdiff.metrics.fluency.lm_perplexity`` (what ``score_with_judges`` calls), so ``lm_ppl`` is
the number textdiff writes into ``metrics.json``. Load it offline with
``evaluate.load(textdiff.metrics.evaluate_module_path("judge_perplexity"))``.

Why this script lives in ``textdiff/cli/`` and not beside the other modules in ``textdiff/metrics/``:
rebuilding a run directory needs Hydra/OmegaConf (``textdiff.cli.runs``), and the layer rules (core < nn <
data < metrics < families < run < cli) forbid a module under ``textdiff/metrics`` from importing ``cli``.
``textdiff.metrics.evaluate_module_path("judge_perplexity")`` finds this folder by its path, importing
nothing from here.
"""
import datasets
import evaluate

from textdiff.cli.runs import load_judges
from textdiff.metrics.fluency import lm_perplexity

_DESCRIPTION = """\
Token-weighted corpus perplexity of the predictions under a decoder-only autoregressive language model
trained with textdiff (a run directory of textdiff-train, e.g. experiment=ar_lm_tatoeba_cpu), the "judge"
of textdiff's evaluation. Each text is re-tokenised with the judge's own tokenizer and framed as
[BOS] text [EOS]; PPL = exp(-(1/N) sum log p(w_i | w_<i)) over every predicted token (EOS included) of
every text. An empty text is scored as [BOS][EOS]; a text longer than max_len is truncated. lm_unk_rate
reports the share of out-of-vocabulary words (a high rate makes the perplexity flattering).
"""

_CITATION = """\
@inproceedings{li2022diffusionlm,
  title = {Diffusion-{LM} Improves Controllable Text Generation},
  author = {Li, Xiang Lisa and Thickstun, John and Gulrajani, Ishaan and Liang, Percy and Hashimoto, Tatsunori B.},
  booktitle = {Advances in Neural Information Processing Systems},
  year = {2022},
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the texts to judge.
    run_dir (`str`): a textdiff-train run directory of a decoder-only AR language model (its config.yaml,
        checkpoints/ and tokenizer/); its best checkpoint is loaded (last.ckpt when there is none).
    batch_size (`int`, defaults to 64): texts scored together.
    max_len (`int`, optional): length cap, BOS and EOS included (default: the judge network's max_len).
    device (`str`, defaults to "cpu"): where the judge runs.
Returns:
    lm_ppl (`float`): the perplexity; lm_nll (`float`): nats per predicted token; lm_tokens (`int`);
    lm_num_texts (`int`); lm_truncated (`int`): texts cut to max_len; lm_unk_rate (`float`).
Examples:
    >>> import evaluate
    >>> from textdiff.metrics import evaluate_module_path
    >>> judge = evaluate.load(evaluate_module_path("judge_perplexity"))
    >>> judge.compute(predictions=["the cat sat on the mat ."], run_dir="runs/ar_lm_tatoeba_cpu")["lm_ppl"]
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class JudgePerplexity(evaluate.Metric):
    """Perplexity under a textdiff AR LM run (``load_judges`` + ``textdiff.metrics.fluency.lm_perplexity``)."""

    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
            reference_urls=["https://arxiv.org/abs/2205.14217"],
        )

    def _compute(self, predictions, run_dir=None, batch_size=64, max_len=None, device="cpu"):
        if not run_dir:
            raise ValueError("judge_perplexity needs compute(..., run_dir=<a textdiff-train run directory of "
                             "an autoregressive language model>)")
        lm, tokenizer = load_judges(str(run_dir), None, device)["lm"]  # the run is loaded on every call
        return lm_perplexity(lm, tokenizer, list(predictions), batch_size=batch_size, max_len=max_len)
