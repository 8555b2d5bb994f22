"""Lightning callbacks: periodic sample-and-score during training (rank 0 only), which can also record a
learning curve, and a progress bar for step-budgeted runs."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
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
    (BLEU against the split, self-BLEU, dist-n, entropy) and print ``show`` of them. A conditional model
    (``conditional = True``) translates the first ``num_samples`` validation sources instead and logs
    BLEU, chrF and ROUGE-L against their references. Rank 0 only; the model's
    current weights are used (the EMA weights while EMA is on: Lightning swaps them in for validation).

    With ``curve`` (a file path) every evaluation is also appended to a learning curve, one JSON object per
    line: ``global_step``, ``fraction`` (of ``trainer.max_steps``), ``train_seconds`` (wall-clock seconds of
    training so far, validation and these evaluations excluded), ``train_flops`` (floating-point operations
    of training so far: the first training batch's forward and backward pass counted by
    ``torch.utils.flop_counter.FlopCounterMode`` (matrix products, attention, convolutions, from the
    operands' shapes; the optimizer update and element-wise work are not counted), scaled to every batch
    trained by its size (``train_tokens``: its padded token positions, source and target, see ``_positions``;
    exact for fixed shapes, linear in the length otherwise), times the processes) and the scores. The clock and
    the counts are kept in checkpoints, so a resumed run continues its curve. ``lm`` (a (model, tokenizer)
    judge, see ``textdiff.run.evaluation.score_with_judges``; set by ``textdiff-train`` from ``judge_run``) adds the
    judge's perplexity of the samples (``lm_ppl``).

    Args:
        num_samples: samples per evaluation.
        every_n_validations: run at every n-th validation (1 = each).
        num_steps: sampler steps (None = the model's configured sampler).
        show: how many samples to print.
        seed: sampling seed (fixed, so successive evaluations are comparable).
        curve: path of the learning-curve file (JSON lines, appended); None = no curve.
        judge_run: run directory of an autoregressive LM judge (loaded by ``textdiff-train``); None = none.
    """

    def __init__(self, num_samples: int = 32, every_n_validations: int = 1, num_steps: Optional[int] = 50,
                 show: int = 3, seed: int = 0, curve: Optional[str] = None, judge_run: Optional[str] = None) -> None:
        self.num_samples, self.every, self.num_steps = num_samples, max(1, every_n_validations), num_steps
        self.show, self.seed = show, seed
        self.curve = Path(curve) if curve else None
        self.judge_run, self.lm = judge_run, None
        self._count = 0
        # learning-curve clock and FLOP count (kept in checkpoints: state_dict)
        self._seconds, self._first, self._tokens = 0.0, None, 0  # _first: (FLOPs, size) of the first batch
        self._since: Optional[float] = None
        self._counter: Any = None
        self._size = 0  # the current batch's positions

    # --- the learning curve's clock and FLOP count -------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The curve's clock, the first batch's FLOPs and size, the positions trained (restored on resume)."""
        return {"seconds": self._clock(), "first_batch": self._first, "tokens": self._tokens, "count": self._count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict``'s values."""
        self._seconds, self._tokens = float(state["seconds"]), int(state["tokens"])
        self._first = None if state["first_batch"] is None else tuple(state["first_batch"])
        self._count = int(state.get("count", 0))

    def _clock(self) -> float:
        return self._seconds + (time.perf_counter() - self._since if self._since is not None else 0.0)

    def _pause(self) -> None:
        self._seconds, self._since = self._clock(), None

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self.lm is not None:
            self.lm[0].to(pl_module.device)
        self._since = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._pause()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._pause()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.state.fn == "fit":  # validation inside fit: the training clock runs again
            self._since = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.curve is None:
            return
        self._size = _positions(batch)
        self._tokens += self._size  # counted here: a checkpoint written at this batch's end includes it
        if self._first is None and self._counter is None:
            from torch.utils.flop_counter import FlopCounterMode

            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._counter is not None:  # the first batch's forward and backward pass
            self._counter.__exit__(None, None, None)
            self._first, self._counter = (int(self._counter.get_total_flops()), self._size), None

    def on_exception(self, trainer: pl.Trainer, pl_module: Any, exception: BaseException) -> None:
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self._counter = None

    def _record(self, trainer: pl.Trainer, scores: dict[str, Any]) -> None:
        if self.curve is None:
            return
        flops = (None if self._first is None or not self._first[1]
                 else round(self._first[0] * self._tokens / self._first[1]) * trainer.world_size)
        row = {"global_step": int(trainer.global_step),
               "fraction": (trainer.global_step / trainer.max_steps if trainer.max_steps and trainer.max_steps > 0
                            else None),
               "train_seconds": round(self._clock(), 3), "train_flops": flops,
               "train_tokens": self._tokens * trainer.world_size, "num_samples": self.num_samples,
               "num_steps": self.num_steps,
               **{k: float(v) for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}}
        self.curve.parent.mkdir(parents=True, exist_ok=True)
        with self.curve.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    # --- sample and score ----------------------------------------------------------------------------------
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
        from textdiff.run.evaluation import generate_texts, sampler_of, score_with_judges, text_layout

        state = torch.random.get_rng_state()
        try:
            gen = generate_texts(pl_module, dm.tokenizer, self.num_samples, seed=self.seed,
                                 batch_size=self.num_samples, **text_layout(dm),
                                 sampler=sampler_of(pl_module, {"num_steps": self.num_steps}))
        finally:
            torch.random.set_rng_state(state)
        sentences = [s for row in gen["rows"] for s in row if s.strip()]
        if len(sentences) < 2:
            log.info("step %d: fewer than 2 non-empty samples yet", trainer.global_step)
            self._record(trainer, {"num_nonempty": len(sentences)})
            return
        refs = dm.texts("valid") if dm.has_split("valid") else dm.texts("train")[:2000]
        scores = score_unconditional(sentences, reference_set=refs)
        if self.lm is not None:
            scores.update(score_with_judges([{"text": s} for s in sentences], {"lm": self.lm}))
        for key in ("bleu", "self_bleu", "dist-1", "dist-2", "entropy", "corpus_entropy", "mean_length", "lm_ppl"):
            if key in scores:
                pl_module.log(f"sample/{key}", float(scores[key]), rank_zero_only=True)
        self._record(trainer, {**scores, "num_nonempty": len(sentences)})
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
        self._record(trainer, {k: v for k, v in scores.items() if k in ("bleu", "bleu_tok", "chrf", "rouge1",
                                                                          "rouge2", "rougeL", "num_samples")})
        shown = "\n".join(f"    {r['hypothesis']}  <=  {r['references'][0]}" for r in records[: self.show])
        log.info("step %d: BLEU on %d %s sources %.2f:\n%s", trainer.global_step, len(records), split,
                 scores["bleu"], shown)


def _positions(batch: Any) -> int:
    """The padded token positions of a batch, the measure ``SampleAndScore`` scales FLOPs by: the elements of its
    token-id tensors (a dict's ``ids``, ``src_ids``, ... : keys ending in "ids"), or of every integer tensor of two
    or more dimensions in a batch that is not a dict (through lists and tuples)."""
    if isinstance(batch, dict):
        ids = [v for k, v in batch.items() if str(k).endswith("ids") and isinstance(v, torch.Tensor)]
        return sum(v.numel() for v in ids) if ids else _positions(list(batch.values()))
    if isinstance(batch, torch.Tensor):
        return batch.numel() if batch.dim() >= 2 and not batch.is_floating_point() else 0
    if isinstance(batch, (list, tuple)):
        return sum(_positions(v) for v in batch)
    return 0


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
