"""``textdiff-sample run_dir=<dir>``: reload a run (its resolved config, tokenizer and best or last
checkpoint), sample, score, and write ``samples.jsonl`` and ``metrics.json`` (with ``bleu``).

    textdiff-sample run_dir=outputs/runs/2026-11-24/10-00-00
    textdiff-sample run_dir=<dir> ckpt=last sampler.num_steps=2000 clamp=false suffix=_k2000_noclamp
    textdiff-sample run_dir=<dir> infill=templates.txt     # fill the "_" of each line (Diffusion-LM)
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Optional

import hydra
from omegaconf import DictConfig, OmegaConf

from textdiff.cli.common import (
    CONF_DIR, ConfigError, check_renamed_overrides, configure_logging, register_resolvers, resolve_device,
)
from textdiff.cli.runs import attach_reranker, load_judges, load_run
from textdiff.data.sources import DataError
from textdiff.families.interface import GuidesLatents, Infills

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
    from textdiff.run.evaluation import evaluate, format_metrics, sampler_of, score_with_judges, write_outputs

    configure_logging()
    run_dir = Path(cfg.run_dir)
    model, dm, run_cfg, path = load_run(run_dir, cfg.ckpt, resolve_device(cfg.device))
    overrides = {k: v for k, v in OmegaConf.to_container(cfg.sampler, resolve=True).items() if v is not None}
    try:  # a sampler.* override that does not fit the model fails here, named, before anything is drawn
        sampler_of(model, overrides)
    except (TypeError, ValueError) as err:
        given = " ".join(f"sampler.{k}={v}" for k, v in overrides.items())
        raise ConfigError(f"{given}: {err}") from None
    extra = {"clamp": bool(cfg.clamp)} if cfg.get("clamp") is not None else {}
    if cfg.get("infill"):
        return infill(cfg, model, dm, run_dir, path, {**overrides, **extra})
    attach_reranker(model, cfg.get("reranker"), dm.tokenizer)
    for node in (OmegaConf.select(run_cfg, "eval.generate"), cfg.get("generate")):  # the run's, then ours
        if node is not None:
            extra.update({k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if v is not None})
    control = _control_hook(cfg, model, overrides)
    judges = load_judges(cfg.get("lm") or OmegaConf.select(run_cfg, "eval.lm"),
                         cfg.get("classifier") or OmegaConf.select(run_cfg, "eval.classifier"), str(model.device),
                         cfg.get("mauve") or OmegaConf.select(run_cfg, "eval.mauve"))
    records, metrics = evaluate(
        model, dm, split=cfg.split, num_samples=cfg.num_samples, batch_size=int(cfg.batch_size),
        seed=int(cfg.seed), nll_batches=_or_run(cfg, run_cfg, "nll_batches", 4),
        nll_num_t=_or_run(cfg, run_cfg, "nll_num_t", 8), sampler=overrides,
        generate_kwargs={**extra, **({"step_hooks": [control[0]]} if control else {})},
        judges=judges if not control else {k: v for k, v in judges.items() if k != "classifier"},
    )
    if control:
        hook, clf, label = control
        if clf.attribute == "length":  # steered towards a length: exact match of the samples' token counts
            for r in records:
                r["target_length"], r["length"] = int(label), len(dm.tokenizer.encode(r.get("text", "")))
            n = max(len(records), 1)
            metrics["length_match"] = sum(r["length"] == r["target_length"] for r in records) / n
            metrics["length_mae"] = sum(abs(r["length"] - r["target_length"]) for r in records) / n
        else:  # steered towards one class: the clean-text classifier checks it
            for r in records:
                r["class"] = label
            metrics.update(score_with_judges(records, {"classifier": judges.get("classifier")}, clf.classes))
        metrics.update({"control_label": label, "control_grad_steps": hook.grad_steps,
                        **{f"control_{k}": getattr(hook, k) for k in ("steps", "lr", "fluency", "t_min")}})
    metrics["checkpoint"] = str(path)
    metrics.update({f"gen_{k}": v for k, v in extra.items()})
    out_dir = Path(cfg.out_dir) if cfg.get("out_dir") else run_dir
    samples_path, metrics_path = write_outputs(out_dir, records, metrics, suffix=str(cfg.suffix or ""))
    print("\n".join(r.get("text", r.get("hypothesis", "")) for r in records[:5]))
    print(format_metrics(metrics))
    print(f"wrote {samples_path} and {metrics_path}")
    return metrics


def _control_hook(cfg: DictConfig, model: Any, sampler_overrides: dict[str, Any]) -> Optional[tuple[Any, Any, str]]:
    """``control.classifier=<NoisyClassifier run>`` and ``control.label=<class>``: the ClassifierGuidance hook
    for ``model`` (its sampler with ``sampler_overrides``), the classifier (its ``classes`` and ``attribute``
    say how to score) and the label; None without ``control.classifier``."""
    import torch

    from textdiff.core.control import ClassifierGuidance

    ctl = cfg.get("control") or {}
    if not ctl.get("classifier"):
        return None
    clf, _, _, _ = load_run(Path(ctl.classifier), "last", str(model.device))
    if not isinstance(clf, GuidesLatents):
        raise ConfigError(f"control.classifier={ctl.classifier} is not a NoisyClassifier run "
                          "(experiment=diffusion_lm_e2e_control_cpu)")
    if not hasattr(model, "embedding") or not torch.equal(clf.diffusion.embedding.weight.cpu(),
                                                          model.embedding.weight.cpu()):
        raise ConfigError(f"control.classifier={ctl.classifier} was trained on another diffusion model's latents "
                          "(its model.diffusion.checkpoint must be this run's checkpoint)")
    label = None if ctl.get("label") is None else str(ctl.label)  # a length label arrives as an int
    if label not in (clf.classes or []):
        raise ConfigError(f"control.label={label!r}: the classifier's classes are {clf.classes}")
    hook = ClassifierGuidance.for_sampler(model.build_sampler(**sampler_overrides), clf.nll(clf.classes.index(label)),
                                          steps=int(ctl.steps), lr=float(ctl.lr), fluency=float(ctl.fluency),
                                          t_min=float(ctl.t_min))
    return hook, clf, label


def infill(cfg: DictConfig, model: Any, dm: Any, run_dir: Path, checkpoint: Path,
           generate_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``infill=<file>``: fill the blanks of each template line (``infill_blank``, default ``_``) with
    ``model.infill`` (``generate_kwargs``: sampler overrides, ``clamp``) and write ``infill{suffix}.jsonl``
    (template, text) into the run directory (or ``out_dir``). Returns a summary (templates, seconds, the
    checkpoint)."""
    import time

    from textdiff.data.sources import read_lines
    from textdiff.data.templates import encode_templates
    from textdiff.run.evaluation import write_jsonl

    if not isinstance(model, Infills):
        raise ConfigError(f"infill= needs a model with infill(); {type(model).__name__} has none")
    templates = read_lines(str(cfg.infill))
    tok = dm.tokenizer
    length = int(getattr(getattr(model, "network", None), "max_len", 0) or dm.max_len)
    context, fill = encode_templates(templates, tok, length, blank=str(cfg.infill_blank),
                                     add_bos_eos=bool(getattr(dm, "add_bos_eos", True)))
    start = time.perf_counter()
    ids = model.infill(context, fill, noise_context=bool(cfg.infill_noise_context), seed=int(cfg.seed),
                       **generate_kwargs)
    seconds = time.perf_counter() - start
    rows = [{"template": template, "text": tok.decode(row)} for template, row in zip(templates, ids.tolist())]
    out_dir = Path(cfg.out_dir) if cfg.get("out_dir") else run_dir
    path = write_jsonl(out_dir / f"infill{cfg.suffix or ''}.jsonl", rows)
    for row in rows[:5]:
        print(f"{row['template']}\n  -> {row['text']}")
    print(f"wrote {path}")
    return {"templates": len(templates), "seconds": round(seconds, 3), "checkpoint": str(checkpoint)}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="sample")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        sample(cfg)
    except (ConfigError, DataError) as err:  # bad config, run directory, checkpoint or data: no traceback
        raise SystemExit(f"textdiff-sample: {err}") from None


def main() -> None:
    """Console entry point (``textdiff-sample``)."""
    check_renamed_overrides(sys.argv[1:], "textdiff-sample")
    _hydra_main()


if __name__ == "__main__":
    main()
