#!/usr/bin/env python
"""Difformer's embedding-space analyses (Gao et al. 2022, §3 / Fig. 1) of a trained run directory.

Usage (from the repository root):

    python experiments/difformer/analyze.py <run_dir> [--ckpt best|last|PATH] [--out DIR]
        [--split test|valid] [--num-batches 8] [--factors 1,2,4,8] [--num-times 21] [--seed 0]
        [--device cpu] [--skip-init]

Writes ``<out>/analysis.json`` and three plots (default ``<run_dir>/analysis``):

- ``norm_vs_frequency.png``: latent norm |z0(w)| against log(1 + training count), with the means of
  ten frequency bins and Spearman's rho (Fig. 1a);
- ``noisy_nn_accuracy.png``: share of noised test-target latents z_t whose nearest embedding is still
  their token, against t, for F = 1 and the training F, by the model's logits (dot) and by L2 (Fig. 1b);
- ``noise_distance_ratio.png``: sigma_t sqrt(d) / (a_t * mean nearest-neighbour distance), one curve
  per F of ``--factors`` (Fig. 1c).

The JSON also holds the anisotropy (mean cosine between distinct tokens' embeddings) and, unless
``--skip-init``, every number again for the untrained network built from the run's config with its
seed (the "init" section), so training's effect is read off one file. Specials (PAD/BOS/EOS/UNK/MASK)
are left out of the table statistics; BOS/EOS stay in the test targets of the accuracy curves. Counts
are over the training targets (the diffused side): tokens never seen there (source-only pieces of a
joint vocabulary) are left out of the norm-frequency analysis and summarised in "unseen_tokens", but
stay in the anisotropy and nearest-neighbour distances (they are rounding candidates all the same).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path
from typing import Any, Optional

import torch


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Difformer embedding analyses of a run directory")
    p.add_argument("run_dir", type=Path, help="a textdiff-train run directory (config.yaml, checkpoints/)")
    p.add_argument("--ckpt", default="best", help="best, last, or a checkpoint path (default: best)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: <run_dir>/analysis)")
    p.add_argument("--split", default="test", choices=("test", "valid"), help="split of the accuracy curves")
    p.add_argument("--num-batches", type=int, default=8, help="evaluation batches for the accuracy curves")
    p.add_argument("--factors", default="1,2,4,8", help="noise factors F of the ratio curves (comma-separated)")
    p.add_argument("--num-times", type=int, default=21, help="points of the t grid on [0, 1]")
    p.add_argument("--grid", default="quadratic", choices=("quadratic", "linear"),
                   help="t_i = (i/(n-1))^2 (dense near t = 0, where the sqrt schedule moves fastest) or i/(n-1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise draws")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--skip-init", action="store_true", help="do not analyse the untrained network")
    args = p.parse_args(argv)
    try:
        args.factors = [float(f) for f in args.factors.split(",") if f.strip()]
    except ValueError:
        p.error(f"--factors must be comma-separated numbers, got {args.factors!r}")
    if not args.factors or any(f <= 0 for f in args.factors):
        p.error("--factors needs at least one F > 0")
    if args.num_batches < 1 or args.num_times < 2:
        p.error("--num-batches must be >= 1 and --num-times >= 2")
    return args


def _key(f: float) -> str:
    return f"{f:g}"


def _fmt(x: Any, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def _finite(x: Any) -> Any:
    """JSON-safe: non-finite floats become null (json.dump would write the non-standard Infinity)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


@torch.no_grad()
def analyse(model: Any, counts: torch.Tensor, batches: list, specials: list[int], times: list[float],
            factors: list[float], seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """All four analyses of one model. Returns (JSON-ready summary, per-token arrays for the plot)."""
    from textdiff.analysis import (anisotropy, nearest_neighbor_distances, noise_to_distance_ratio,
                                   noisy_nearest_accuracy, norm_by_frequency)

    net, process = model.network, model.process
    dev = net.embedding.weight.device
    V = net.vocab_size
    E = net.embedding.weight.detach()
    latents = net.embed(torch.arange(V, device=dev).unsqueeze(0))[0]  # z0 of every token: sqrt(d) E by default
    kept = torch.tensor([i for i in range(V) if i not in set(specials)], device=dev)
    nn_dist = nearest_neighbor_distances(latents[kept])
    unseen = [i for i in kept.tolist() if int(counts[i]) == 0]  # e.g. source-only tokens of a joint vocabulary
    freq = norm_by_frequency(latents, counts, [*specials, *unseen])
    unseen_norms = latents[torch.tensor(unseen, dtype=torch.long, device=dev)].norm(dim=-1) if unseen else None
    train_f = float(process.noise_factor)
    acc: dict[str, dict[str, list[float]]] = {"dot": {}, "l2": {}}
    n_tok = sum(int(b["mask"].sum()) for b in batches)
    for metric, f in itertools.product(("dot", "l2"), sorted({1.0, train_f})):
        gen = torch.Generator(device=dev).manual_seed(seed)  # the same noise for every (metric, F)
        total = [0.0] * len(times)
        for b in batches:
            ids, mask = b["ids"].to(dev), b["mask"].to(dev)
            a = noisy_nearest_accuracy(process, net.embed, E, ids, mask, times, noise_factor=f, metric=metric,
                                       generator=gen)
            n = int(mask.sum())
            total = [s + v * n for s, v in zip(total, a)]
        acc[metric][_key(f)] = [s / n_tok for s in total]
    ratio = noise_to_distance_ratio(process, latents, 1.0, times, factors, specials)
    summary = {
        "anisotropy": {"embedding": anisotropy(E, specials), "latent": anisotropy(latents, specials)},
        "norm_by_frequency": {k: freq[k] for k in ("spearman", "mean_norm", "num_tokens", "bins")},
        "unseen_tokens": {"num_tokens": len(unseen),
                          "mean_norm": float(unseen_norms.mean()) if unseen_norms is not None else None},
        "nearest_neighbor_distance": {"mean": float(nn_dist.mean()), "median": float(nn_dist.median()),
                                      "min": float(nn_dist.min()), "max": float(nn_dist.max())},
        "noisy_nn_accuracy": acc,
        "noise_distance_ratio": {_key(f): v for f, v in ratio.items()},
    }
    return summary, {"norms": freq["norms"], "log_freq": freq["log_freq"]}


def _sqrt_t_axis(ax: Any) -> None:
    """t on a square-root axis: the early part of the chain, where the sqrt schedule loses most of
    the signal, gets room."""
    import numpy as np

    ax.set_xscale("function", functions=(lambda x: np.sqrt(np.clip(x, 0, None)), np.square))
    ax.set_xlim(0, 1)
    ax.set_xticks([0, 0.01, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1])
    ax.set_xlabel("t (square-root scale)")


def _plots(out: Path, res: dict[str, Any], arrays: dict[str, Any], init: Optional[dict[str, Any]],
           times: list[float], train_f: float, vocab: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(arrays["log_freq"].numpy(), arrays["norms"].numpy(), s=3, alpha=0.3, label="tokens")
    bins = res["norm_by_frequency"]["bins"]
    ax.plot([b["mean_log_freq"] for b in bins], [b["mean_norm"] for b in bins], "o-", color="C3",
            label="mean per frequency bin")
    if init is not None:
        ib = init["norm_by_frequency"]["bins"]
        ax.plot([b["mean_log_freq"] for b in ib], [b["mean_norm"] for b in ib], ":", color="grey", label="untrained")
    ax.set(xlabel="log(1 + count in the training targets)", ylabel="|z0(w)| (sqrt(d) |E[w]| by default)",
           title=f"embedding norm vs frequency (Spearman {res['norm_by_frequency']['spearman']:.3f})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "norm_vs_frequency.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (f, curve) in enumerate(res["noisy_nn_accuracy"]["dot"].items()):
        tag = " (training)" if float(f) == train_f else ""
        ax.plot(times, curve, "-", color=f"C{i}", label=f"F={f}{tag}, logits")
        ax.plot(times, res["noisy_nn_accuracy"]["l2"][f], "--", color=f"C{i}", label=f"F={f}, L2")
        if init is not None:
            ax.plot(times, init["noisy_nn_accuracy"]["dot"][f], ":", color=f"C{i}", alpha=0.6,
                    label=f"F={f}, logits, untrained")
    ax.axhline(1 / vocab, color="grey", lw=0.8, label="chance 1/V")
    _sqrt_t_axis(ax)
    ax.set(ylabel="nearest embedding = true token", ylim=(0, 1.02), title="noised latents still nearest to their token")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "noisy_nn_accuracy.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (f, curve) in enumerate(res["noise_distance_ratio"].items()):
        ts = [t for t, v in zip(times, curve) if v is not None and 0 < v < math.inf]
        vs = [v for v in curve if v is not None and 0 < v < math.inf]
        ax.plot(ts, vs, "-", color=f"C{i}", label=f"F={f}" + (" (training)" if float(f) == train_f else ""))
    ax.axhline(0.5, color="grey", lw=0.8, ls="--", label="noise = half the NN distance")
    ax.set_yscale("log")
    _sqrt_t_axis(ax)
    ax.set(ylabel="sigma_t sqrt(d) / (a_t mean NN distance)", title="noise vs embedding spacing")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "noise_distance_ratio.png", dpi=120)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    from textdiff.cli.common import ConfigError, build, configure_logging, register_resolvers, resolve_device
    from textdiff.cli.runs import load_run
    from textdiff.data.word_freq import token_counts

    configure_logging()
    register_resolvers()
    device = resolve_device(args.device)
    try:
        model, dm, cfg, ckpt_path = load_run(args.run_dir, args.ckpt, device)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    net = getattr(model, "network", None)
    if net is None or not hasattr(net, "embedding") or not hasattr(model.process, "coefs"):
        print(f"error: {args.run_dir} holds a {type(model).__name__}, not a Difformer run", file=sys.stderr)
        return 2
    out = args.out or args.run_dir / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    V = net.vocab_size
    specials = sorted({int(v) for v in cfg.tokens.values() if v is not None})

    dm.setup("fit")
    counts = token_counts((it["ids"] for it in dm.dataset("train")), V)  # target-side training counts
    loader = dm.test_dataloader() if args.split == "test" else dm.val_dataloader()
    batches = list(itertools.islice(iter(loader), args.num_batches))
    if not batches:
        print(f"error: the run's data has no {args.split} split", file=sys.stderr)
        return 2
    grid = [i / (args.num_times - 1) for i in range(args.num_times)]
    times = [u * u for u in grid] if args.grid == "quadratic" else grid
    res, arrays = analyse(model, counts, batches, specials, times, args.factors, args.seed)

    init = None
    if not args.skip_init:  # the same network as initialised from the run's config and seed
        torch.manual_seed(int(cfg.get("seed", 0) or 0))
        fresh = build(cfg, "model").to(device).eval()
        init, _ = analyse(fresh, counts, batches, specials, times, args.factors, args.seed)

    step = torch.load(str(ckpt_path), map_location="cpu", weights_only=False).get("global_step")
    train_f = float(model.process.noise_factor)
    report = {
        "run_dir": str(args.run_dir), "checkpoint": str(ckpt_path), "global_step": step,
        "vocab_size": V, "latent_dim": net.latent_dim, "embed_scale": net.embed_scale,
        "embed_norm": net.embed_norm_position, "training_noise_factor": train_f,
        "schedule_steps": getattr(model.process.schedule, "num_steps", None), "special_ids": specials,
        "split": args.split, "num_batches": len(batches),
        "num_tokens": sum(int(b["mask"].sum()) for b in batches), "times": times, "factors": args.factors,
        "seed": args.seed, "counts": {"num_sequences": len(dm.dataset("train")), "num_tokens": int(counts.sum())},
        **res, "init": init,
    }
    report = _finite(report)
    init = report["init"]
    (out / "analysis.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    _plots(out, report, arrays, init, times, train_f, V)

    acc = report["noisy_nn_accuracy"]["dot"]
    mid = len(times) // 2
    print(f"step {step} | anisotropy {_fmt(report['anisotropy']['embedding'], '.4f')} | norm-frequency "
          f"Spearman {_fmt(report['norm_by_frequency']['spearman'])} | mean NN distance "
          f"{_fmt(report['nearest_neighbor_distance']['mean'])}")
    print(f"logit accuracy at t={times[mid]:.2f}: " + ", ".join(f"F={f} {_fmt(c[mid])}" for f, c in acc.items()))
    if init is not None:
        print(f"untrained: anisotropy {_fmt(init['anisotropy']['embedding'], '.4f')} | Spearman "
              f"{_fmt(init['norm_by_frequency']['spearman'])}")
    print(f"wrote {out / 'analysis.json'} and 3 plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
