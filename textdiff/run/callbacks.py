"""Lightning callbacks: periodic sample-and-score during training (rank 0 only) and a progress bar for
step-budgeted runs."""
from __future__ import annotations

import logging
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.utilities import rank_zero_only

from textdiff.families.interface import Generates

log = logging.getLogger(__name__)


class SampleAndScore(pl.Callback):
    """After every ``every_n_validations``-th validation, draw ``num_samples`` samples with
    ``num_steps`` sampler steps, log their scores against the validation split under ``sample/``
    (BLEU against the split, self-BLEU, dist-n) and print ``show`` of them. A conditional model
    (``conditional = True``) translates the first ``num_samples`` validation sources instead and logs
    BLEU, chrF and ROUGE-L against their references. Rank 0 only; the model's
    current weights are used (the EMA weights while EMA is on: Lightning swaps them in for validation).

    Args:
        num_samples: samples per evaluation.
        every_n_validations: run at every n-th validation (1 = each).
        num_steps: sampler steps (None = the model's configured sampler).
        show: how many samples to print.
        seed: sampling seed (fixed, so successive evaluations are comparable).
    """

    def __init__(self, num_samples: int = 32, every_n_validations: int = 1, num_steps: Optional[int] = 50,
                 show: int = 3, seed: int = 0) -> None:
        self.num_samples, self.every, self.num_steps = num_samples, max(1, every_n_validations), num_steps
        self.show, self.seed = show, seed
        self._count = 0

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking or not isinstance(pl_module, Generates):
            return
        self._count += 1
        if (self._count - 1) % self.every:
            return
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "tokenizer"):
            return
        if getattr(pl_module, "conditional", False):
            self._score_conditional(trainer, pl_module, dm)
            return
        from textdiff.metrics.text import score_unconditional
        from textdiff.run.evaluation import generate_texts, sampler_of

        state = torch.random.get_rng_state()
        try:
            block = getattr(dm, "padding", "pad") == "block"
            gen = generate_texts(pl_module, dm.tokenizer, self.num_samples, seed=self.seed,
                                 batch_size=self.num_samples, block=block,
                                 sampler=sampler_of(pl_module, {"num_steps": self.num_steps}))
        finally:
            torch.random.set_rng_state(state)
        sentences = [s for row in gen["rows"] for s in row if s.strip()]
        if len(sentences) < 2:
            log.info("step %d: fewer than 2 non-empty samples yet", trainer.global_step)
            return
        refs = dm.texts("valid") if dm.has_split("valid") else dm.texts("train")[:2000]
        scores = score_unconditional(sentences, reference_set=refs)
        for key in ("bleu", "self_bleu", "dist-1", "dist-2", "mean_length"):
            if key in scores:
                pl_module.log(f"sample/{key}", float(scores[key]), rank_zero_only=True)
        shown = "\n".join(f"    {s}" for s in sentences[: self.show])
        log.info("step %d samples (BLEU vs valid %.2f, dist-2 %.3f):\n%s", trainer.global_step,
                 scores.get("bleu", float("nan")), scores.get("dist-2", float("nan")), shown)

    def _score_conditional(self, trainer: pl.Trainer, pl_module: Any, dm: Any) -> None:
        """Translate the first ``num_samples`` validation sources and log BLEU against their references."""
        from textdiff.run.evaluation import evaluate_conditional

        split = "valid" if dm.has_split("valid") else "test"
        state = torch.random.get_rng_state()
        try:
            records, scores = evaluate_conditional(pl_module, dm, split=split, num_examples=self.num_samples,
                                                   seed=self.seed, sampler={"num_steps": self.num_steps})
        finally:
            torch.random.set_rng_state(state)
        for key in ("bleu", "chrf", "rougeL"):
            pl_module.log(f"sample/{key}", float(scores[key]), rank_zero_only=True)
        shown = "\n".join(f"    {r['hypothesis']}  <=  {r['references'][0]}" for r in records[: self.show])
        log.info("step %d: BLEU on %d %s sources %.2f:\n%s", trainer.global_step, len(records), split,
                 scores["bleu"], shown)


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar for runs budgeted in optimizer steps (``max_steps``, ``max_epochs: -1``):
    the epoch without the bogus total that ``max_epochs: -1`` prints (``Epoch 16``, not ``Epoch 16/-2``), and
    the optimizer step against ``max_steps`` among the bar's metrics (``step 1200/4000``). With a finite
    ``max_epochs`` the epoch keeps its total. Takes RichProgressBar's arguments."""

    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        text = f"Epoch {current_epoch}"
        return f"{text:{len(self.validation_description)}}"  # the padding RichProgressBar uses (no flicker)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """The bar's metrics, with ``step`` = "<optimizer step>/<max_steps>" first when there is a step budget."""
        metrics = super().get_metrics(trainer, pl_module)
        if trainer.max_steps is not None and trainer.max_steps > 0:
            metrics = {"step": f"{trainer.global_step}/{trainer.max_steps}", **metrics}
        return metrics
