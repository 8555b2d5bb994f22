"""Plots of a ``textdiff-report`` table: each metric against each numeric swept column (matplotlib, the
Agg canvas; imported only when plots are asked for, so the tables work without matplotlib)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from textdiff.cli.report import Table, as_number, show_value


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def plot(table: Table, out_dir: Any) -> list[Path]:
    """``<metric>_vs_<column>.png`` in ``out_dir`` for each numeric column with >= 2 values: mean with std
    error bars, one line per combination of the other columns (log x when the values span >= 100x).
    Returns the files written; raises ImportError without matplotlib."""
    from matplotlib.figure import Figure  # the Agg canvas, no pyplot state

    out, written = Path(out_dir), []
    out.mkdir(parents=True, exist_ok=True)
    for column in table.columns:
        xs = [as_number(g.values[column]) for g in table.groups]
        if any(x is None for x in xs) or len(set(xs)) < 2:
            continue
        others = [c for c in table.columns if c != column]
        for metric in table.metrics:
            series: dict[str, list[tuple[float, float, float]]] = {}
            for x, g in zip(xs, table.groups):
                mean, std, _ = g.stats[metric]
                if mean is not None:
                    label = ", ".join(f"{c}={show_value(g.values[c])}" for c in others)
                    series.setdefault(label, []).append((x, mean, std or 0.0))
            if not series:
                continue
            fig = Figure(figsize=(6, 4))
            ax = fig.add_subplot()
            for label, points in series.items():
                points.sort()
                ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                            marker="o", capsize=3, label=label or None)
            if min(xs) > 0 and max(xs) / min(xs) >= 100:
                ax.set_xscale("log")
            ax.set(xlabel=column, ylabel=f"{metric} (mean ± std)", title=f"{metric} vs {column}")
            if any(series):
                ax.legend(fontsize="small")
            fig.tight_layout()
            written.append(out / f"{_safe(metric)}_vs_{_safe(column)}.png")
            fig.savefig(written[-1], dpi=100)
    return written
