"""``make bench``: speed and memory of every family at its CPU preset, and of textdiff against plain
PyTorch, written to benchmarks/results/ as JSON.

Per family (``benchmarks/families.py``; each family in a fresh process), ``<family>_<device>[_quick].json``
with entries ``eager``, ``bf16_autocast`` and ``compile`` (``torch.compile`` of the family's networks, as
``textdiff-train compile=true``; a compile failure is recorded, not raised), each with:

- training tokens/s (forward + backward + optimizer step of ``compute_loss`` on random batches of the
  preset's shapes, after warm-up, median over repeats; tokens = non-pad target tokens) and peak memory;
- sampling sentences/s through the family's ``generate`` at K in {10, 20, 50, 200} (AR: beam search);
- the sampler's overhead over the same denoiser calls made bare;
- warm-up and compile times.

Families: diffusion_lm (diffusion_lm_e2e_cpu), difformer (difformer_multi30k_cpu), diffusion_bert
(diffusion_bert_tatoeba_cpu), ld4lg (ld4lg_tatoeba_cpu, over a random BART + autoencoder built from the
stage-0/1 configs) and ar (ar_multi30k_cpu).

With diffusion_lm, ``diffusion_lm_<device>.json`` also gets ``lightning_vs_plain``, the comparison of
textdiff with a hand-written PyTorch loop on the Diffusion-LM CPU preset:

(a) training throughput (tokens/s) of Diffusion-LM trained by a Lightning ``Trainer`` (what
    ``textdiff-train`` runs) against a hand-written PyTorch loop computing the same loss on the same
    denoiser and batches; the figure is the ratio (aim >= 0.95);
(b) sampler overhead: wall time of ``Sampler.sample`` with K steps against K bare denoiser calls on
    the same inputs (aim <= 1.05x);
(c) peak memory: process peak RSS (and CUDA peak allocation on a GPU) during (a) and (b).

    python -m benchmarks.run [--families all|diffusion_lm,difformer,diffusion_bert,ld4lg,ar] [--quick]
                             [--device cpu|cuda] [--no-compile] [--no-bf16] [--no-comparison] [--out benchmarks/results]

``--quick`` is a smoke run (a few steps, small batches; ``*_quick.json``) for tests and CI, not a measurement.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import RESULTS, machine, result_path
from textdiff.core import DiscreteSchedule, GaussianProcess, Sampler, SqrtSchedule
from textdiff.families import DiffusionLM
from textdiff.nn import TransformerDenoiser

# the CPU preset's network and shapes (conf/experiment/diffusion_lm_e2e_cpu.yaml; vocabulary of its E2E tokenizer)
PRESET = dict(vocab=811, d=16, dim=128, depth=3, heads=4, max_len=32, batch=64)


def make_model(device: str) -> DiffusionLM:
    """The Diffusion-LM CPU preset's model (``PRESET``; seed 0) on ``device``."""
    p = PRESET
    torch.manual_seed(0)
    model = DiffusionLM(
        TransformerDenoiser(p["d"], dim=p["dim"], depth=p["depth"], heads=p["heads"], max_len=p["max_len"]),
        GaussianProcess(DiscreteSchedule(SqrtSchedule(), 2000)), vocab_size=p["vocab"], embed_dim=p["d"],
        sampler=partial(Sampler, num_steps=200, eta=1.0), optimizer=partial(torch.optim.AdamW, lr=1e-4))
    return model.to(device)


def batches(n: int, device: str) -> list[dict]:
    """``n`` random full-length batches (CPU): ``ids``/``mask`` (batch, max_len), ``index`` (batch,)."""
    g = torch.Generator().manual_seed(0)
    p = PRESET
    out = []
    for _ in range(n):
        ids = torch.randint(0, p["vocab"], (p["batch"], p["max_len"]), generator=g)
        out.append({"ids": ids, "mask": torch.ones_like(ids, dtype=torch.bool), "index": torch.arange(p["batch"])})
    return out


def plain_loop(steps: int, warmup: int, device: str) -> float:
    """The same objective written directly in PyTorch (no Lightning, no textdiff wrappers except the
    denoiser and the schedule table). Returns seconds per step after warm-up."""
    model = make_model(device)
    net, emb, head = model.network, model.embedding, model.lm_head
    abar = DiscreteSchedule(SqrtSchedule(), 2000).abar_grid.float().to(device)  # abar at k/T, k = 0..T
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    data = batches(steps + warmup, device)
    T = 2000
    times = []
    for i, b in enumerate(data):
        start = time.perf_counter()
        ids = b["ids"].to(device)
        e = emb(ids)
        x0 = e + (1 - abar[1]).sqrt() * torch.randn_like(e)
        k = torch.randint(1, T + 1, (ids.shape[0],), device=device)
        a = abar[k].view(-1, 1, 1)
        noise = torch.randn_like(x0)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        out = net(xt, (k - 1).float() * 1000.0 / T)
        mse = ((out - x0) ** 2).mean((1, 2))
        mse = torch.where(k == 1, ((out - e) ** 2).mean((1, 2)), mse)
        prior = ((abar[T].sqrt() * x0) ** 2).mean((1, 2))
        rounding = F.cross_entropy(head(x0).transpose(1, 2), ids, reduction="none").mean(-1)
        loss = (mse + prior + rounding).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return sum(times) / len(times)


def lightning_loop(steps: int, warmup: int, device: str) -> float:
    """Diffusion-LM through ``pl.Trainer.fit`` with a CSV logger, as ``textdiff-train`` runs it (no
    validation or checkpoints in the timed window). Returns seconds per step after warm-up."""
    import tempfile

    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    stamps: list[float] = []

    class Clock(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, idx):
            if idx == warmup:
                stamps.append(time.perf_counter())

        def on_train_batch_end(self, trainer, module, outputs, batch, idx):
            if device == "cuda":
                torch.cuda.synchronize()
            if idx == warmup + steps - 1:
                stamps.append(time.perf_counter())

    model = make_model(device)
    data = batches(steps + warmup, "cpu")
    loader = DataLoader(data, batch_size=None, shuffle=False)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1, max_steps=steps + warmup,
                             logger=pl.loggers.CSVLogger(tmp), callbacks=[Clock()], enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=50,
                             num_sanity_val_steps=0, limit_val_batches=0)
        trainer.fit(model, train_dataloaders=loader)
    return (stamps[1] - stamps[0]) / steps


def bench_training(steps: int, warmup: int, device: str, repeats: int) -> dict:
    """(a): ``plain_loop`` and ``lightning_loop`` interleaved ``repeats`` times; tokens/s and their ratio."""
    tokens = PRESET["batch"] * PRESET["max_len"]
    plain, light = [], []
    for _ in range(repeats):  # interleave so that drifts in machine load hit both alike
        plain.append(plain_loop(steps, warmup, device))
        light.append(lightning_loop(steps, warmup, device))
    p, lt = statistics.median(plain), statistics.median(light)
    return {"plain_seconds_per_step": plain, "textdiff_seconds_per_step": light,
            "plain_tokens_per_second": tokens / p, "textdiff_tokens_per_second": tokens / lt,
            "throughput_ratio": p / lt, "throughput_ratio_best": min(plain) / min(light),
            "target_ratio": 0.95, "steps": steps, "warmup": warmup, "tokens_per_step": tokens}


@torch.no_grad()
def bench_sampler(num_steps: int, device: str, repeats: int) -> dict:
    """(b): ``Sampler.sample`` at K = ``num_steps`` against K bare ``denoise`` calls on (batch, max_len, d)."""
    model = make_model(device).eval()
    shape = (PRESET["batch"], PRESET["max_len"], PRESET["d"])
    sampler = model.build_sampler(num_steps=num_steps)
    x = torch.randn(shape, device=device)
    times = sampler.timesteps()
    ts = [torch.full((shape[0],), float(t), device=device) for t in times[:-1]]

    def bare() -> float:
        start = time.perf_counter()
        for t in ts:
            model.denoise(x, t)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def full() -> float:
        start = time.perf_counter()
        sampler.sample(lambda xt, t, sc: model.denoise(xt, t), shape, x_init=x, device=torch.device(device),
                       generator=torch.Generator(device=device).manual_seed(0))
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    bare(), full()  # warm-up
    b, s = [], []
    for _ in range(repeats):  # interleave so that drifts in machine load hit both alike
        b.append(bare())
        s.append(full())
    return {"num_steps": num_steps, "batch": shape[0], "bare_seconds": b, "sampler_seconds": s,
            "overhead_ratio": statistics.median(s) / statistics.median(b), "overhead_ratio_best": min(s) / min(b),
            "target_ratio": 1.05}


def compare_with_plain_pytorch(device: str, quick: bool) -> dict:
    """(a)-(c) of the module docstring on the Diffusion-LM preset: the ``lightning_vs_plain`` section."""
    steps, warmup, repeats, k = (20, 5, 1, 20) if quick else (100, 10, 5, 200)
    result = {"benchmark": "diffusion_lm_cpu_preset", "preset": PRESET, "machine": machine(device),
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    result["training"] = bench_training(steps, warmup, device, repeats)
    result["sampler"] = bench_sampler(k, device, repeats)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        result["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    tr, sa = result["training"], result["sampler"]
    print(f"lightning vs plain: textdiff {tr['textdiff_tokens_per_second']:.0f} tok/s, plain "
          f"{tr['plain_tokens_per_second']:.0f} tok/s, ratio {tr['throughput_ratio']:.3f} (median), "
          f"{tr['throughput_ratio_best']:.3f} (best of {len(tr['plain_seconds_per_step'])}) (aim >= 0.95)")
    print(f"sampler: {sa['overhead_ratio']:.3f}x (median), {sa['overhead_ratio_best']:.3f}x (best) bare denoiser "
          f"calls at K={k} (aim <= 1.05); peak RSS {result['peak_rss_mb']:.0f} MB")
    return result


def parse_families(value: str) -> list[str]:
    """``all`` or a comma-separated list of family names -> the names, in the canonical order."""
    from benchmarks.families import FAMILIES

    if value.strip() == "all":
        return list(FAMILIES)
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in FAMILIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown family {unknown[0] if unknown else value!r}; choose 'all' or "
                                         f"some of {','.join(FAMILIES)}")
    return [n for n in FAMILIES if n in names]


def run_family_process(name: str, args: argparse.Namespace) -> int:
    """``python -m benchmarks.families --family <name> ...`` in a fresh process; returns its exit code."""
    cmd = [sys.executable, "-m", "benchmarks.families", "--family", name, "--device", args.device, "--out", args.out]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--no-compile"] if args.no_compile else []
    cmd += ["--no-bf16"] if args.no_bf16 else []
    print(f"== {name}", flush=True)
    return subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1]).returncode


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring); returns 0, or 1 when a family's run failed."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", type=parse_families, default="all",
                    help="'all' (default) or a comma-separated subset of "
                         "diffusion_lm,difformer,diffusion_bert,ld4lg,ar")
    ap.add_argument("--quick", action="store_true", help="a few steps and calls: a smoke run (*_quick.json)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile entries (slow to compile on CPU)")
    ap.add_argument("--no-bf16", action="store_true",
                    help="skip the bf16 autocast entries (7-15x slower than fp32 on CPUs without bf16 units)")
    ap.add_argument("--no-comparison", action="store_true",
                    help="skip the Diffusion-LM Lightning-vs-plain-PyTorch comparison")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    failed = [name for name in args.families if run_family_process(name, args) != 0]
    if "diffusion_lm" in args.families and not args.no_comparison:
        comparison = compare_with_plain_pytorch(args.device, args.quick)
        path = result_path(Path(args.out), "diffusion_lm", args.device, args.quick)
        doc = json.loads(path.read_text()) if path.exists() else {"family": "diffusion_lm"}
        doc["lightning_vs_plain"] = comparison
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote lightning_vs_plain into {path}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
