"""Decoding speed of the autoregressive baseline with and without its key/value cache, against the
``transformers`` generation stack on a model of the same shape: ``ar_decoding_cpu[_quick].json`` (random weights)
or ``ar_decoding_trained_cpu[_quick].json`` (``--run-dir``).

    python -m benchmarks.ar_decoding [--run-dir DIR] [--ckpt best|last] [--quick] [--out DIR]
        [--override KEY=VALUE ...]

The model: with ``--run-dir``, a ``textdiff-train experiment=ar_multi30k_cpu`` run directory (its config,
tokenizer and checkpoint, loaded as ``textdiff-sample`` loads them), decoding the sources of the Multi30k test
split; without it, a random network of the preset's shape (``conf/experiment/ar_multi30k_cpu.yaml``, built
with Hydra as ``textdiff-train`` builds it, with ``--override``s; seed 0) decoding random sources of the
preset's source lengths (``benchmarks.families``).

Decoders, each on the same sources, one intra-op thread (``torch.set_num_threads(1)``), eval mode, fp32:

- ``textdiff_cached``: ``Autoregressive.generate(..., use_cache=True)`` (the default: ``ARTransformer``'s
  ``start_cache``/``decode_step``);
- ``textdiff_uncached``: ``use_cache=False``, the reference path that recomputes every prefix at every step;
- ``transformers``: ``BartForConditionalGeneration`` (``MBartForConditionalGeneration`` for a pre-LN network)
  of the same shape (width, layers, heads, FFN, vocabulary, activation, tied embeddings), random weights,
  built from its config (no hub access), ``generate(num_beams=K, use_cache=True)``.

Settings: batch 100 (one ``generate`` call on 100 sources) and batch 1 (``small_sentences`` sources, one call
each), greedy (beam 1) and beam 4, length penalty 1.0. Sentences/s = sentences / wall seconds of the call(s),
median (and best) over the timed rounds (rounds interleave the decoders, so drifts in machine load hit them
alike); one untimed warm-up call per decoder first.

- ``forced_length`` (every model): every decoder decodes exactly ``max_len - 1`` positions, so all do the
  same work whatever their weights: ``min_len == max_len`` for textdiff (EOS banned until the last
  position, forced there), ``min_new_tokens == max_new_tokens == max_len - 1`` for transformers.
- ``natural`` (``--run-dir`` only): the trained model decodes as in evaluation (EOS when it chooses, the
  model's ``max_len``), cached against uncached, with the corpus BLEU of each setting against the test
  references (``textdiff.metrics.text.corpus_bleu``, sacreBLEU 13a on detokenised text).

Every cached setting also records whether its ids equal the uncached ones (``same_ids_as_uncached``).
``--quick`` (a smoke run for tests; ``*_quick.json``, git-ignored) uses batch 8 and 2 single sentences.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from benchmarks.common import RESULTS, machine, write_result

DECODERS = ("textdiff_cached", "textdiff_uncached", "transformers")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What to measure: ``large_batch`` sources in one call and ``small_sentences`` sources one at a time, at
    each beam of ``beams``; ``repeats`` timed rounds (``uncached_repeats`` for the slow recomputing path), a
    further round of a decoder only while its runs so far total at most ``budget`` seconds."""
    large_batch: int
    small_sentences: int
    beams: tuple[int, ...]
    repeats: int
    uncached_repeats: int
    budget: float


FULL = Settings(large_batch=100, small_sentences=10, beams=(1, 4), repeats=5, uncached_repeats=1, budget=20.0)
QUICK = Settings(large_batch=8, small_sentences=2, beams=(1, 4), repeats=1, uncached_repeats=1, budget=0.0)


# ----- models and sources -----
def random_model(overrides: list[str]) -> tuple[Any, Any]:
    """The ``ar_multi30k_cpu`` preset's model with random weights (seed 0) in eval mode, and its composed config.
    ``overrides``: Hydra overrides applied after the preset (e.g. ``model.network.dim=32``)."""
    from benchmarks.families import FAMILIES, _token_overrides, compose
    from textdiff.cli.common import build

    spec = FAMILIES["ar"]
    keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    tokens = [o for o in _token_overrides(spec) if o.split("=", 1)[0] not in keys]
    cfg = compose(spec.experiment, [*tokens, *overrides])
    torch.manual_seed(0)
    return build(cfg, "model").eval(), cfg


def random_sources(model: Any, cfg: Any, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random sources of the preset's Multi30k German lengths: (n, S) ids (BOS, random ids, EOS, PAD) and
    mask, S = the longest."""
    from benchmarks.families import FAMILIES, random_batches

    spec = dataclasses.replace(FAMILIES["ar"], vocab_size=model.vocab_size)
    batch = random_batches(spec, cfg, 1, rows=n, seed=2)[0]
    return batch["src_ids"], batch["src_mask"]


def run_model(run_dir: Path, ckpt: str) -> tuple[Any, Any, Any, Path]:
    """A run directory's model (eval mode, CPU), datamodule, config and checkpoint path (``load_run``)."""
    from textdiff.cli.runs import load_run

    model, dm, cfg, path = load_run(Path(run_dir), ckpt, "cpu")
    if not getattr(model, "conditional", False) or not hasattr(model, "beam_search"):
        raise SystemExit(f"{run_dir} does not hold an encoder-decoder Autoregressive run "
                         "(textdiff-train experiment=ar_multi30k_cpu)")
    return model, dm, cfg, path


def split_sources(dm: Any, n: int) -> tuple[torch.Tensor, torch.Tensor, list[list[str]]]:
    """The first ``n`` sources of the test split, tokenised as in evaluation: (n, S) ids and mask, and their
    references."""
    from textdiff.data.datamodule import collate

    items = dm.dataset("test")[:n]
    batch = collate(items, dm.tokenizer.pad_id)
    refs = dm.references("test")
    return batch["src_ids"], batch["src_mask"], [refs[i] for i in batch["index"].tolist()]


def network_shape(net: Any) -> dict:
    """The ``ARTransformer``'s shape: vocabulary, width, layers, heads, FFN width, positions, activation, LN."""
    layer = net.decoder[0]
    return {"vocab_size": net.vocab_size, "dim": net.dim, "enc_depth": net.enc_depth, "dec_depth": net.dec_depth,
            "heads": layer.self_attn.num_heads, "ffn_dim": layer.linear1.out_features, "max_len": net.max_len,
            "max_src_len": net.max_src_len, "activation": getattr(layer.activation, "__name__", str(layer.activation)),
            "norm_first": bool(layer.norm_first), "tie_embeddings": net.out_proj is None,
            "parameters": sum(p.numel() for p in net.parameters())}


def transformers_model(shape: dict, pad_id: int, bos_id: int, eos_id: int) -> tuple[Any, dict]:
    """A random (seed 0) BART of ``shape`` (MBART when ``shape["norm_first"]``: pre-LN, as BART is post-LN) in
    eval mode, and a description (class, config). Decoding starts from ``bos_id``, as textdiff's."""
    import transformers

    pre_ln = shape["norm_first"]
    config_cls = transformers.MBartConfig if pre_ln else transformers.BartConfig
    model_cls = transformers.MBartForConditionalGeneration if pre_ln else transformers.BartForConditionalGeneration
    kw = dict(vocab_size=shape["vocab_size"], d_model=shape["dim"], encoder_layers=shape["enc_depth"],
              decoder_layers=shape["dec_depth"], encoder_attention_heads=shape["heads"],
              decoder_attention_heads=shape["heads"], encoder_ffn_dim=shape["ffn_dim"],
              decoder_ffn_dim=shape["ffn_dim"], max_position_embeddings=max(shape["max_len"], shape["max_src_len"]),
              activation_function=shape["activation"], scale_embedding=True, tie_word_embeddings=True,
              pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id, decoder_start_token_id=bos_id,
              forced_eos_token_id=None)
    torch.manual_seed(0)
    model = model_cls(config_cls(**kw)).eval()
    return model, {"class": model_cls.__name__, "version": transformers.__version__, "config": kw,
                   "parameters": sum(p.numel() for p in model.parameters())}


# ----- decoding -----
def textdiff_decoder(model: Any, use_cache: bool, forced_len: Optional[int]) -> Callable[..., torch.Tensor]:
    """``decode(src_ids (B, S), src_mask (B, S), beam) -> ids (B, L)`` by ``model.generate``; with
    ``forced_len``, exactly that output length (``max_len == min_len``)."""
    extra = {"max_len": forced_len, "min_len": forced_len} if forced_len else {}

    def decode(src_ids: torch.Tensor, src_mask: torch.Tensor, beam: int) -> torch.Tensor:
        return model.generate(src_ids, src_mask, beam_size=beam, length_penalty=1.0, use_cache=use_cache, **extra)

    return decode


def transformers_decoder(model: Any, forced_len: int, ids: tuple[int, int, int]) -> Callable[..., torch.Tensor]:
    """``decode(src_ids, src_mask, beam) -> ids (B, forced_len)`` by transformers' ``generate`` with its cache,
    exactly ``forced_len - 1`` new tokens (``min_new_tokens == max_new_tokens``), length penalty 1.0."""
    from transformers import GenerationConfig

    pad_id, bos_id, eos_id = ids

    def decode(src_ids: torch.Tensor, src_mask: torch.Tensor, beam: int) -> torch.Tensor:
        config = GenerationConfig(max_new_tokens=forced_len - 1, min_new_tokens=forced_len - 1, num_beams=beam,
                                  do_sample=False, use_cache=True, length_penalty=1.0, early_stopping=False,
                                  no_repeat_ngram_size=0, num_return_sequences=1, pad_token_id=pad_id,
                                  bos_token_id=bos_id, eos_token_id=eos_id, decoder_start_token_id=bos_id,
                                  forced_bos_token_id=None, forced_eos_token_id=None)
        return model.generate(input_ids=src_ids, attention_mask=src_mask.long(), generation_config=config)

    return decode


def _rows(src_ids: torch.Tensor, src_mask: torch.Tensor, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` sources one by one, each trimmed to its own length: [(1, S_i) ids, (1, S_i) mask]."""
    out = []
    for i in range(n):
        width = max(int(src_mask[i].sum()), 1)
        out.append((src_ids[i:i + 1, :width], src_mask[i:i + 1, :width]))
    return out


def _pad_cat(rows: list[torch.Tensor], pad_id: int) -> torch.Tensor:
    width = max(r.shape[1] for r in rows)
    return torch.cat([torch.nn.functional.pad(r, (0, width - r.shape[1]), value=pad_id) for r in rows])


def measure(decoders: dict[str, Callable[..., torch.Tensor]], inputs: list[tuple[torch.Tensor, torch.Tensor]],
            beam: int, repeats: dict[str, int], budget: float, pad_id: int) -> dict[str, dict]:
    """Time each decoder on ``inputs`` (a list of (ids, mask) calls: one batch, or single sentences) at
    ``beam``: rounds interleave the decoders; a decoder runs ``repeats[name]`` rounds at most, a further one
    only while its runs so far total <= ``budget`` s. Returns per decoder: sentences/s of the median and of
    the fastest round, seconds per round, and its ids (first round; (N, L) padded with ``pad_id``)."""
    n = sum(int(ids.shape[0]) for ids, _ in inputs)
    times: dict[str, list[float]] = {k: [] for k in decoders}
    outputs: dict[str, torch.Tensor] = {}
    for r in range(max(repeats.values())):
        for name, decode in decoders.items():
            done = times[name]
            if r >= repeats[name] or (done and sum(done) > budget):
                continue
            start = time.perf_counter()
            with torch.no_grad():
                out = [decode(ids, mask, beam) for ids, mask in inputs]
            done.append(time.perf_counter() - start)
            if name not in outputs:
                outputs[name] = _pad_cat(out, pad_id)
    return {name: {"sentences": n, "sentences_per_second": n / statistics.median(t),
                   "sentences_per_second_best": n / min(t), "seconds_runs": t, "ids": outputs[name]}
            for name, t in times.items()}


def warm_up(decoders: dict[str, Callable[..., torch.Tensor]], src_ids: torch.Tensor, src_mask: torch.Tensor,
            beams: tuple[int, ...]) -> None:
    """One untimed call per decoder and beam on two sources (first-call allocations, lazy imports)."""
    with torch.no_grad():
        for decode in decoders.values():
            for beam in beams:
                decode(src_ids[:2], src_mask[:2], beam)


def bleu_of(ids: torch.Tensor, tokenizer: Any, references: list[list[str]]) -> dict:
    """Corpus BLEU (sacreBLEU 13a, detokenised) of decoded ``ids`` (N, L) against ``references``."""
    from textdiff.data.tokenizers import decode_ids
    from textdiff.metrics.text import corpus_bleu

    hyps = [row[0] for row in decode_ids(ids.cpu(), tokenizer)]
    score = corpus_bleu(hyps, references[:len(hyps)])
    return {"bleu": score["bleu"], "signature": score["signature"], "first_hypothesis": hyps[0] if hyps else ""}


def run_group(name: str, decoders: dict[str, Callable[..., torch.Tensor]], src_ids: torch.Tensor,
              src_mask: torch.Tensor, settings: Settings, pad_id: int,
              bleu: Optional[Callable[[torch.Tensor], dict]] = None) -> list[dict]:
    """Every (batch, beam) setting of one group: rows {group, batch, beam, decoder, sentences,
    sentences_per_second, seconds_runs, [same_ids_as_uncached], [bleu ...]}."""
    warm_up(decoders, src_ids, src_mask, settings.beams)
    repeats = {k: settings.uncached_repeats if k == "textdiff_uncached" else settings.repeats for k in decoders}
    calls = {settings.large_batch: [(src_ids[:settings.large_batch], src_mask[:settings.large_batch])],
             1: _rows(src_ids, src_mask, settings.small_sentences)}
    rows = []
    for batch, inputs in calls.items():
        for beam in settings.beams:
            found = measure(decoders, inputs, beam, repeats, settings.budget, pad_id)
            ref = found.get("textdiff_uncached", {}).get("ids")
            for decoder, res in found.items():
                ids = res.pop("ids")
                row = {"group": name, "batch": batch, "beam": beam, "decoder": decoder, **res,
                       "output_length": int(ids.shape[1])}
                if decoder == "textdiff_cached" and ref is not None:
                    row["same_ids_as_uncached"] = bool(ids.shape == ref.shape and torch.equal(ids, ref))
                if bleu is not None and decoder.startswith("textdiff"):
                    row.update(bleu(ids))
                rows.append(row)
                print(_line(row), flush=True)
    return rows


def _line(row: dict) -> str:
    extra = f" BLEU {row['bleu']:.2f}" if "bleu" in row else ""
    same = f" same ids: {row['same_ids_as_uncached']}" if "same_ids_as_uncached" in row else ""
    return (f"{row['group']:>13} batch {row['batch']:>3} beam {row['beam']} {row['decoder']:<17} "
            f"{row['sentences_per_second']:9.2f} sent/s{extra}{same}")


def speedups(rows: list[dict]) -> dict[str, dict]:
    """Per ``<group> batch=<b> beam=<k>``: cached / uncached and cached / transformers sentences/s, of the median
    rounds (``cached_over_<decoder>``) and of the fastest ones (``..._best``)."""
    out: dict[str, dict] = {}
    for row in rows:
        key = f"{row['group']} batch={row['batch']} beam={row['beam']}"
        out.setdefault(key, {})[row["decoder"]] = row
    ratios: dict[str, dict] = {}
    for key, by in out.items():
        cached = by.get("textdiff_cached")
        ratios[key] = {}
        for other in DECODERS[1:]:
            if cached and other in by:
                name = f"cached_over_{other.replace('textdiff_', '')}"
                ratios[key][name] = cached["sentences_per_second"] / by[other]["sentences_per_second"]
                ratios[key][f"{name}_best"] = (cached["sentences_per_second_best"]
                                               / by[other]["sentences_per_second_best"])
    return ratios


def run(settings: Settings, run_dir: Optional[Path] = None, ckpt: str = "best",
        overrides: Optional[list[str]] = None) -> dict:
    """The benchmark (see the module docstring); returns the JSON document."""
    start = time.perf_counter()
    doc: dict[str, Any] = {"benchmark": "ar_decoding", "quick": settings == QUICK, "machine": machine("cpu"),
                           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "settings": dataclasses.asdict(settings)}
    bleu: Optional[Callable[[torch.Tensor], dict]] = None
    n = max(settings.large_batch, settings.small_sentences)
    if run_dir is not None:
        model, dm, cfg, path = run_model(run_dir, ckpt)
        src_ids, src_mask, refs = split_sources(dm, n)
        doc.update({"mode": "run_dir", "run_dir": str(run_dir), "checkpoint": str(path),
                    "sources": f"the first {src_ids.shape[0]} sources of the test split (Multi30k test: German)"})
        bleu = functools.partial(bleu_of, tokenizer=dm.tokenizer, references=refs)
    else:
        model, cfg = random_model(list(overrides or []))
        src_ids, src_mask = random_sources(model, cfg, n)
        doc.update({"mode": "random", "overrides": list(overrides or []),
                    "sources": "random ids, lengths ~ the preset's Multi30k German source lengths (seed 2)"})
    net = model.network
    shape = network_shape(net)
    ids = (model.pad_id, model.bos_id, model.eos_id)
    hf, hf_info = transformers_model(shape, *ids)
    forced = net.max_len
    doc.update({"network": shape, "transformers": hf_info, "forced_length": forced,
                "decoded_positions_per_sentence": {"forced_length": forced - 1},
                "textdiff_generate": {"length_penalty": 1.0, "max_len_natural": model.max_len},
                "notes": ["forced_length: every decoder runs exactly max_len - 1 decoder steps (EOS banned before "
                          "the last position); transformers' BART also runs its embedding LayerNorm and "
                          "final_logits_bias, and reorders its cross-attention cache in beam search, where "
                          "textdiff's cache keeps one copy of the source's keys/values for all beams",
                          "sentences_per_second: median over the timed rounds (sentences_per_second_best: the "
                          "fastest round); a load average above the CPU count means other jobs shared the cores"]})
    rows = run_group("forced_length", {"textdiff_cached": textdiff_decoder(model, True, forced),
                                       "textdiff_uncached": textdiff_decoder(model, False, forced),
                                       "transformers": transformers_decoder(hf, forced, ids)},
                     src_ids, src_mask, settings, model.pad_id)
    if run_dir is not None:
        rows += run_group("natural", {"textdiff_cached": textdiff_decoder(model, True, None),
                                      "textdiff_uncached": textdiff_decoder(model, False, None)},
                          src_ids, src_mask, settings, model.pad_id, bleu)
    doc["results"] = rows
    doc["speedups"] = speedups(rows)
    doc["seconds"] = time.perf_counter() - start
    if hasattr(os, "getloadavg"):
        doc["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    return doc


def table(doc: dict) -> str:
    """A text table: sentences/s (median rounds) per group, batch and beam for each decoder, the ratios (c/tf
    best: of the fastest rounds), and BLEU."""
    by: dict[tuple, dict] = {}
    for row in doc["results"]:
        by.setdefault((row["group"], row["batch"], row["beam"]), {})[row["decoder"]] = row
    lines = [f"{'group':<14}{'batch':>6}{'beam':>5}{'cached':>10}{'uncached':>10}{'transformers':>14}"
             f"{'c/u':>7}{'c/tf':>7}{'c/tf best':>10}{'BLEU c/u':>16}  same ids"]
    for (group, batch, beam), d in by.items():
        def sps(k: str) -> str:
            return f"{d[k]['sentences_per_second']:.2f}" if k in d else "-"
        c = d.get("textdiff_cached", {}).get("sentences_per_second")
        u = d.get("textdiff_uncached", {}).get("sentences_per_second")
        t = d.get("transformers", {}).get("sentences_per_second")
        cb = d.get("textdiff_cached", {}).get("sentences_per_second_best")
        tb = d.get("transformers", {}).get("sentences_per_second_best")
        bleu = (f"{d['textdiff_cached']['bleu']:.2f}/{d['textdiff_uncached']['bleu']:.2f}"
                if "bleu" in d.get("textdiff_cached", {}) and "bleu" in d.get("textdiff_uncached", {}) else "-")
        lines.append(f"{group:<14}{batch:>6}{beam:>5}{sps('textdiff_cached'):>10}{sps('textdiff_uncached'):>10}"
                     f"{sps('transformers'):>14}{(f'{c / u:.2f}' if c and u else '-'):>7}"
                     f"{(f'{c / t:.2f}' if c and t else '-'):>7}{(f'{cb / tb:.2f}' if cb and tb else '-'):>10}"
                     f"{bleu:>16}  "
                     f"{d.get('textdiff_cached', {}).get('same_ids_as_uncached', '-')}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    """The command line (see the module docstring): the JSON and a table on stdout."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default=None, help="a textdiff-train experiment=ar_multi30k_cpu run directory")
    ap.add_argument("--ckpt", default="best", help="checkpoint of the run directory: best, last or a path")
    ap.add_argument("--quick", action="store_true", help="batch 8 and 2 single sentences, one round (a smoke run)")
    ap.add_argument("--override", action="append", default=[],
                    help="Hydra override of the random model's preset, e.g. model.network.dim=32 (repeatable)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    if args.run_dir and args.override:
        ap.error("--override applies to the random model; a run directory's model is its own")
    torch.set_num_threads(1)
    doc = run(QUICK if args.quick else FULL, Path(args.run_dir) if args.run_dir else None, args.ckpt, args.override)
    name = "ar_decoding_trained" if args.run_dir else "ar_decoding"  # a trained run's figures beside the random ones
    path = write_result(doc, Path(args.out), name, "cpu", args.quick)
    print(table(doc))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
