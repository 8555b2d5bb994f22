"""``textdiff-report``: collect run directories into one table (Markdown + CSV) and plots.

    textdiff-report outputs/multirun/2026-11-30/12-00-00                  # a Hydra sweep: print the table
    textdiff-report multirun/2026-11-30/12-00-00 --metrics bleu,chrf --out reports/ablation
    textdiff-report outputs/runs --metrics-file k5 --columns sampler.num_steps --sort=-bleu
    textdiff-report run_a run_b --metrics 'dist-*,bleu' --precision 2

A *run directory* holds ``config.yaml`` and a ``metrics*.json`` (what ``textdiff-train`` and
``textdiff-sample ... suffix=_k5`` write); every path given is searched recursively for them, so a
single run, a multirun sweep (``0/``, ``1/``, ...) or a whole ``outputs/`` tree all work.

* Columns: by default the Hydra overrides (``.hydra/overrides.yaml``) whose values differ between
  the runs; without overrides files, the resolved config keys that differ (``paths.*`` ignored).
  ``--columns a,b`` forces them. A run without an override for a column shows its config value.
* Rows: runs with equal column values, i.e. differing only in ``--seed-key`` (``seed``), form one
  group. Each metric cell is ``mean ± std`` over the group, with the *sample* standard deviation
  (ddof=1); the std of a single run is ``–``. A metric some runs lack is averaged over those that
  have it (``(n=k)`` marks this); a metric no run of a group has is an empty cell.
* Metrics: the numeric leaves of ``metrics.json``, nested keys flattened with dots
  (``sampler.num_steps``); strings, booleans and lists are skipped; "nan"/"inf" count as numbers.
  By default every top-level metric is reported; nested ones (settings echoed by textdiff-sample,
  e.g. ``sampler.*``, ``generate.*``) only when ``--metrics`` names them (globs allowed).
* ``--out DIR`` writes ``report.md``, ``report.csv`` (one row per group: the columns, ``n``,
  ``seeds``, ``runs``, then ``<metric>_mean``, ``<metric>_std``, ``<metric>_n``, full precision) and
  ``<metric>_vs_<column>.png`` for every numeric column with two or more values (error bars: std;
  one line per combination of the other columns).
* ``--frontier`` (with ``--out``) adds ``frontier_lm_ppl_vs_entropy.png``: the judge's perplexity against the
  samples' entropy, one curve per run through all its metrics files (``metrics_k10.json``, ``metrics_t0.7.json``:
  a sampling knob's sweep); ``--frontier x,y`` plots other metrics (repeatable). ``--learning-curves`` adds
  ``curve_<metric>_vs_{train_seconds,train_flops}.png`` from each run's ``learning_curve.jsonl``
  (``textdiff.cli.report_plots``).
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import io
import json
import logging
import math
import os
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

log = logging.getLogger("textdiff.report")
SKIP_DIRS = {"checkpoints", "tokenizer", "csv", "tensorboard", "wandb", "__pycache__"}
NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
GLOB = re.compile(r"[*?\[]")


class ReportError(ValueError):
    """A path or file that cannot be reported on; the message names it."""


@dataclass
class Run:
    """One metrics file of one run directory."""

    path: Path
    metrics_file: str
    config: dict[str, Any]                 # the resolved config, flattened with dotted keys
    overrides: Optional[dict[str, Any]]    # .hydra/overrides.yaml as {key: value}; None without one
    metrics: dict[str, float]              # the numeric metrics, flattened with dotted keys

    def value(self, key: str) -> Any:
        """The run's value of a column: its override, else its config value (None if neither)."""
        if key == "metrics_file":
            return self.metrics_file
        if self.overrides and key in self.overrides:
            return self.overrides[key]
        return self.config.get(key)


@dataclass
class Group:
    """Runs with the same column values; ``stats[metric] = (mean, std or None, n)``."""

    values: dict[str, Any]
    runs: list[Run]
    stats: dict[str, tuple[Optional[float], Optional[float], int]] = field(default_factory=dict)


@dataclass
class Table:
    """The summary: ``columns`` (config keys), ``metrics`` and one ``Group`` per row."""

    columns: list[str]
    metrics: list[str]
    groups: list[Group]
    seed_key: str = "seed"


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b.c": leaf}`` (lists are leaves)."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def as_number(value: Any) -> Optional[float]:
    """A config or metric value as a float (numbers and numeric strings, "nan"/"inf" included); None for
    booleans, None and other strings."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


def _metric(value: Any) -> Optional[float]:
    if isinstance(value, str):
        return NONFINITE.get(value.strip().lower())
    return None if isinstance(value, bool) or not isinstance(value, (int, float)) else float(value)


def _read(path: Path, kind: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if kind == "json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise ReportError(f"{path}: malformed {kind.upper()} ({str(err).splitlines()[0]})") from None


def _parse_override(line: Any) -> Optional[tuple[str, Any]]:
    if not isinstance(line, str) or "=" not in line:
        return None  # e.g. "~key" (a deletion): no value to show
    key, raw = line.split("=", 1)
    key = key.lstrip("+~")
    if key.startswith("hydra.") or key.startswith("hydra/"):
        return None
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key, value if value is None or isinstance(value, (str, int, float, bool)) else raw


def metrics_pattern(spec: str) -> str:
    """``--metrics-file`` -> a file-name glob: ``k5`` or ``_k5`` -> ``metrics_k5.json``; a name ending in
    ``.json`` or holding ``* ? [`` is used as is (``metrics*.json``: every metrics file, one row each)."""
    if spec.endswith(".json") or GLOB.search(spec):
        return spec
    return f"metrics{spec if spec.startswith('_') else '_' + spec}.json"


def load_run(run_dir: Path, metrics_file: str = "metrics.json") -> Run:
    """Read one run directory's ``config.yaml``, ``.hydra/overrides.yaml`` and a metrics file."""
    run_dir = Path(run_dir)
    config = _read(run_dir / "config.yaml", "yaml") or {}
    if not isinstance(config, dict):
        raise ReportError(f"{run_dir / 'config.yaml'}: expected a mapping")
    overrides = None
    if (run_dir / ".hydra" / "overrides.yaml").is_file():
        lines = _read(run_dir / ".hydra" / "overrides.yaml", "yaml") or []
        if not isinstance(lines, list):
            raise ReportError(f"{run_dir / '.hydra' / 'overrides.yaml'}: expected a list of key=value")
        overrides = dict(kv for kv in (_parse_override(x) for x in lines) if kv)
    raw = _read(run_dir / metrics_file, "json")
    if not isinstance(raw, dict):
        raise ReportError(f"{run_dir / metrics_file}: expected a JSON object")
    metrics = {k: v for k, v in ((k, _metric(v)) for k, v in flatten(raw).items()) if v is not None}
    return Run(run_dir, metrics_file, flatten(config), overrides, metrics)


def _natural(name: str) -> list[Any]:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part]


def find_run_dirs(path: Path) -> list[Path]:
    """Run directories (``config.yaml`` + a ``metrics*.json``) at or under ``path``, in natural order."""
    path = Path(path)
    if not path.exists():
        raise ReportError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise ReportError(f"{path}: not a directory (give a run directory or a folder of runs)")
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted((d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")), key=_natural)
        if "config.yaml" in files and any(fnmatch.fnmatch(f, "metrics*.json") for f in files):
            found.append(Path(root))
        elif "config.yaml" in files:
            log.info("skipped %s: config.yaml but no metrics*.json (a failed or unfinished run?)", root)
    if not found:
        raise ReportError(f"{path}: no run directories found (a run directory holds config.yaml and a metrics*.json)")
    return found


def collect_runs(paths: Sequence[Any], metrics_file: str = "metrics.json") -> list[Run]:
    """Every run under ``paths`` (run dirs, sweep dirs or any folders), one ``Run`` per matching metrics
    file; ``metrics_file`` is a name, a glob or a ``textdiff-sample`` suffix (see ``metrics_pattern``)."""
    pattern, runs, seen = metrics_pattern(metrics_file), [], set()
    for path in paths:
        matched = 0
        for run_dir in find_run_dirs(Path(path)):
            if run_dir.resolve() in seen:
                continue
            seen.add(run_dir.resolve())
            names = sorted((p.name for p in run_dir.iterdir() if fnmatch.fnmatch(p.name, pattern)), key=_natural)
            if not names:
                log.info("skipped %s: no %s", run_dir, pattern)
            runs.extend(load_run(run_dir, name) for name in names)
            matched += len(names)
        if not matched:
            raise ReportError(f"{path}: no run directory here has a metrics file matching {pattern}")
    return runs


def varying_keys(runs: Sequence[Run], seed_key: str = "seed") -> list[str]:
    """The override keys whose values differ between runs (config keys, ``paths.*`` aside, when a run has no
    overrides file), then ``metrics_file`` if several were read; ``seed_key`` is never one."""
    if all(r.overrides is not None for r in runs):
        candidates = list(dict.fromkeys(k for r in runs for k in r.overrides))
    else:
        candidates = [k for k in dict.fromkeys(k for r in runs for k in r.config) if not k.startswith("paths.")]
    candidates.append("metrics_file")
    return [k for k in candidates if k != seed_key and len({_key(r.value(k)) for r in runs}) > 1]


def _key(value: Any) -> Any:
    number = as_number(value)
    return ("n", number) if number is not None else ("s", show_value(value))


def show_value(value: Any) -> str:
    """A value as a table cell: "" for None, lowercase true/false, else ``str``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _sort_key(value: Any) -> tuple:
    number = as_number(value)
    # strings in natural order: metrics_k10 < metrics_k50 < metrics_k200
    return ((0, 0.0, []) if value is None else (1, number, []) if number is not None
            else (2, 0.0, _natural(show_value(value))))


def _stats(values: list[float]) -> tuple[Optional[float], Optional[float], int]:
    n = len(values)
    if n == 0:
        return None, None, 0
    if not all(math.isfinite(v) for v in values):
        return sum(values) / n, (math.nan if n > 1 else None), n
    return float(statistics.mean(values)), (float(statistics.stdev(values)) if n > 1 else None), n


def summarize(runs: Sequence[Run], group_by: Optional[Sequence[str]] = None, metrics: Optional[Sequence[str]] = None,
              seed_key: str = "seed", sort: Optional[str] = None) -> Table:
    """Group ``runs`` by the values of ``group_by`` (default: ``varying_keys``) and compute, per group and
    metric, the mean, the sample std (ddof=1; None for one run) and n. ``metrics``: names or globs (default:
    every top-level metric found, in order of appearance; nested values such as ``sampler.num_steps`` echo settings
    and are only reported when named). ``sort``: a column or metric, ``-name`` for descending."""
    if not runs:
        raise ReportError("no runs to summarize")
    columns = list(group_by) if group_by is not None else varying_keys(runs, seed_key)
    found = list(dict.fromkeys(m for r in runs for m in r.metrics))
    chosen: list[str] = []
    for spec in metrics if metrics is not None else [m for m in found if "." not in m]:
        names = [m for m in found if fnmatch.fnmatchcase(m, spec)] if GLOB.search(spec) else [spec]
        if not names or not any(n in found for n in names):
            log.warning("metric %r is in none of the runs (found: %s)", spec, ", ".join(found))
        chosen.extend(n for n in names if n not in chosen)
    groups: dict[tuple, Group] = {}
    for run in runs:
        key = tuple(_key(run.value(c)) for c in columns)
        groups.setdefault(key, Group({c: run.value(c) for c in columns}, [])).runs.append(run)
    for group in groups.values():
        group.stats = {m: _stats([r.metrics[m] for r in group.runs if m in r.metrics]) for m in chosen}
    rows = sorted(groups.values(), key=lambda g: tuple(_sort_key(g.values[c]) for c in columns))
    if sort:
        name, descending = sort.lstrip("-"), sort.startswith("-")
        if name in columns:
            rows.sort(key=lambda g: _sort_key(g.values[name]), reverse=descending)
        elif name in chosen:
            present = [g for g in rows if g.stats[name][0] is not None]
            present.sort(key=lambda g: g.stats[name][0], reverse=descending)
            rows = present + [g for g in rows if g.stats[name][0] is None]  # missing values last
        else:
            raise ReportError(f"--sort {sort}: not a column ({', '.join(columns)}) or metric of the table")
    return Table(columns, chosen, rows, seed_key)


def _cell(stat: tuple[Optional[float], Optional[float], int], n_runs: int, precision: int) -> str:
    mean, std, n = stat
    if mean is None:
        return ""
    text = f"{mean:.{precision}f} ± {'–' if std is None else f'{std:.{precision}f}'}"
    return text + (f" (n={n})" if n < n_runs else "")


def to_markdown(table: Table, precision: int = 3) -> str:
    """The table as GitHub Markdown: the columns, ``n`` (runs in the group), then ``mean ± std`` per metric."""
    header = [*table.columns, "n", *table.metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for g in table.groups:
        cells = [show_value(g.values[c]) for c in table.columns] + [str(len(g.runs))]
        cells += [_cell(g.stats[m], len(g.runs), precision) for m in table.metrics]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(table: Table, path: Optional[Any] = None) -> str:
    """The table as CSV (one row per group; ``<metric>_mean/_std/_n`` at full precision, blank when
    absent); written to ``path`` when given. Returns the text."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*table.columns, "n", "seeds", "runs"]
                    + [f"{m}_{s}" for m in table.metrics for s in ("mean", "std", "n")])
    for g in table.groups:
        seeds = ";".join(show_value(r.value(table.seed_key)) for r in g.runs)
        row = ([show_value(g.values[c]) for c in table.columns]
               + [len(g.runs), seeds, ";".join(str(r.path) for r in g.runs)])
        for m in table.metrics:
            mean, std, n = g.stats[m]
            row += ["" if mean is None else repr(mean), "" if std is None else repr(std), n]
        writer.writerow(row)
    if path is not None:
        Path(path).write_text(buf.getvalue(), encoding="utf-8")
    return buf.getvalue()


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


def _split(text: Optional[str]) -> Optional[list[str]]:
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console entry point (``textdiff-report``); see the module docstring."""
    p = argparse.ArgumentParser(prog="textdiff-report", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="run directories, sweep directories or folders searched for runs")
    p.add_argument("--metrics", help="comma-separated metric names or globs (default: every top-level numeric metric)")
    p.add_argument("--metrics-file", default="metrics.json",
                   help="metrics file name, glob ('metrics*.json') or textdiff-sample suffix ('k5' -> metrics_k5.json)")
    p.add_argument("--columns", help="comma-separated config keys to group by (default: the overrides that vary)")
    p.add_argument("--seed-key", default="seed", help="runs differing only in this key are averaged (default: seed)")
    p.add_argument("--sort", help="a column or metric to sort rows by; --sort=-name sorts descending")
    p.add_argument("--precision", type=int, default=3, help="decimals in the Markdown table (default: 3)")
    p.add_argument("--out", help="folder for report.md, report.csv and <metric>_vs_<column>.png")
    p.add_argument("--frontier", nargs="?", const="entropy,lm_ppl", metavar="X,Y", action="append",
                   help="with --out: plot Y against X over every metrics file of each run (default: entropy,lm_ppl); "
                        "repeat it for several plots")
    p.add_argument("--learning-curves", action="store_true",
                   help="with --out: plot each run's learning_curve.jsonl against training time and FLOPs")
    args = p.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("textdiff-report: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        _report(args)
    except ReportError as err:
        raise SystemExit(f"textdiff-report: error: {err}") from None
    finally:
        log.removeHandler(handler)


def _report(args: argparse.Namespace) -> None:
    """Print the table; with ``--out``, write report.md, report.csv and the plots."""
    if (args.frontier or args.learning_curves) and not args.out:
        raise ReportError("--frontier and --learning-curves write plots: give --out DIR")
    frontiers = [_split(spec) for spec in args.frontier or []]
    for spec, pair in zip(args.frontier or [], frontiers):
        if len(pair) != 2:
            raise ReportError(f"--frontier {spec}: expected two metric names, X,Y")
    runs = collect_runs(args.paths, args.metrics_file)
    table = summarize(runs, _split(args.columns), _split(args.metrics), args.seed_key, args.sort)
    markdown = to_markdown(table, args.precision)
    print(markdown, end="")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        note = (f"{len(runs)} runs from {', '.join(map(str, args.paths))}; cells are mean ± sample std "
                f"(ddof=1) over the n runs of a row (differing only in `{args.seed_key}`); – = a single run.\n")
        (out / "report.md").write_text(note + "\n" + markdown, encoding="utf-8")
        to_csv(table, out / "report.csv")
        try:
            pngs = plot(table, out)
            if frontiers or args.learning_curves:
                from textdiff.cli.report_plots import CurveError, plot_frontier, plot_learning_curves

                # the frontier reads every metrics file of a run (the table's runs, when they are those already)
                every = (runs if not frontiers or metrics_pattern(args.metrics_file) == "metrics*.json"
                         else collect_runs(args.paths, "metrics*.json"))
                names = [c for c in table.columns if c != "metrics_file"]
                labels = {r.path: ", ".join(show_value(r.value(c)) for c in names) for r in every}
                for pair in frontiers:
                    png = plot_frontier(every, labels, out, *pair)
                    pngs += [png] if png else []
                if args.learning_curves:
                    try:
                        pngs += plot_learning_curves(runs, labels, out)
                    except CurveError as err:
                        raise ReportError(str(err)) from None
        except ImportError:
            pngs = []
            log.warning("matplotlib is not installed: no plots (pip install matplotlib)")
        log.info("wrote %s, %s and %d plots", out / "report.md", out / "report.csv", len(pngs))


if __name__ == "__main__":
    main()
