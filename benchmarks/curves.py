"""Quality against speed of a trained run's decoding: one JSON and one PNG per run (issue 20, item 6).

For a ``textdiff-train`` run directory this decodes the run's test split with a grid of sampler settings and
records, per setting, the quality (BLEU of the run's own evaluation: against the whole test split for
unconditional models, against each source's references for conditional ones; self-BLEU too), sentences per
second and network evaluations per sequence. The grid follows the model's process:

- absorbing (DiffusionBERT): the configured ancestral sampler at K in ``--ks`` (and the preset's K), and the
  parallel-decoding policies of ``textdiff.core.unmasking``: confidence-ordered (``prob`` and ``margin``),
  confidence-threshold (tau in ``--taus``) and semi-autoregressive blocks;
- Gaussian, unconditional (Diffusion-LM, LD4LG): the configured sampler, DDIM (eta = 0), DPM-Solver++(2M) and, for
  an ancestral preset with the posterior variance, SDE-DPM-Solver++(2M) at each K;
- Gaussian, conditional (Difformer): K x candidates (1 x 1, 3 x 2, 7 x 3), early stopping at K / 4 as the
  preset's 20 / 5, and both DPM-Solver++(2M) forms at 3 x 2 (no early stopping).

The sampler's overhead over its bare denoiser calls is measured too, on the trained model at the run's own
settings (``sampler_overhead`` in the JSON; ``--no-overhead`` skips it; ``--overhead-only`` measures it alone into
the run's existing JSON, e.g. after a change to the sampler, with that entry's own date and command).

``--ar-run`` adds an autoregressive baseline's points on the same axes (its KV-cached decoding: greedy and beam 4
for a translation model, ancestral sampling for a language model). ``--latency N`` also decodes the first N test
sources (or samples) one at a time (batch 1) with the fastest settings and the AR greedy decoder.

    python -m benchmarks.curves --run-dir outputs/curves/dbert_tatoeba --name diffusion_bert \\
        [--ar-run DIR] [--ks 5,10,20,50,200] [--num 200] [--latency 50] [--device cpu] [--quick] \\
        [--sampler closed_form_posterior=true ...]

Writes ``benchmarks/results/curves_<name>_<device>[_quick].json`` and ``.png``. One thread by default
(``--threads``), as the other benchmarks; the machine's load is recorded.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

from benchmarks.common import RESULTS, machine, result_path, write_result

DEFAULT_KS = (5, 10, 20, 50, 200)
DEFAULT_TAUS = (0.5, 0.7, 0.9, 0.95)
CANDIDATES = ((1, 1), (3, 2), (7, 3))


def parse_settings(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings (``--sampler``) -> a dict, each value read as YAML (true, 0.5, null, text).
    A malformed item raises ``SystemExit`` naming it."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--sampler {item!r}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


def absorbing_grid(ks: list[int], taus: list[float], preset_k: int, conditional: bool) -> list[dict[str, Any]]:
    """The settings of an absorbing model: (curve, label, sampler overrides) dicts. The policies draw the revealed
    tokens from x0 for an unconditional model (argmax would give one sample per length: self-BLEU 98.9 on the
    DiffusionBERT Tatoeba preset) and take its argmax for a conditional one (LLaDA's default)."""
    draw = "argmax" if conditional else "sample"
    grid = [{"curve": "ancestral (preset)", "label": f"K={k}", "sampler": {"num_steps": k}}
            for k in sorted({*ks, preset_k})]
    for kind in ("prob", "margin"):
        grid += [{"curve": f"confidence ({kind})", "label": f"K={k}",
                  "sampler": {"num_steps": k, "unmask": "confidence", "confidence": kind, "draw": draw}}
                 for k in ks if k <= 50]
    grid += [{"curve": "threshold", "label": f"tau={tau}",
              "sampler": {"num_steps": preset_k, "unmask": "threshold", "threshold": tau, "draw": draw}}
             for tau in taus]
    grid += [{"curve": "semi-AR blocks of 8", "label": f"K={k}",
              "sampler": {"num_steps": k, "unmask": "confidence", "block_length": 8, "draw": draw}}
             for k in ks if 10 <= k <= 50]
    return grid


def gaussian_grid(ks: list[int], preset: dict[str, Any]) -> list[dict[str, Any]]:
    """The settings of an unconditional Gaussian model. The deterministic samplers (eta = 0) take the posterior
    ("small") variance whatever the preset's: DDPM's "large" variance (LD4LG's) exists for eta = 1 only."""
    name = "ancestral (preset)" if preset.get("eta", 0.0) else "DDIM (preset)"
    grid = [{"curve": name, "label": f"K={k}", "sampler": {"num_steps": k}} for k in ks]
    deterministic = {"eta": 0.0, **({"variance": "small"} if preset.get("variance") == "large" else {})}
    if preset.get("eta", 0.0):
        grid += [{"curve": "DDIM", "label": f"K={k}", "sampler": {"num_steps": k, **deterministic}}
                 for k in ks]
    grid += [{"curve": "DPM-Solver++(2M)", "label": f"K={k}",
              "sampler": {"num_steps": k, "solver": "dpmpp_2m", **deterministic}} for k in ks if k <= 50]
    if preset.get("eta", 0.0) and preset.get("variance") != "large":
        grid += [{"curve": "SDE-DPM-Solver++(2M)", "label": f"K={k}",
                  "sampler": {"num_steps": k, "solver": "sde_dpmpp_2m", "eta": 1.0}} for k in ks if k <= 50]
    return grid


def difformer_grid(ks: list[int]) -> list[dict[str, Any]]:
    """The settings of a Difformer model: K x candidates, early stopping at K / 4 (the preset: 20 / 5)."""
    grid = []
    for b1, b2 in CANDIDATES:
        for k in ks:
            if b1 * b2 * k > 21 * 20:  # 7 x 3 at K = 20 is the costliest point kept
                continue
            grid.append({"curve": f"{b1}x{b2} candidates", "label": f"K={k}",
                         "sampler": {"num_steps": k, "early_stop": k // 4},
                         "generate": {"length_beam": b1, "noise_beam": b2}})
    for name, solver, eta in (("DPM-Solver++(2M)", "dpmpp_2m", 0.0), ("SDE-DPM-Solver++(2M)", "sde_dpmpp_2m", 1.0)):
        grid += [{"curve": f"3x2, {name}", "label": f"K={k}",
                  "sampler": {"num_steps": k, "solver": solver, "eta": eta, "early_stop": 0},
                  "generate": {"length_beam": 3, "noise_beam": 2}} for k in ks if k <= 20]
    return grid


def _quality(metrics: dict[str, Any]) -> dict[str, Any]:
    keep = ("bleu", "bleu_tok", "self_bleu", "dist_2", "dist-2", "mem", "chrf")
    return {k: round(float(v), 3) for k, v in metrics.items() if k in keep and isinstance(v, (int, float))}


def measure(model: Any, dm: Any, setting: dict[str, Any], *, num: int, batch_size: int, seed: int,
            generate: dict[str, Any]) -> dict[str, Any]:
    """Decode ``num`` test sources (or draw ``num`` samples) with one setting; quality, speed and NFE."""
    from textdiff.run.evaluation import evaluate

    _, metrics = evaluate(model, dm, split="test", num_samples=num, batch_size=batch_size, seed=seed,
                          nll_batches=0, nll_num_t=1, sampler=setting.get("sampler"),
                          generate_kwargs={**generate, **setting.get("generate", {})})
    speed = metrics.get("sentences_per_second", metrics.get("sequences_per_second"))
    nfe = (metrics.get("sampler") or {}).get("nfe_per_sequence")
    return {**setting, "quality": _quality(metrics), "sentences_per_second": speed, "nfe_per_sequence": nfe,
            "seconds": metrics.get("sampling_seconds")}


def sampler_overhead(model: Any, dm: Any, *, num: int, batch_size: int, seed: int, generate: dict[str, Any],
                     repeats: int = 3, sampler: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The trained model's sampler overhead at its own settings (the preset's K and sampler):
    ``benchmarks.families.probe_overhead`` of decoding ``num`` test sources (or samples), ``repeats`` pairs. A
    random-weight model (``benchmarks.families``) reveals and stops differently from a trained one; this is the
    figure of the model the curves are about. ``sampler``: overrides of the run's sampler (``--quick``: K = 4)."""
    from benchmarks.families import probe_overhead

    run = {"curve": "preset", "label": "overhead", "sampler": dict(sampler or {})}
    measured = probe_overhead(model, lambda: measure(model, dm, run, num=num, batch_size=batch_size, seed=seed,
                                                     generate=generate),
                              device=str(model.device), repeats=repeats)
    return {"num_steps": int(model.build_sampler(**run["sampler"]).num_steps), **measured}


def ar_settings(model: Any) -> list[dict[str, Any]]:
    """The AR baseline's settings, the fastest first: greedy and beam 4 (translation) or ancestral sampling
    (language model)."""
    if model.conditional:
        return [{"curve": "AR", "label": "greedy", "generate": {"beam_size": 1}},
                {"curve": "AR", "label": "beam 4", "generate": {"beam_size": 4}}]
    return [{"curve": "AR", "label": "sampling", "generate": {}}]


def ar_points(model: Any, dm: Any, *, num: int, batch_size: int, seed: int) -> list[dict[str, Any]]:
    """The AR baseline's points (``ar_settings``); the network evaluations per sequence are its decoding steps
    (one cached decoder call per generated token)."""
    out = []
    for s in ar_settings(model):
        point = measure(model, dm, s, num=num, batch_size=batch_size, seed=seed, generate={})
        point["nfe_per_sequence"] = _ar_steps(model, dm, num, s["generate"], seed)
        out.append(point)
    return out


def _ar_steps(model: Any, dm: Any, num: int, generate: dict[str, Any], seed: int) -> float:
    """Mean decoder steps per sequence of the AR model: the generated length (EOS included) of its outputs."""
    if model.conditional:
        batch = next(iter(dm.test_dataloader()))
        ids = model.generate(batch["src_ids"][:num].to(model.device), batch["src_mask"][:num].to(model.device),
                             **generate)
    else:
        ids = model.generate(min(num, 100), seed=seed)
    return round(float((ids != model.pad_id).sum(1).float().mean()) - 1.0, 2)


def latency(model: Any, dm: Any, settings: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """Seconds per sentence at batch 1 (one source, or one sample, at a time), over ``n`` sentences."""
    from textdiff.families.interface import BuildsSampler

    out = []
    for s in settings:
        sampler = model.build_sampler(**s.get("sampler", {})) if isinstance(model, BuildsSampler) else None
        kw = {**({"sampler": sampler} if sampler is not None else {}), **s.get("generate", {})}
        start = time.perf_counter()
        if getattr(model, "conditional", False):
            loader = dm.test_dataloader()
            done = 0
            for batch in loader:
                for j in range(batch["src_ids"].shape[0]):
                    if done >= n:
                        break
                    model.generate(batch["src_ids"][j:j + 1].to(model.device),
                                   batch["src_mask"][j:j + 1].to(model.device), seed=seed + done, **kw)
                    done += 1
                if done >= n:
                    break
        else:
            for i in range(n):
                model.generate(1, seed=seed + i, batch_size=1, **kw)
        seconds = time.perf_counter() - start
        out.append({**s, "batch_size": 1, "sentences": n, "seconds_per_sentence": round(seconds / n, 4)})
    return out


def _shown(point: dict[str, Any]) -> dict[str, Any]:
    """Print a measured point's summary as one JSON line (progress while the grid runs); returns the point."""
    print(json.dumps({k: point[k] for k in ("curve", "label", "quality", "sentences_per_second", "nfe_per_sequence")}),
          flush=True)
    return point


def plot(result: dict[str, Any], path: Path) -> None:
    """Quality against sentences/s and against network evaluations per sequence, one line per curve; for
    unconditional samples a second row with self-BLEU (lower is more diverse: a sampler can buy BLEU with it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [result["quality_key"]]
    if any("self_bleu" in p["quality"] for p in result["points"]):
        keys.append("self_bleu")
    fig, axes = plt.subplots(len(keys), 2, figsize=(11, 4.2 * len(keys)), squeeze=False)
    curves: dict[str, list[dict[str, Any]]] = {}
    for p in result["points"]:
        curves.setdefault(p["curve"], []).append(p)
    for row, key in zip(axes, keys):
        for name, pts in curves.items():
            for ax, x in zip(row, ("sentences_per_second", "nfe_per_sequence")):
                xy = [(p[x], p["quality"][key], p["label"]) for p in pts if p.get(x) and key in p["quality"]]
                if not xy:
                    continue
                xs, ys, labels = zip(*xy)
                style = dict(marker="*", markersize=12, linestyle="none", color="black") if name == "AR" else \
                    dict(marker="o", markersize=4)
                ax.plot(xs, ys, label=name, **style)
                if name == "AR":
                    for xv, yv, lab in xy:
                        ax.annotate(lab, (xv, yv), fontsize=7)
        for ax, xlabel in zip(row, ("sentences / s (log)", "network evaluations / sequence (log)")):
            ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(key.upper().replace("_", "-") + (" (lower: more diverse)" if key == "self_bleu" else ""))
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{result['name']}: {result['run']['experiment']}, {result['num']} "
                 f"{'sources' if result.get('conditional') else 'samples'} ({result['machine']['device']}, "
                 f"{result['machine']['threads']} thread(s), load {result['machine'].get('load_average_1min')})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _run_generate(cfg: Any) -> dict[str, Any]:
    """The run's own decoding settings (``eval.generate``; Difformer: 3 x 2 candidates), None values left out."""
    from omegaconf import OmegaConf

    node = OmegaConf.select(cfg, "eval.generate")
    return {k: v for k, v in (OmegaConf.to_container(node) if node is not None else {}).items() if v is not None}


def overhead_only(model: Any, dm: Any, cfg: Any, args: argparse.Namespace, fixed: dict[str, Any]) -> dict[str, Any]:
    """``--overhead-only``: ``sampler_overhead`` at the settings of an existing curves JSON, written into it (its
    points, plot and the rest kept; the entry gains its own date and machine). Exits with a message when the JSON
    is missing or was measured with other ``--sampler`` settings."""
    path = result_path(args.out, f"curves_{args.name}", args.device, args.quick)
    if not path.is_file():
        raise SystemExit(f"--overhead-only: {path} does not exist; run the curves first")
    doc = json.loads(path.read_text())
    if doc.get("sampler_settings", {}) != fixed:
        raise SystemExit(f"--overhead-only: {path} was measured with --sampler settings {doc.get('sampler_settings')}"
                         f", not {fixed}")
    overhead = sampler_overhead(model, dm, num=doc["num"], batch_size=doc["batch_size"], seed=doc["seed"],
                                generate=_run_generate(cfg), repeats=1 if args.quick else 3,
                                sampler={**fixed, **({"num_steps": 4} if args.quick else {})})
    doc["sampler_overhead"] = {**overhead, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(args.device),
                               "command": args.command}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({"sampler_overhead": overhead}))
    print(f"wrote the sampler overhead into {path}")
    return doc


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--name", required=True, help="names the output files: curves_<name>_<device>.json/.png")
    ap.add_argument("--ar-run", type=Path, default=None)
    ap.add_argument("--ckpt", default="last")
    ap.add_argument("--ks", default=",".join(map(str, DEFAULT_KS)))
    ap.add_argument("--taus", default=",".join(map(str, DEFAULT_TAUS)))
    ap.add_argument("--num", type=int, default=200, help="samples (unconditional) or test sources (conditional)")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--latency", type=int, default=0, help="also time N sentences at batch 1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sampler", action="append", default=[], metavar="KEY=VALUE",
                    help="a sampler setting for every point of the run (not the AR baseline's), over the run's "
                         "config, e.g. closed_form_posterior=true for a run saved before it was the default")
    ap.add_argument("--no-overhead", action="store_true", help="skip the sampler overhead at the run's settings")
    ap.add_argument("--overhead-only", action="store_true",
                    help="measure the sampler overhead only and write it into the existing JSON of --name (its "
                         "points kept), e.g. after a change to the sampler")
    ap.add_argument("--only", default=None, help="comma-separated curve names to keep (default: all)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: K in {2, 4}, 8 sentences")
    ap.add_argument("--replot", type=Path, default=None, help="redraw the PNG of an existing JSON and stop")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.replot is not None:
        result = json.loads(args.replot.read_text())
        plot(result, args.replot.with_suffix(".png"))
        return result

    from textdiff.cli.runs import load_run
    from textdiff.core.absorbing import AbsorbingProcess

    torch.set_num_threads(args.threads)
    ks = [2, 4] if args.quick else [int(k) for k in args.ks.split(",")]
    taus = [0.9] if args.quick else [float(t) for t in args.taus.split(",")]
    num = 8 if args.quick else args.num
    model, dm, cfg, ckpt = load_run(args.run_dir, args.ckpt, args.device)
    fixed = parse_settings(args.sampler)
    args.command = "python -m benchmarks.curves " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.overhead_only:
        return overhead_only(model, dm, cfg, args, fixed)
    preset = model.build_sampler()
    generate = _run_generate(cfg)
    if isinstance(preset.process, AbsorbingProcess):
        grid = absorbing_grid(ks, taus, 4 if args.quick else preset.num_steps, model.conditional)
    elif model.conditional:
        grid = difformer_grid(ks)
    else:
        grid = gaussian_grid(ks, {"eta": preset.eta, "variance": preset.variance})
    if args.only:
        wanted = set(args.only.split(","))
        grid = [g for g in grid if g["curve"] in wanted]
    grid = [{**g, "sampler": {**fixed, **g.get("sampler", {})}} for g in grid]
    points = []
    for setting in grid:
        points.append(_shown(measure(model, dm, setting, num=num, batch_size=args.batch_size, seed=args.seed,
                                     generate=generate)))
    overhead = None
    if not args.no_overhead:
        overhead = sampler_overhead(model, dm, num=num, batch_size=args.batch_size, seed=args.seed,
                                    generate=generate, repeats=1 if args.quick else 3,
                                    sampler={**fixed, **({"num_steps": 4} if args.quick else {})})
        print(json.dumps({"sampler_overhead": overhead}))
    ar_model = ar_dm = None
    if args.ar_run is not None:
        ar_model, ar_dm, _, _ = load_run(args.ar_run, "last", args.device)
        points += [_shown(p) for p in ar_points(ar_model, ar_dm, num=num, batch_size=args.batch_size, seed=args.seed)]
    lat = []
    if args.latency:
        fastest = sorted(points, key=lambda p: -(p["sentences_per_second"] or 0))
        picked = [p for p in fastest if p["curve"] != "AR"][:3]
        lat = latency(model, dm, [{k: p[k] for k in ("curve", "label", "sampler", "generate") if k in p}
                                  for p in picked], args.latency, args.seed)
        if ar_model is not None:
            lat += latency(ar_model, ar_dm, ar_settings(ar_model)[:1], args.latency, args.seed)
    result = {
        "benchmark": "quality_vs_speed", "name": args.name, "quick": args.quick,
        "machine": machine(args.device), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "run": {"dir": str(args.run_dir), "checkpoint": str(ckpt), "experiment": str(cfg.get("task_name")),
                "ar_run": str(args.ar_run) if args.ar_run else None},
        "sampler_settings": fixed, "num": num, "batch_size": args.batch_size, "seed": args.seed,
        "conditional": bool(model.conditional),
        "quality_key": "bleu", "points": points, "latency_batch1": lat,
        "sampler_overhead": overhead,
    }
    path = write_result(result, args.out, f"curves_{args.name}", args.device, args.quick)
    plot(result, path.with_suffix(".png"))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()
