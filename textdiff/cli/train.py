"""``textdiff-train``: compose a run with Hydra, train with Lightning, then sample and score.

    textdiff-train experiment=diffusion_lm_e2e_cpu
    textdiff-train experiment=diffusion_lm_e2e_cpu schedule=cosine sampler.num_steps=100
    textdiff-train -m experiment=diffusion_lm_e2e_cpu seed=1,2,3            # a sweep
    textdiff-train experiment=... hydra.run.dir=<dir> resume=true            # continue a killed run

The run directory (Hydra's) receives: ``config.yaml`` (resolved), ``tokenizer/``, ``checkpoints/``
(``last.ckpt`` and the best by val/loss), ``csv/`` and ``tensorboard/`` logs, ``samples.jsonl`` and
``metrics.json``.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from textdiff.cli.common import (
    CONF_DIR, ConfigError, build, build_datamodule, check_checkpoint_family, check_renamed_overrides, configure_logging,
    register_resolvers,
)
from textdiff.cli.runs import attach_reranker, load_judges
from textdiff.data.sources import DataError
from textdiff.families.base import NonFiniteLossError
from textdiff.families.interface import SavesArtifacts
from textdiff.run.callbacks import SampleAndScore

log = logging.getLogger("textdiff")
register_resolvers()


def _run_dir(cfg: DictConfig) -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # no Hydra context: Python use with a composed config
        return Path(OmegaConf.select(cfg, "paths.output_dir") or "outputs/run")


def _resume_path(cfg: DictConfig, run_dir: Path) -> Optional[str]:
    """``last.ckpt`` of ``run_dir`` to continue from: with ``resume=true`` (it must exist) or ``resume=auto`` (a
    fresh run when it does not: a multirun restarted after a kill continues the entrants it had started)."""
    mode = cfg.get("resume", False)
    if mode not in (True, False, "auto"):
        raise ConfigError(f"resume={mode!r}; expected true, false or auto")
    if not mode:
        return None
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.exists() and mode == "auto":
        return None
    if not last.exists():
        raise ConfigError(
            f"resume=true but there is no checkpoint at {last}; pass the killed run's directory as "
            "hydra.run.dir=<dir>"
        )
    check_checkpoint_family(last, cfg, where="this run's config")
    return str(last)


def accumulation_steps(global_batch_size: int, batch_size: int, world_size: int) -> int:
    """Micro-batches per optimizer step so that one step sees ``global_batch_size`` examples:
    ``global_batch_size / (batch_size * world_size)``, which must be a positive integer (ConfigError)."""
    per_step = int(batch_size) * int(world_size)
    if global_batch_size <= 0 or global_batch_size % per_step:
        raise ConfigError(
            f"global_batch_size={global_batch_size} is not a positive multiple of data.batch_size x processes = "
            f"{batch_size} x {world_size} = {per_step}; change data.batch_size or global_batch_size"
        )
    return global_batch_size // per_step


def _build_list(cfg: DictConfig, key: str) -> list[Any]:
    node = OmegaConf.select(cfg, key)
    if not node:
        return []
    return [build(cfg, f"{key}.{name}") for name in node if OmegaConf.select(cfg, f"{key}.{name}") is not None]


def _ddp_unused_parameters(model: Any, trainer: Any) -> None:
    """Under DDP, turn on ``find_unused_parameters`` for a model that declares some parameters may take no part
    in a step's loss (``ddp_find_unused_parameters = True``, e.g. LD4LG's self-conditioning null vector);
    without it DDP stops at the second step. Other models keep DDP's faster default."""
    from pytorch_lightning.strategies import DDPStrategy

    if getattr(model, "ddp_find_unused_parameters", False) and isinstance(trainer.strategy, DDPStrategy):
        kwargs = trainer.strategy._ddp_kwargs  # Lightning keeps the DistributedDataParallel kwargs here
        if not kwargs.get("find_unused_parameters"):
            kwargs["find_unused_parameters"] = True
            log.info("DDP: find_unused_parameters=True (%s may leave parameters out of a step's loss)",
                     type(model).__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train (and evaluate) from a composed config; returns the metrics. Usable without ``@hydra.main``
    when ``paths.output_dir`` is set."""
    import pytorch_lightning as pl

    from textdiff.run.evaluation import evaluate, format_metrics, write_outputs

    configure_logging()
    run_dir = _run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(int(cfg.seed), workers=True)
    ckpt_path = _resume_path(cfg, run_dir)

    dm = build_datamodule(cfg, run_dir)
    model = build(cfg, "model")
    policy = cfg.get("on_nonfinite_loss", "stop")
    if policy not in ("stop", "skip"):
        raise ConfigError(f"on_nonfinite_loss={policy!r}; expected 'stop' or 'skip'")
    model.on_nonfinite_loss = policy
    if cfg.get("compile") not in (None, False):  # torch.compile the family's networks (textdiff/compilation.py)
        from textdiff.run.compilation import compile_networks

        spec = OmegaConf.to_container(cfg.compile, resolve=True) if OmegaConf.is_config(cfg.compile) else cfg.compile
        try:
            compile_networks(model, spec)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    callbacks = _build_list(cfg, "callbacks")
    curve_judges: dict[str, Any] = {}  # the periodic sample-and-score's judge (its learning curve's lm_ppl)
    for cb in callbacks:
        if isinstance(cb, SampleAndScore) and cb.judge_run:
            if str(cb.judge_run) not in curve_judges:
                curve_judges[str(cb.judge_run)] = load_judges(cb.judge_run, None)["lm"]
            cb.lm = curve_judges[str(cb.judge_run)]
    if not OmegaConf.select(cfg, "trainer.enable_progress_bar", default=True):
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.ProgressBar)]
    loggers = _build_list(cfg, "logger")
    trainer = build(cfg, "trainer", callbacks=callbacks, logger=loggers or False)
    _ddp_unused_parameters(model, trainer)
    if cfg.get("global_batch_size"):
        if int(OmegaConf.select(cfg, "trainer.accumulate_grad_batches", default=1)) != 1:
            raise ConfigError("set global_batch_size or trainer.accumulate_grad_batches, not both")
        trainer.accumulate_grad_batches = accumulation_steps(int(cfg.global_batch_size), int(cfg.data.batch_size),
                                                             trainer.world_size)
        log.info("global batch %d = data.batch_size %d x %d processes x %d accumulated micro-batches",
                 cfg.global_batch_size, cfg.data.batch_size, trainer.world_size, trainer.accumulate_grad_batches)
    # written once every component is built, so a run that fails to start leaves no config.yaml behind
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("run dir: %s | %s | %.2fM trainable parameters | vocab %d | %d torch threads", run_dir,
             type(model).__name__, n_params / 1e6, dm.vocab_size, torch.get_num_threads())
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    fit_seconds = time.perf_counter() - start
    log.info("fit took %.1f s (%d optimizer steps)", fit_seconds, trainer.global_step)
    if isinstance(model, SavesArtifacts) and trainer.is_global_zero:  # e.g. LD4LG stage 0 exports its BART
        model.save_artifacts(run_dir, dm.tokenizer)

    # training cost: optimizer steps, examples they consumed (over all processes), trainable parameters, time
    examples = (int(trainer.global_step) * int(cfg.data.batch_size) * trainer.accumulate_grad_batches
                * trainer.world_size)
    metrics: dict[str, Any] = {"global_step": int(trainer.global_step), "train_examples": examples,
                               "trainable_params": int(n_params), "fit_seconds": round(fit_seconds, 1)}
    if cfg.get("evaluate", True) and trainer.is_global_zero and not getattr(trainer, "fast_dev_run", False):
        ev = cfg.eval
        attach_reranker(model, ev.get("reranker"), dm.tokenizer)
        lm_run = ev.get("lm")  # loaded once when the learning curve uses the same judge
        judges = load_judges(None if str(lm_run) in curve_judges else lm_run, ev.get("classifier"),
                             str(model.device), ev.get("mauve"))
        if str(lm_run) in curve_judges:
            judges["lm"] = curve_judges[str(lm_run)]
        records, scores = evaluate(
            model, dm, split=ev.split, num_samples=ev.num_samples, batch_size=int(ev.batch_size),
            seed=int(ev.seed), nll_batches=int(ev.nll_batches), nll_num_t=int(ev.nll_num_t),
            sampler=OmegaConf.to_container(ev.sampler, resolve=True) if ev.get("sampler") else None,
            generate_kwargs=OmegaConf.to_container(ev.generate, resolve=True) if ev.get("generate") else None,
            judges=judges,
        )
        metrics.update(scores)
        samples_path, metrics_path = write_outputs(run_dir, records, metrics)
        examples = "\n".join(f"  - {r.get('text', r.get('hypothesis'))}" for r in records[:5])
        log.info("samples (%s):\n%s\nscores on %s:\n%s\nwrote %s and %s", samples_path.name, examples, ev.split,
                 format_metrics(metrics), samples_path, metrics_path)
    return metrics


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> Optional[float]:
    try:
        metrics = train(cfg)
    except ConfigError as err:  # SystemExit passes through Hydra's error reporting untouched
        raise SystemExit(f"textdiff-train: config error: {err}") from None
    except DataError as err:  # met during fit (e.g. overflow=error on a long example)
        raise SystemExit(f"textdiff-train: data error: {err}") from None
    except NonFiniteLossError as err:
        raise SystemExit(f"textdiff-train: {err} (the last periodic checkpoint is kept: resume=true "
                         "continues from it)") from None
    value = metrics.get("bleu")
    return float(value) if isinstance(value, (int, float)) else None


def main() -> None:
    """Console entry point (``textdiff-train``)."""
    check_renamed_overrides(sys.argv[1:], "textdiff-train")
    _hydra_main()


if __name__ == "__main__":
    main()
