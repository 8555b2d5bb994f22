"""``make bench``: speed and memory of textdiff against plain PyTorch, written to benchmarks/results/.

(a) training throughput (tokens/s) of Diffusion-LM trained by a Lightning ``Trainer`` (what
    ``textdiff-train`` runs) against a hand-written PyTorch loop computing the same loss on the same
    denoiser and batches; the figure is the ratio (aim >= 0.95);
(b) sampler overhead: wall time of ``Sampler.sample`` with K steps against K bare denoiser calls on
    the same inputs (aim <= 1.05x);
(c) peak memory: process peak RSS (and CUDA peak allocation on a GPU) during (a).

    python -m benchmarks.run [--quick] [--device cpu|cuda] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from textdiff.core import DiscreteSchedule, GaussianProcess, Sampler, SqrtSchedule
from textdiff.families import DiffusionLM
from textdiff.nn import TransformerDenoiser

# the CPU preset's network (conf/experiment/diffusion_lm_e2e_cpu.yaml)
PRESET = dict(vocab=820, d=16, dim=128, depth=3, heads=4, max_len=40, batch=64)


def machine(device: str) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "device": device}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def make_model(device: str) -> DiffusionLM:
    p = PRESET
    torch.manual_seed(0)
    model = DiffusionLM(
        TransformerDenoiser(p["d"], dim=p["dim"], depth=p["depth"], heads=p["heads"], max_len=p["max_len"]),
        GaussianProcess(DiscreteSchedule(SqrtSchedule(), 2000)), vocab_size=p["vocab"], embed_dim=p["d"],
        sampler=partial(Sampler, num_steps=200, eta=1.0), optimizer=partial(torch.optim.AdamW, lr=1e-4))
    return model.to(device)


def batches(n: int, device: str) -> list[dict]:
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
    net, emb, head = model.denoiser, model.embedding, model.lm_head
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats (a smoke run)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    steps, warmup, repeats, k = (20, 5, 1, 20) if args.quick else (100, 10, 5, 200)
    result = {"benchmark": "diffusion_lm_cpu_preset", "preset": PRESET, "machine": machine(args.device),
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    result["training"] = bench_training(steps, warmup, args.device, repeats)
    result["sampler"] = bench_sampler(k, args.device, repeats)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.device == "cuda":
        result["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"diffusion_lm_{args.device}{'_quick' if args.quick else ''}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    tr, sa = result["training"], result["sampler"]
    print(f"training: textdiff {tr['textdiff_tokens_per_second']:.0f} tok/s, plain {tr['plain_tokens_per_second']:.0f} "
          f"tok/s, ratio {tr['throughput_ratio']:.3f} (median), {tr['throughput_ratio_best']:.3f} (best of "
          f"{len(tr['plain_seconds_per_step'])}) (aim >= 0.95)")
    print(f"sampler: {sa['overhead_ratio']:.3f}x (median), {sa['overhead_ratio_best']:.3f}x (best) bare denoiser "
          f"calls at K={k} (aim <= 1.05)")
    print(f"peak RSS {result['peak_rss_mb']:.0f} MB; wrote {path}")


if __name__ == "__main__":
    main()
