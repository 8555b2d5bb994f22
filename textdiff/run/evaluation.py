"""Sample from a trained model, score the samples, write ``samples.jsonl`` and ``metrics.json``.

Shared by ``textdiff-train`` (after fit), ``textdiff-sample`` and the ``SampleAndScore`` callback.
No Hydra here: everything takes built objects.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from textdiff.data.tokenizers import decode_ids
from textdiff.families.interface import BuildsSampler, EvaluatesItself, HasBound

log = logging.getLogger(__name__)


def sampler_of(model: Any, overrides: Optional[dict[str, Any]] = None) -> Optional[Any]:
    """The one ``Sampler`` a run draws with: the model's configured sampler with ``overrides`` (None values are
    unset keys); None for a model without a sampler (the AR baseline), which ignores sampler settings."""
    if not isinstance(model, BuildsSampler):
        return None
    return model.build_sampler(**{k: v for k, v in (overrides or {}).items() if v is not None})


def text_layout(datamodule: Any) -> dict[str, bool]:
    """How generated rows of ``datamodule``'s layout are decoded (``decode_ids``' ``block`` and ``partial``):
    "block" rows hold several sentences, and with ``block_segments="all"`` the partial ones count too."""
    block = getattr(datamodule, "padding", "pad") == "block"
    return {"block": block, "partial": block and getattr(datamodule, "block_segments", "complete") == "all"}


def generate_texts(model: Any, tokenizer: Any, num_samples: int, *, seed: int = 0, batch_size: int = 100,
                   block: bool = False, seq_len: Optional[int] = None, sampler: Optional[Any] = None,
                   partial: bool = False, **generate_kwargs: Any) -> dict[str, Any]:
    """Draw ``num_samples`` sequences from an unconditional family with ``sampler`` (a built ``Sampler``, see
    ``sampler_of``; None: the model's own) and decode them (``block``, ``partial``: see ``text_layout``).

    Returns a dict with "rows" (per sequence: its sentences), "ids" (N, L), "run" (the ``SamplingRun``),
    "seconds" and "sentences_per_second" (generated sequences per wall-clock second, sampling only).
    """
    start = time.perf_counter()
    run = model.generate_run(num_samples, seq_len=seq_len, seed=seed, batch_size=batch_size,
                             **({"sampler": sampler} if sampler is not None else {}), **generate_kwargs)
    seconds = time.perf_counter() - start
    rows = decode_ids(run.ids.cpu(), tokenizer, block=block, partial=partial)
    return {"rows": rows, "ids": run.ids.cpu(), "run": run, "seconds": seconds,
            "sentences_per_second": num_samples / max(seconds, 1e-9)}


@torch.no_grad()
def nll_on_split(model: Any, loader: Any, num_batches: int, num_t: int = 8, seed: int = 0,
                 **bound_kwargs: Any) -> dict[str, float]:
    """Mean NLL bound in nats per token over the first ``num_batches`` batches (seeded);
    ``bound_kwargs`` go to ``model.nll_bound``."""
    from textdiff.metrics.likelihood import nll_summary

    devices = [p.device for p in model.parameters()][:1] or [torch.device("cpu")]
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    total, tokens, steps = 0.0, 0, None
    try:
        for i, batch in enumerate(loader):
            if i >= num_batches:
                break
            batch = {k: v.to(devices[0]) for k, v in batch.items()}
            out = model.nll_bound(batch, num_t=num_t, **bound_kwargs)
            total += float(out["nll"].sum())
            tokens += int(out["tokens"].sum())
            if "steps" in out:  # the K of a chain's bound (absorbing models)
                steps = int(out["steps"].flatten()[0])
    finally:
        torch.random.set_rng_state(gen_state)
    if tokens == 0:
        return {}
    return {**nll_summary(total, tokens), **({"nll_steps": steps} if steps is not None else {})}


def evaluate_unconditional(
    model: Any,
    datamodule: Any,
    *,
    split: str = "test",
    num_samples: int = 200,
    batch_size: int = 100,
    seed: int = 0,
    nll_batches: int = 4,
    nll_num_t: int = 8,
    sampler: Optional[dict[str, Any]] = None,
    generate_kwargs: Optional[dict[str, Any]] = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Sample, score against ``split`` (the whole split is every sample's reference set), and compute
    the NLL bound on its first batches.

    Returns (records for samples.jsonl, metrics for metrics.json).
    """
    from textdiff.metrics.text import score_unconditional

    layout = text_layout(datamodule)
    block = layout["block"]
    gen = generate_texts(model, datamodule.tokenizer, num_samples, seed=seed, batch_size=batch_size, **layout,
                         sampler=sampler_of(model, sampler), **(generate_kwargs or {}))
    sentences = [s for row in gen["rows"] for s in row]
    records = [{"id": i, "text": " ".join(row) if block else row[0], **({"sentences": row} if block else {})}
               for i, row in enumerate(gen["rows"])]
    labels = gen["run"].labels
    classes = getattr(datamodule, "classes", None)
    if labels is not None and classes and len(labels) == len(records):  # class-conditional samples
        for r, lab in zip(records, labels):
            r["class"] = classes[lab]
    metrics: dict[str, Any] = {"split": split, "num_sequences": num_samples,
                               "sampling_seconds": round(gen["seconds"], 3),
                               "sequences_per_second": round(gen["sentences_per_second"], 3)}
    if not [s for s in sentences if s.strip()]:
        log.warning("no non-empty sentence among %d samples: text metrics are skipped", num_samples)
        metrics["num_samples"] = 0
    else:
        refs = datamodule.texts(split)
        train = datamodule.texts("train")
        metrics.update(score_unconditional([s for s in sentences if s.strip()], reference_set=refs, train_texts=train))
    if nll_batches and isinstance(model, HasBound):
        try:
            loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
            # a chain's bound (absorbing models) keeps the model's own K (DiffusionBERT: the official T / 4)
            # whatever K the samples were drawn with, so that bounds of a K sweep compare
            metrics.update(nll_on_split(model, loader, nll_batches, nll_num_t, seed=seed))
        except (ValueError, RuntimeError) as err:  # e.g. a continuous-time model has no discrete bound
            log.warning("NLL bound skipped: %s", err)
    if gen["run"].sampler is not None:
        metrics["sampler"] = gen["run"].report()
    return records, metrics


def evaluate_conditional(
    model: Any,
    datamodule: Any,
    *,
    split: str = "test",
    num_examples: Optional[int] = None,
    seed: int = 0,
    sampler: Optional[dict[str, Any]] = None,
    generate_kwargs: Optional[dict[str, Any]] = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Generate an output for every source of ``split`` (or its first ``num_examples``), in the
    datamodule's evaluation batches, and score them against their own references.

    Batch i is generated with seed ``seed + i``. Scores: sacreBLEU on detokenised text (``bleu``, 13a),
    ``bleu_tok`` (13a-tokenised and lowercased, the convention of the IWSLT14 numbers in the papers),
    chrF, ROUGE-1/2/L. Returns (records with source, hypothesis and references side by side, metrics).
    """
    from textdiff.metrics.text import corpus_bleu, score_conditional

    built = sampler_of(model, sampler)
    kwargs = {k: v for k, v in (generate_kwargs or {}).items() if v is not None}
    loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    sources, references = datamodule.sources(split), datamodule.references(split)
    device = next(model.parameters()).device
    limit = len(sources) if num_examples is None else min(int(num_examples), len(sources))
    records: list[dict[str, Any]] = []
    seconds, nfe, run = 0.0, 0.0, None
    for i, batch in enumerate(loader):
        if len(records) >= limit:
            break
        keep = min(limit - len(records), batch["src_ids"].shape[0])
        start = time.perf_counter()
        run = model.generate_run(batch["src_ids"][:keep].to(device), batch["src_mask"][:keep].to(device),
                                 seed=seed + i, **({"sampler": built} if built is not None else {}), **kwargs)
        seconds += time.perf_counter() - start
        nfe += (run.nfe or 0.0) * keep
        for j, row in zip(batch["index"][:keep].tolist(), decode_ids(run.ids.cpu(), datamodule.tokenizer)):
            records.append({"id": j, "source": sources[j], "hypothesis": row[0], "references": references[j]})
    hyps, refs = [r["hypothesis"] for r in records], [r["references"] for r in records]
    metrics: dict[str, Any] = {"split": split, "num_examples": len(records), "sampling_seconds": round(seconds, 3),
                               "sentences_per_second": round(len(records) / max(seconds, 1e-9), 3)}
    metrics.update(score_conditional(hyps, refs))
    metrics["bleu_tok"] = corpus_bleu([h.lower() for h in hyps], [[r.lower() for r in rs] for rs in refs])["bleu"]
    if run is not None and run.sampler is not None:  # nfe over every batch, not the last one's
        metrics["sampler"] = {**run.report(), "nfe_per_sequence": round(nfe / max(len(records), 1), 3)}
    metrics["generate"] = {**kwargs, **(run.details if run is not None else {})}
    return records, metrics


def score_with_judges(records: list[dict[str, Any]], judges: Optional[dict[str, Any]], classes: Sequence[str] = (),
                      references: Sequence[str] = ()) -> dict[str, Any]:
    """Scores of generated texts by models trained separately on the same corpus ("judges").

    Args:
        records: the evaluation records; the text is ``text`` (unconditional) or ``hypothesis``. Records with
            a ``class`` (the class a class-conditional sample was asked for) are checked by the classifier.
        judges: ``{"lm": (model, tokenizer), "classifier": (model, tokenizer)}``, either optional: an
            autoregressive language model (perplexity of the texts under it, ``lm_*`` keys of
            ``textdiff.metrics.fluency.lm_perplexity``) and a ``TextClassifier`` (``class_accuracy``: share of
            samples it assigns to the requested class).
        classes: the class names of the generating model's data, which must equal the classifier's.
        references: human texts for ``judges["mauve"]`` (options of ``textdiff.metrics.mauve.mauve_score``,
            e.g. ``{"model": "gpt2-large"}``): MAUVE of the texts against as many references.

    Returns:
        The metrics to add (empty without judges).
    """
    out: dict[str, Any] = {}
    texts = [r.get("text", r.get("hypothesis", "")) for r in records]
    if not judges or not texts:
        return out
    if judges.get("lm") is not None:
        from textdiff.metrics.fluency import lm_perplexity

        lm, tok = judges["lm"]
        out.update(lm_perplexity(lm, tok, texts))
    wanted = [r["class"] for r in records if "class" in r]
    if judges.get("classifier") is not None and wanted:
        clf, tok = judges["classifier"]
        if list(clf.classes) != list(classes):
            raise ValueError(f"the classifier's classes {list(clf.classes)} differ from the data's {list(classes)}: "
                             "train it on the same data config (label_field/label_slot)")
        predicted = clf.classify_texts([t for r, t in zip(records, texts) if "class" in r], tok)
        names = [clf.classes[i] for i in predicted]
        for r, name in zip([r for r in records if "class" in r], names):
            r["classified_as"] = name
        out["class_accuracy"] = sum(p == w for p, w in zip(names, wanted)) / len(wanted)
    if judges.get("mauve") is not None:
        from textdiff.metrics.mauve import mauve_score

        if not references:
            raise ValueError("MAUVE needs reference texts")
        out.update(mauve_score(texts, list(references)[:len(texts)], **dict(judges["mauve"])))
    return out


def evaluate(model: Any, datamodule: Any, *, split: str, num_samples: Optional[int], batch_size: int, seed: int,
             nll_batches: int, nll_num_t: int, sampler: Optional[dict[str, Any]] = None,
             generate_kwargs: Optional[dict[str, Any]] = None,
             judges: Optional[dict[str, Any]] = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Evaluate a trained model on ``split``; ``judges`` (see ``score_with_judges``) add language-model
    perplexity and class accuracy of generated texts.

    A model with its own ``evaluate_on(datamodule, *, split, num_examples, batch_size, seed)`` method
    (autoencoders, classifiers: models that do not generate from noise) is evaluated by it;
    ``evaluate_conditional`` serves models with ``conditional = True`` (``num_samples`` = number of
    sources, None = the whole split), and ``evaluate_unconditional`` the rest."""
    if isinstance(model, EvaluatesItself):
        return model.evaluate_on(datamodule, split=split, num_examples=num_samples, batch_size=batch_size,
                                 seed=seed)
    if getattr(model, "conditional", False):
        records, metrics = evaluate_conditional(model, datamodule, split=split, num_examples=num_samples, seed=seed,
                                                sampler=sampler, generate_kwargs=generate_kwargs)
    else:
        records, metrics = evaluate_unconditional(
            model, datamodule, split=split, num_samples=int(num_samples or 200), batch_size=batch_size, seed=seed,
            nll_batches=nll_batches, nll_num_t=nll_num_t, sampler=sampler, generate_kwargs=generate_kwargs)
    refs = datamodule.texts(split) if judges and judges.get("mauve") is not None else ()
    metrics.update(score_with_judges(records, judges, getattr(datamodule, "classes", ()), refs))
    return records, metrics


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> Path:
    """Write ``records`` as JSON lines to ``path`` atomically (``<path>.tmp``, then rename). Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    tmp.replace(path)
    return path


def write_outputs(out_dir: Path, records: Sequence[dict[str, Any]], metrics: dict[str, Any],
                  suffix: str = "") -> tuple[Path, Path]:
    """Write ``samples{suffix}.jsonl`` and ``metrics{suffix}.json`` atomically (write, then rename)."""
    out_dir = Path(out_dir)
    samples_path = write_jsonl(out_dir / f"samples{suffix}.jsonl", records)
    metrics_path = out_dir / f"metrics{suffix}.json"
    tmp = metrics_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_json_safe(metrics), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(metrics_path)
    return samples_path, metrics_path


def format_metrics(metrics: dict[str, Any]) -> str:
    """One line per headline metric, for the console."""
    keys = ["bleu", "bleu_tok", "chrf", "rougeL", "self_bleu", "dist-1", "dist-2", "dist-3", "dist-4", "diversity",
            "entropy", "memorization", "nll", "ppl", "lm_ppl", "class_accuracy", "accuracy", "copy_bleu",
            "denoise_bleu", "reconstruction_bleu", "sequences_per_second", "sentences_per_second"]
    return "\n".join(f"  {k:>22}: {metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), (int, float)))
