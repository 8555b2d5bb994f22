"""``textdiff-report``'s plots across runs rather than across a table's column: the frontier (judge perplexity
against sample entropy, one curve per run as a sampling knob varies) and learning curves (quality against
training wall time and training FLOPs, one curve per run, from ``learning_curve.jsonl``).

Why a frontier: a judge's perplexity alone rewards low-entropy samples (low temperature, repetition, copied
training sentences); a model is only better than another if it reaches a lower perplexity *at the same
entropy*, so each run is drawn as the curve its sampling knob (K, temperature, top-p) traces, beside the
degenerate reference rows that every real model must beat.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

log = logging.getLogger("textdiff.report")
CURVE_FILE = "learning_curve.jsonl"
CURVE_X = {"train_seconds": "training wall time (s)", "train_flops": "training FLOPs (FlopCounterMode)"}


class CurveError(ValueError):
    """A malformed ``learning_curve.jsonl``; the message names the file and line."""


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _knob(metrics_file: str) -> str:
    """``metrics_k50.json`` -> ``k50``; ``metrics.json`` -> ``default``."""
    stem = Path(metrics_file).stem
    return stem[len("metrics_"):] if stem.startswith("metrics_") else "default"


def _figure():
    from matplotlib.figure import Figure  # the Agg canvas, no pyplot state

    fig = Figure(figsize=(7, 4.5))
    return fig, fig.add_subplot()


def _spans(values: Sequence[float]) -> bool:
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) and bool(positive) and max(positive) / min(positive) >= 100


def plot_frontier(runs: Sequence[Any], labels: Mapping[Path, str], out_dir: Any, x: str = "entropy",
                  y: str = "lm_ppl") -> Optional[Path]:
    """``frontier_<y>_vs_<x>.png`` and ``frontier_<y>_vs_<x>.csv`` in ``out_dir``: one curve per run directory
    through the (x, y) of each of its metrics files (``metrics.json``, ``metrics_k10.json``, ...),
    sorted by x and labelled with the file's suffix (the knob's value); y on a log scale when it spans >= 100x.

    Args:
        runs: every metrics file of the runs (``textdiff.cli.report.collect_runs(paths, "metrics*.json")``: objects
            with ``path``, ``metrics_file`` and ``metrics``).
        labels: each run directory's legend label (default: the directory's name).
        out_dir: the folder to write into (created).
        x, y: metric names (default: the samples' mean unigram entropy and the judge's perplexity).

    Returns:
        The PNG's path; None (and a warning) when no run has both metrics.
    """
    curves: dict[Path, list[tuple[float, float, str]]] = {}
    for run in runs:
        if x in run.metrics and y in run.metrics and math.isfinite(run.metrics[x]) and math.isfinite(run.metrics[y]):
            curves.setdefault(run.path, []).append((run.metrics[x], run.metrics[y], _knob(run.metrics_file)))
    labels = {path: labels.get(path) or path.name for path in curves}
    if not curves:
        log.warning("frontier: no run has both %s and %s", x, y)
        return None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = _figure()
    rows = []
    for path, points in curves.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=labels[path])
        for px, py, knob in points:
            ax.annotate(knob, (px, py), fontsize="x-small", textcoords="offset points", xytext=(3, 3))
            rows.append([labels[path], str(path), knob, repr(px), repr(py)])
    if _spans([p[1] for pts in curves.values() for p in pts]):
        ax.set_yscale("log")
    ax.set(xlabel=x, ylabel=y, title=f"{y} against {x} (lower right is better)")
    ax.legend(fontsize="x-small")
    fig.tight_layout()
    png = out / f"frontier_{_file_name(y)}_vs_{_file_name(x)}.png"
    fig.savefig(png, dpi=100)
    with png.with_suffix(".csv").open("w", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([["run", "path", "knob", x, y], *rows])
    return png


def read_curve(run_dir: Any) -> list[dict[str, Any]]:
    """The rows of ``<run_dir>/learning_curve.jsonl`` (``SampleAndScore(curve=...)``), in file order; a line that is
    not a JSON object raises ``CurveError`` naming the file and line. [] without the file."""
    path = Path(run_dir) / CURVE_FILE
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise CurveError(f"{path}:{i}: malformed JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise CurveError(f"{path}:{i}: expected a JSON object")
        rows.append(row)
    return rows


def plot_learning_curves(runs: Sequence[Any], labels: Mapping[Path, str], out_dir: Any,
                         metrics: Optional[Sequence[str]] = None) -> list[Path]:
    """``curve_<metric>_vs_<train_seconds|train_flops>.png`` and ``learning_curves.csv`` in ``out_dir``: for every
    run directory with a ``learning_curve.jsonl``, one line per run through its evaluations (a resumed run's rows
    are in step order; a step evaluated twice keeps its last row). A run that trained nothing (``global_step`` 0 in
    its ``metrics.json``: the degenerate reference rows) is a dashed horizontal line at its final value.

    Args:
        runs: the runs (objects with ``path``; several of one directory count once).
        labels: each run directory's legend label (default: the directory's name).
        out_dir: the folder to write into (created).
        metrics: the metrics to plot (default: those of ``lm_ppl``, ``bleu``, ``entropy``, ``corpus_entropy``,
            ``self_bleu``, ``dist-2``, ``chrf`` that some curve has).

    Returns:
        The PNGs written ([] and a warning when no run has a learning curve).
    """
    series: dict[Path, tuple[str, list[dict[str, Any]]]] = {}
    flat: dict[Path, tuple[str, dict[str, float]]] = {}  # untrained runs: their final metrics
    for run in runs:
        if run.path not in series:
            rows = {int(r["global_step"]): r for r in read_curve(run.path) if "global_step" in r}
            if rows:
                series[run.path] = (labels.get(run.path) or run.path.name, [rows[k] for k in sorted(rows)])
            elif run.metrics_file == "metrics.json" and run.metrics.get("global_step") == 0:
                flat[run.path] = (labels.get(run.path) or run.path.name, run.metrics)
    if not series:
        log.warning("learning curves: no run directory has a %s", CURVE_FILE)
        return []
    found = {k for _, rows in series.values() for r in rows for k, v in r.items() if isinstance(v, (int, float))}
    wanted = metrics or [m for m in ("lm_ppl", "bleu", "entropy", "corpus_entropy", "self_bleu", "dist-2", "chrf")
                         if m in found]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for metric in wanted:
        for x, xlabel in CURVE_X.items():
            fig, ax = _figure()
            xs_all, ys_all = [], []
            for label, rows in series.values():
                pts = [(r[x], r[metric]) for r in rows if isinstance(r.get(x), (int, float))
                       and isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=label)
                    xs_all += [p[0] for p in pts]
                    ys_all += [p[1] for p in pts]
            if not xs_all:
                continue
            for label, final in flat.values():
                if metric in final and math.isfinite(final[metric]):
                    ax.axhline(final[metric], linestyle="--", linewidth=1, color="grey")
                    ax.annotate(label, (min(xs_all), final[metric]), fontsize="x-small", color="grey",
                                textcoords="offset points", xytext=(0, 2))
            if _spans(xs_all):
                ax.set_xscale("log")
            if metric == "lm_ppl" and _spans(ys_all):
                ax.set_yscale("log")
            ax.set(xlabel=xlabel, ylabel=metric, title=f"{metric} during training")
            ax.legend(fontsize="x-small")
            fig.tight_layout()
            written.append(out / f"curve_{_file_name(metric)}_vs_{x}.png")
            fig.savefig(written[-1], dpi=100)
    keys = ["global_step", "fraction", "train_seconds", "train_flops", *wanted]
    with (out / "learning_curves.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["run", "path", *keys])
        for path, (label, rows) in series.items():
            for r in rows:
                writer.writerow([label, str(path), *("" if r.get(k) is None else r[k] for k in keys)])
    return written
