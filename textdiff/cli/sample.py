"""``textdiff-sample run_dir=<dir>``: reload a run (its resolved config, tokenizer and best or last
checkpoint), sample, score, and write ``samples.jsonl`` and ``metrics.json`` (with ``bleu``).

    textdiff-sample run_dir=outputs/runs/2026-11-24/10-00-00
    textdiff-sample run_dir=<dir> ckpt=last sampler.num_steps=2000 clamp=false suffix=_k2000_noclamp
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from textdiff.cli.common import (
    CONF_DIR, ConfigError, attach_reranker, configure_logging, load_judges, load_run, register_resolvers,
    resolve_device,
)
from textdiff.data.sources import DataError

log = logging.getLogger("textdiff")
register_resolvers()


def _or_run(cfg: DictConfig, run_cfg: DictConfig, key: str, default: int) -> int:
    """``cfg.<key>``, else the run's ``eval.<key>``, else ``default``."""
    value = cfg.get(key)
    if value is None:
        value = OmegaConf.select(run_cfg, f"eval.{key}", default=default)
    return int(value)


def sample(cfg: DictConfig) -> dict[str, Any]:
    """Run the sampling job described by a ``sample.yaml`` config; returns the metrics."""
    from textdiff.evaluation import evaluate, format_metrics, write_outputs

    configure_logging()
    run_dir = Path(cfg.run_dir)
    model, dm, run_cfg, path = load_run(run_dir, cfg.ckpt, resolve_device(cfg.device))
    attach_reranker(model, cfg.get("reranker"), dm.tokenizer)
    overrides = {k: v for k, v in OmegaConf.to_container(cfg.sampler, resolve=True).items() if v is not None}
    extra = {"clamp": bool(cfg.clamp)} if cfg.get("clamp") is not None else {}
    for node in (OmegaConf.select(run_cfg, "eval.generate"), cfg.get("generate")):  # the run's, then ours
        if node is not None:
            extra.update({k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if v is not None})
    records, metrics = evaluate(
        model, dm, split=cfg.split, num_samples=cfg.num_samples, batch_size=int(cfg.batch_size),
        seed=int(cfg.seed), nll_batches=_or_run(cfg, run_cfg, "nll_batches", 4),
        nll_num_t=_or_run(cfg, run_cfg, "nll_num_t", 8), sampler=overrides,
        generate_kwargs=extra,
        judges=load_judges(cfg.get("lm") or OmegaConf.select(run_cfg, "eval.lm"),
                           cfg.get("classifier") or OmegaConf.select(run_cfg, "eval.classifier"), str(model.device),
                           cfg.get("mauve") or OmegaConf.select(run_cfg, "eval.mauve")),
    )
    metrics["checkpoint"] = str(path)
    metrics.update({f"gen_{k}": v for k, v in extra.items()})
    out_dir = Path(cfg.out_dir) if cfg.get("out_dir") else run_dir
    samples_path, metrics_path = write_outputs(out_dir, records, metrics, suffix=str(cfg.suffix or ""))
    print("\n".join(r.get("text", r.get("hypothesis", "")) for r in records[:5]))
    print(format_metrics(metrics))
    print(f"wrote {samples_path} and {metrics_path}")
    return metrics


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="sample")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        sample(cfg)
    except (ConfigError, DataError) as err:  # bad config, run directory, checkpoint or data: no traceback
        raise SystemExit(f"textdiff-sample: {err}") from None


def main() -> None:
    """Console entry point (``textdiff-sample``)."""
    _hydra_main()


if __name__ == "__main__":
    main()
