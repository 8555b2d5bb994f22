"""Speed and memory of each family at its CPU preset: one JSON per family, ``<family>_<device>[_quick].json``.

    python -m benchmarks.families --family difformer [--quick] [--device cpu|cuda] [--no-compile] [--no-bf16]
        [--out DIR]

(``python -m benchmarks.run`` runs this once per family, each in a fresh process, so that peak memory and
``torch.compile`` caches do not carry over from one family to the next.)

The model is composed from the family's preset (``conf/experiment/<experiment>.yaml``) with Hydra and
built by ``textdiff.cli.common.build``, as ``textdiff-train`` builds it, with the vocabulary size and the
special-token ids of the preset's tokenizer filled in (no data is read). LD4LG stage 2 is built at its
preset's denoiser size over a *random* frozen BART (``ld4lg_bart_tatoeba_cpu``'s config) and stage-1
autoencoder (``ld4lg_ae_tatoeba_cpu``'s config), built from those configs without training.

Inputs are random token batches of the preset's shapes: ``data.batch_size`` rows; BOS, random ids and
EOS, then PAD; lengths drawn from a normal with the mean and std of the preset's tokenised training split
(``LENGTHS``, measured once with the preset's tokenizer), clipped to [its shortest, max_len]; padded to
``max_len`` (``data.pad_to_max``) or to the longest row (Multi30k presets). So no data loading, no
tokenizer and no disk in the timings.

Entries, each on a freshly built model: ``eager`` (fp32), ``bf16_autocast``
(``torch.autocast(device, dtype=torch.bfloat16)`` around the loss and around ``generate``, as
``trainer.precision=bf16-mixed`` does in training) and ``compile`` (``textdiff.run.compilation.compile_networks``,
what ``textdiff-train compile=true`` does; an error is recorded instead of raised). For each:

- training: tokens/s of forward + backward + optimizer step (+ gradient clipping when the preset clips)
  of the family's ``compute_loss``, after warm-up steps, median over repeats; tokens = non-pad target
  tokens (``mask.sum()`` of the batch's ``ids``). No Lightning, logging or EMA: ``benchmarks.run``'s
  Diffusion-LM comparison measures what Lightning adds;
- sampling: sentences/s of the family's real ``generate`` path at K in {10, 20, 50, 200} sampler steps
  (the autoregressive baseline: beam search at its default beam), on ``eval.batch_size`` sentences (or
  sources) per call, median over repeats;
- sampler overhead: wall time of the ``Sampler.sample`` calls inside ``generate`` at the preset's K
  against the same number of bare calls of the same denoise function on inputs of the same shapes;
- peak memory (RSS sampled during the phase; CUDA peak allocation on cuda);
- warm-up time, and for ``compile`` the compile time (warm-up minus as many steady steps or calls; a cold
  compile: each family run gets a fresh inductor cache unless ``TORCHINDUCTOR_CACHE_DIR`` is set).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from benchmarks.common import RESULTS, Clock, PeakMemory, machine, process_peak_rss_mb, write_result

KS = (10, 20, 50, 200)
PAD, UNK, BOS, EOS, MASK = 0, 1, 2, 3, 4  # the special ids of the library's word and BPE tokenizers


@dataclass(frozen=True)
class Lengths:
    """Token lengths (BOS and EOS included) of a preset's tokenised training split."""
    mean: float
    std: float
    min: int


@dataclass(frozen=True)
class FamilySpec:
    """A family's CPU preset and the facts of its tokenizer that building a model needs."""
    name: str
    experiment: str
    vocab_size: int
    target: Lengths
    source: Optional[Lengths] = None
    has_mask_token: bool = True


# Vocabulary sizes and lengths measured on the training splits with the presets' tokenizers (build_datamodule,
# 2026-11): E2E word tokenizer (min count 11), Tatoeba word tokenizer with [MASK] (min count 5), Multi30k
# joint BPE 8k. LD4LG's tokenizer is its stage-0 BART's: the Tatoeba one.
MULTI30K_EN, MULTI30K_DE = Lengths(16.3, 4.7, 6), Lengths(16.9, 5.5, 4)
TATOEBA = Lengths(9.7, 2.5, 7)
FAMILIES: dict[str, FamilySpec] = {
    "diffusion_lm": FamilySpec("diffusion_lm", "diffusion_lm_e2e_cpu", 811, Lengths(23.3, 6.3, 3),
                               has_mask_token=False),
    "difformer": FamilySpec("difformer", "difformer_multi30k_cpu", 8000, MULTI30K_EN, MULTI30K_DE),
    "diffusion_bert": FamilySpec("diffusion_bert", "diffusion_bert_tatoeba_cpu", 5250, TATOEBA),
    "ld4lg": FamilySpec("ld4lg", "ld4lg_tatoeba_cpu", 5250, TATOEBA),
    "ar": FamilySpec("ar", "ar_multi30k_cpu", 8000, MULTI30K_EN, MULTI30K_DE),
}
ENTRIES = ("eager", "bf16_autocast", "compile")


@dataclass(frozen=True)
class Settings:
    """How much to measure. Training: ``warmup`` steps, then ``repeats`` runs of ``steps`` steps each, fewer
    steps (not under 2) where ``repeats x steps`` would exceed ``budget`` seconds; ``train_rows`` rows per
    batch (None = the preset's ``data.batch_size``). Sampling: ``sample_batch`` sentences per ``generate`` call
    (None = the preset's ``eval.batch_size``) at each K of ``ks``, one warm-up call, then up to ``sample_repeats``
    calls per K while they fit in ``budget`` seconds (at least one); the overhead at K = ``overhead_k``
    (None = the preset's ``sampler.num_steps``; capped by it), up to ``sample_repeats`` pairs within ``budget``."""
    steps: int
    warmup: int
    repeats: int
    sample_repeats: int
    sample_batch: Optional[int]
    ks: tuple[int, ...]
    overhead_k: Optional[int]
    budget: float
    train_rows: Optional[int] = None


FULL = Settings(steps=20, warmup=5, repeats=5, sample_repeats=3, sample_batch=None, ks=KS, overhead_k=None,
                budget=60.0)
QUICK = Settings(steps=2, warmup=1, repeats=1, sample_repeats=1, sample_batch=2, ks=(10, 20), overhead_k=10,
                 budget=0.0, train_rows=8)


def _within(times: list[float], limit: int, budget: float) -> bool:
    """Whether another run fits: fewer than ``limit`` runs so far and their total plus a mean run <= budget."""
    return len(times) < limit and sum(times) * (1 + 1 / len(times)) <= budget


# ----- building -----
def compose(experiment: str, overrides: list[str]) -> Any:
    """The ``train`` config with ``experiment=<experiment>`` and ``overrides`` (Hydra compose, no run dir)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from textdiff.cli.common import CONF_DIR, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=[f"experiment={experiment}", *overrides])


def _token_overrides(spec: FamilySpec) -> list[str]:
    return [f"data.vocab_size={spec.vocab_size}", f"tokens.pad_id={PAD}", f"tokens.unk_id={UNK}",
            f"tokens.bos_id={BOS}", f"tokens.eos_id={EOS}", f"tokens.mask_id={MASK if spec.has_mask_token else 'null'}"]


def build_model(spec: FamilySpec, device: str) -> tuple[Any, Any, list[str]]:
    """The family's model at its preset (random init), its composed config and notes on how it was built.
    Returns (model on ``device`` in train mode, cfg, notes)."""
    from omegaconf import OmegaConf

    from textdiff.cli.common import build

    torch.manual_seed(0)
    tokens = _token_overrides(spec)
    notes: list[str] = []
    if spec.name == "ld4lg":
        bart = OmegaConf.to_container(compose("ld4lg_bart_tatoeba_cpu", tokens).model.bart, resolve=True)
        ae_cfg = compose("ld4lg_ae_tatoeba_cpu", [*tokens, "model.bart_path=null"])
        autoencoder = build(ae_cfg, "model", bart=bart)
        cfg = compose(spec.experiment, [*tokens, "model.autoencoder_path=null", "data.tokenizer_path=null"])
        model = build(cfg, "model", autoencoder=autoencoder)
        notes.append("LD4LG stage 2 at the preset's denoiser size over a random frozen BART "
                     f"(ld4lg_bart_tatoeba_cpu: {bart}) and a random stage-1 autoencoder (ld4lg_ae_tatoeba_cpu), "
                     "built from those configs without training; BART decoding of random latents runs to "
                     "max_length, the slowest case")
    else:
        cfg = compose(spec.experiment, tokens)
        model = build(cfg, "model")
    if spec.name in ("difformer", "ar"):
        notes.append("random weights: predicted lengths (Difformer) and beam hypotheses (AR) are those of an "
                     "untrained model; an untrained AR decoder rarely emits EOS, so beams run to max_len")
    return model.to(device).train(), cfg, notes


def _lengths(n: int, stats: Lengths, max_len: int, gen: torch.Generator) -> torch.Tensor:
    raw = stats.mean + stats.std * torch.randn(n, generator=gen)
    return raw.round().long().clamp(min(stats.min, max_len), max_len)


def _rows(n: int, stats: Lengths, max_len: int, width: Optional[int], low: int, vocab: int,
          gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, W) ids (BOS, random ids in [low, vocab), EOS, PAD) and mask; W = ``width`` or the longest row."""
    lengths = _lengths(n, stats, max_len, gen).clamp_min(2)
    W = width or int(lengths.max())
    pos = torch.arange(W).unsqueeze(0)
    mask = pos < lengths.unsqueeze(1)
    ids = torch.randint(low, vocab, (n, W), generator=gen)
    ids[:, 0] = BOS
    ids = ids.masked_fill(pos == (lengths.unsqueeze(1) - 1), EOS).masked_fill(~mask, PAD)
    return ids, mask


def random_batches(spec: FamilySpec, cfg: Any, n: int, rows: Optional[int] = None, seed: int = 0) -> list[dict]:
    """``n`` random batches of the preset's shapes (on CPU): ``ids``/``mask`` (B, L) and ``index`` (B,), plus
    ``src_ids``/``src_mask`` (B, S) for seq2seq presets. B = ``rows`` or ``data.batch_size``; L = ``data.max_len``
    with ``data.pad_to_max`` (the default), else the longest row of the batch (likewise S)."""
    from omegaconf import OmegaConf

    gen = torch.Generator().manual_seed(seed)
    B = int(rows or cfg.data.batch_size)
    L = int(cfg.data.max_len)
    fixed = bool(OmegaConf.select(cfg, "data.pad_to_max", default=True))
    low = MASK + 1 if spec.has_mask_token else MASK
    out = []
    for _ in range(n):
        ids, mask = _rows(B, spec.target, L, L if fixed else None, low, spec.vocab_size, gen)
        batch = {"ids": ids, "mask": mask, "index": torch.arange(B)}
        if spec.source is not None:
            S = int(cfg.data.max_src_len)
            batch["src_ids"], batch["src_mask"] = _rows(B, spec.source, S, S if fixed else None, low,
                                                        spec.vocab_size, gen)
        out.append(batch)
    return out


def prepare(spec: FamilySpec, model: Any, cfg: Any) -> None:
    """What ``fit`` would set up from the data: DiffusionBERT's spindle token weights and length histogram
    (from random sequences of the preset's lengths)."""
    if spec.name == "diffusion_bert":
        seqs = []
        for b in random_batches(spec, cfg, 8, seed=1):
            seqs += [row[m].tolist() for row, m in zip(b["ids"], b["mask"])]
        model.set_corpus_statistics(seqs)


def _to(batch: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def _autocast(kind: str, device: str) -> contextlib.AbstractContextManager:
    if kind == "bf16_autocast":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----- training -----
def measure_training(model: Any, batches: list[dict], *, kind: str, device: str, settings: Settings,
                     clip: Optional[float]) -> dict:
    """Tokens/s of ``compute_loss`` + backward + (clip) + optimizer step over ``batches`` (cycled; already on
    ``device``; each a dict of (B, L) ``ids``/``mask`` ...), after ``settings.warmup`` steps; median over
    ``settings.repeats`` runs of ``settings.steps`` steps (fewer within ``settings.budget``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = model.optimizer_factory(params)
    model.train()
    count = iter(range(10**9))

    def step() -> tuple[float, int]:
        b = batches[next(count) % len(batches)]
        with Clock(device) as clock:
            with _autocast(kind, device):
                loss = model.compute_loss(b)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
        return clock.seconds, int(b["mask"].sum())

    with PeakMemory(device) as mem:
        warm = [step()[0] for _ in range(settings.warmup)]
        steps = settings.steps
        if settings.budget and warm:
            steps = max(2, min(steps, int(settings.budget / (settings.repeats * warm[-1]))))
        per_step, tok_s = [], []
        for _ in range(settings.repeats):
            times, tokens = zip(*(step() for _ in range(steps)))
            per_step.append(sum(times) / len(times))
            tok_s.append(sum(tokens) / sum(times))
    steady = statistics.median(per_step)
    return {"tokens_per_second": statistics.median(tok_s), "tokens_per_second_runs": tok_s,
            "seconds_per_step": steady, "seconds_per_step_runs": per_step,
            "tokens_per_step": sum(int(b["mask"].sum()) for b in batches) / len(batches),
            "rows_per_step": int(batches[0]["ids"].shape[0]),
            "first_step_seconds": warm[0] if warm else None, "warmup_seconds": sum(warm),
            "warmup_minus_steady_seconds": sum(warm) - steady * len(warm),
            "steps": steps, "warmup": settings.warmup, "repeats": settings.repeats,
            "gradient_clip_val": clip, **mem.as_dict()}


# ----- sampling -----
def generate_call(spec: FamilySpec, model: Any, cfg: Any, n: int) -> Callable[[Optional[int]], Any]:
    """``call(K)`` -> the family's ``generate`` on ``n`` sentences (n random sources for seq2seq families) with
    K sampler steps (ignored by the AR baseline: beam search at its default beam), seed 0, the preset's
    ``eval.generate`` settings; returns (n, L') token ids."""
    from omegaconf import OmegaConf

    extra = OmegaConf.to_container(cfg.eval.generate, resolve=True) if cfg.eval.get("generate") else {}
    if spec.source is not None:
        src = random_batches(spec, cfg, 1, rows=n, seed=2)[0]
        src_ids, src_mask = src["src_ids"].to(model.device), src["src_mask"].to(model.device)
        if spec.name == "ar":
            return lambda k: model.generate(src_ids, src_mask, seed=0, **extra)
        return lambda k: model.generate(src_ids, src_mask, seed=0, num_steps=k, **extra)
    return lambda k: model.generate(n, seed=0, num_steps=k, **extra)


def measure_sampling(spec: FamilySpec, call: Callable[[Optional[int]], Any], n: int, *, kind: str, device: str,
                     settings: Settings) -> dict:
    """Sentences/s of ``call(K)`` for K in ``settings.ks`` (one "beam" entry for the AR baseline) after one
    warm-up call at the first K; median over up to ``settings.sample_repeats`` calls (within the budget)."""
    ks: list[Optional[int]] = [None] if spec.name == "ar" else list(settings.ks)
    out: dict[str, Any] = {"sentences_per_call": n}
    with PeakMemory(device) as mem, torch.no_grad():
        with Clock(device) as warm, _autocast(kind, device):
            call(ks[0])
        out["warmup_seconds"] = warm.seconds
        per_k = {}
        for k in ks:
            times: list[float] = []
            while not times or _within(times, settings.sample_repeats, settings.budget):
                with Clock(device) as clock, _autocast(kind, device):
                    call(k)
                times.append(clock.seconds)
            key = f"K={k}" if k is not None else "beam"
            per_k[key] = {"num_steps": k, "sentences_per_second": n / statistics.median(times),
                          "seconds_per_call": statistics.median(times), "seconds_runs": times}
    out["by_steps"] = per_k
    first = next(iter(per_k.values()))["seconds_per_call"]
    out["warmup_minus_steady_seconds"] = out["warmup_seconds"] - first
    out.update(mem.as_dict())
    return out


class SamplerProbe:
    """While active (``with probe:``), ``Sampler.sample`` is wrapped: the wall time of each call and, per
    denoiser call, its time input and number of rows are kept, with one full-size input to replay.
    ``replay()`` then makes the same denoiser calls, bare, on inputs of the same shapes."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.sample_seconds = 0.0
        self.calls: list[tuple[Any, torch.Tensor, int, bool]] = []  # (denoise, t, rows, with self_cond)
        self.x: Optional[torch.Tensor] = None
        self.sc: Optional[torch.Tensor] = None

    @contextlib.contextmanager
    def active(self) -> Iterator["SamplerProbe"]:
        """Record the sampler calls made inside the block (the previous record is dropped)."""
        from textdiff.core.sampler import Sampler

        original = Sampler.sample
        probe = self
        probe.sample_seconds, probe.calls = 0.0, []

        def sample(sampler: Any, denoise: Any, shape: Any, **kwargs: Any) -> Any:
            def recorded(x: torch.Tensor, t: torch.Tensor, sc: Optional[torch.Tensor]) -> Any:
                if probe.x is None or x.shape[0] > probe.x.shape[0]:
                    probe.x = x
                if sc is not None and (probe.sc is None or sc.shape[0] > probe.sc.shape[0]):
                    probe.sc = sc
                probe.calls.append((denoise, t, x.shape[0], sc is not None))
                return denoise(x, t, sc)

            with Clock(probe.device) as clock:
                result = original(sampler, recorded, shape, **kwargs)
            probe.sample_seconds += clock.seconds
            return result

        Sampler.sample = sample  # type: ignore[method-assign]
        try:
            yield self
        finally:
            Sampler.sample = original  # type: ignore[method-assign]

    def replay(self) -> float:
        """Seconds of the recorded denoiser calls made again, bare (same functions, times and row counts)."""
        assert self.x is not None, "no sampler call was recorded"
        with Clock(self.device) as clock:
            for denoise, t, rows, with_sc in self.calls:
                sc = self.sc[:rows] if with_sc and self.sc is not None else None
                denoise(self.x[:rows], t, sc)
        return clock.seconds


def probe_overhead(model: Any, call: Callable[[], Any], *, device: str, repeats: int,
                   budget: float = float("inf")) -> dict:
    """The wall time of the ``Sampler.sample`` calls inside ``call()`` against the same denoiser calls made bare
    (``SamplerProbe``; ``model`` in eval mode for them, as ``generate`` puts it): one recording call (a warm-up),
    then up to ``repeats`` interleaved pairs (bare replay, full call) within ``budget`` seconds, at least one;
    medians and best of each, and the whole ``call`` time (decoding, selection and the rest around the sampler)."""
    probe = SamplerProbe(device)
    was_training = model.training
    with torch.no_grad():
        with probe.active():
            call()  # records the calls (and warms up)
        bare: list[float] = []
        full: list[float] = []
        gen: list[float] = []
        # interleaved, so that drifts in machine load hit both alike
        while not gen or _within([a + b for a, b in zip(bare, gen)], repeats, budget):
            model.eval()
            bare.append(probe.replay())
            model.train(was_training)
            with probe.active(), Clock(device) as clock:
                call()
            full.append(probe.sample_seconds)
            gen.append(clock.seconds)
    return {"denoiser_calls": len(probe.calls), "rows_per_call": int(probe.x.shape[0]),
            "bare_seconds": bare, "sampler_seconds": full, "generate_seconds": gen,
            "overhead_ratio": statistics.median(full) / statistics.median(bare),
            "overhead_ratio_best": min(full) / min(bare),
            "generate_over_sampler": statistics.median(gen) / statistics.median(full)}


def measure_overhead(spec: FamilySpec, model: Any, call: Callable[[Optional[int]], Any], k: int, *, kind: str,
                     device: str, settings: Settings) -> dict:
    """Sampler overhead at K = ``k``: ``probe_overhead`` of ``call(k)`` under the entry's autocast, up to
    ``settings.sample_repeats`` pairs within ``settings.budget``."""
    if spec.name == "ar":
        return {"not_applicable": "beam search: no diffusion sampler"}
    with _autocast(kind, device):
        return {"num_steps": k, **probe_overhead(model, lambda: call(k), device=device,
                                                 repeats=settings.sample_repeats, budget=settings.budget)}


# ----- one entry, one family -----
def run_entry(spec: FamilySpec, kind: str, device: str, settings: Settings) -> dict:
    """Build a fresh model and measure training, sampling and sampler overhead for the entry ``kind``
    ("eager", "bf16_autocast" or "compile"). A failure of a phase is recorded as ``{"error": ...}``."""
    from omegaconf import OmegaConf

    from textdiff.run.compilation import compile_networks

    model, cfg, _ = build_model(spec, device)
    prepare(spec, model, cfg)
    entry: dict[str, Any] = {"kind": kind}
    if kind == "compile":
        try:
            entry["compiled_modules"] = compile_networks(model, True)
        except Exception as err:  # noqa: BLE001 - recorded, not raised
            return {**entry, "error": f"{type(err).__name__}: {err}"}
    batches = [_to(b, device) for b in random_batches(spec, cfg, 4, rows=settings.train_rows)]
    clip = OmegaConf.select(cfg, "trainer.gradient_clip_val")
    n = settings.sample_batch or int(cfg.eval.batch_size)
    k_over = min(int(cfg.sampler.num_steps), settings.overhead_k or 10**9) if spec.name != "ar" else 0
    phases: list[tuple[str, Callable[[], dict]]] = [
        ("training", lambda: measure_training(model, batches, kind=kind, device=device, settings=settings,
                                              clip=float(clip) if clip else None)),
        ("sampling", lambda: measure_sampling(spec, generate_call(spec, model, cfg, n), n, kind=kind,
                                              device=device, settings=settings)),
        ("sampler_overhead", lambda: measure_overhead(spec, model, generate_call(spec, model, cfg, n), k_over,
                                                      kind=kind, device=device, settings=settings)),
    ]
    for name, phase in phases:
        try:
            entry[name] = phase()
        except Exception as err:  # noqa: BLE001 - e.g. a compile or bf16 failure on this build: recorded
            entry[name] = {"error": f"{type(err).__name__}: {err}",
                           "traceback": traceback.format_exc(limit=-3).splitlines()[-6:]}
    if kind == "compile":
        tr, sa = entry.get("training", {}), entry.get("sampling", {})
        entry["compile_seconds"] = {"training": tr.get("warmup_minus_steady_seconds"),
                                    "sampling": sa.get("warmup_minus_steady_seconds")}
    entry["process_peak_rss_mb"] = process_peak_rss_mb()
    return entry


def preset_info(spec: FamilySpec, cfg: Any, model: Any, settings: Settings) -> dict:
    """The preset's shapes and settings, as benchmarked."""
    from omegaconf import OmegaConf

    sampler = OmegaConf.to_container(cfg.sampler, resolve=True) if spec.name != "ar" else None
    return {
        "experiment": spec.experiment, "batch_size": int(cfg.data.batch_size), "max_len": int(cfg.data.max_len),
        "max_src_len": OmegaConf.select(cfg, "data.max_src_len"),
        "pad_to_max": bool(OmegaConf.select(cfg, "data.pad_to_max", default=True)),
        "vocab_size": spec.vocab_size, "target_lengths": vars(spec.target),
        "source_lengths": vars(spec.source) if spec.source else None,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "network": OmegaConf.to_container(cfg.model.network, resolve=True),
        "sampler": {k: v for k, v in (sampler or {}).items() if not k.startswith("_")} or None,
        "generate": OmegaConf.to_container(cfg.eval.generate, resolve=True) if cfg.eval.get("generate") else {},
        "sentences_per_generate_call": settings.sample_batch or int(cfg.eval.batch_size),
        "gradient_clip_val": OmegaConf.select(cfg, "trainer.gradient_clip_val"),
    }


def run_family(name: str, device: str, quick: bool = False, with_compile: bool = True, with_bf16: bool = True) -> dict:
    """Every entry of one family; returns the JSON document (see the module docstring)."""
    spec = FAMILIES[name]
    settings = QUICK if quick else FULL
    start = time.perf_counter()
    model, cfg, notes = build_model(spec, device)
    doc: dict[str, Any] = {
        "benchmark": "family_speed", "family": name, "quick": quick, "machine": machine(device),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "preset": preset_info(spec, cfg, model, settings),
        "inputs": ("random token batches of the preset's shapes (4 distinct batches, cycled): BOS, uniform random "
                   "ids, EOS, PAD; lengths ~ normal(target_lengths) clipped to [min, max_len]; no data loading"),
        "tokens": "non-pad target tokens per optimizer step (mask.sum() of the batch's ids)",
        "settings": vars(settings), "notes": notes, "entries": {},
    }
    del model
    for kind in ENTRIES:
        if kind == "compile" and not with_compile:
            doc["entries"][kind] = {"kind": kind, "skipped": "--no-compile"}
            continue
        if kind == "bf16_autocast" and not with_bf16:
            doc["entries"][kind] = {"kind": kind, "skipped": "--no-bf16"}
            continue
        doc["entries"][kind] = run_entry(spec, kind, device, settings)
    doc["seconds"] = time.perf_counter() - start
    if hasattr(os, "getloadavg"):  # with machine()'s value at the start: was the machine shared meanwhile?
        doc["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    return doc


def summary(doc: dict) -> str:
    """One line per entry: training tokens/s, sentences/s at each K, sampler overhead."""
    lines = []
    for kind, e in doc["entries"].items():
        if "skipped" in e or "error" in e:
            lines.append(f"{doc['family']:>14} {kind:<13} {e.get('skipped') or e.get('error')}")
            continue
        tr, sa, ov = e.get("training", {}), e.get("sampling", {}), e.get("sampler_overhead", {})
        tok = f"{tr['tokens_per_second']:.0f} tok/s" if "tokens_per_second" in tr else f"training {tr.get('error')}"
        sent = ", ".join(f"{k} {v['sentences_per_second']:.1f}" for k, v in sa.get("by_steps", {}).items()) \
            or f"sampling {sa.get('error')}"
        over = f"overhead {ov['overhead_ratio']:.3f}x" if "overhead_ratio" in ov else ""
        lines.append(f"{doc['family']:>14} {kind:<13} {tok}; sent/s {sent}; {over}".rstrip("; "))
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    """The command line (see the module docstring): one family's JSON and a summary on stdout."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", required=True, choices=sorted(FAMILIES))
    ap.add_argument("--quick", action="store_true", help="a few steps and calls (a smoke run)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile entry")
    ap.add_argument("--no-bf16", action="store_true",
                    help="skip the bf16 autocast entry (slow on CPUs without bf16 units)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    fresh = None
    if cache is None and not args.no_compile:  # time a cold compile, not a hit in an earlier run's cache
        fresh = tempfile.mkdtemp(prefix="textdiff-bench-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = fresh
    try:
        doc = run_family(args.family, args.device, quick=args.quick, with_compile=not args.no_compile,
                         with_bf16=not args.no_bf16)
    finally:
        if fresh:
            shutil.rmtree(fresh, ignore_errors=True)
    doc["inductor_cache"] = "fresh (cold compile)" if fresh else cache
    path = write_result(doc, Path(args.out), args.family, args.device, args.quick)
    print(summary(doc))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
