"""TextClassifier: learns a small synthetic task through Lightning, classifies raw texts, evaluates a split,
keeps its class names in checkpoints; TransformerClassifier shapes and padding invariance."""
from __future__ import annotations

import json
import random
import time
from functools import partial

import pytest
import pytorch_lightning as pl
import torch

from textdiff.data import TextDataModule
from textdiff.run.evaluation import evaluate
from textdiff.families import TextClassifier
from textdiff.nn import TransformerClassifier

WORDS = "a b c d e f g h i j k l".split()
MARKER = "zeta"  # class "yes" iff the text holds this word


def _text(rng: random.Random, positive: bool) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 9))]
    if positive:
        words.insert(rng.randint(0, len(words)), MARKER)
    return " ".join(words)


def _write(path, n, seed):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        pos = rng.random() < 0.4
        rows.append({"text": _text(rng, pos), "label": "yes" if pos else "no"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _network(vocab_size, num_classes=2):
    torch.manual_seed(0)
    return TransformerClassifier(vocab_size, num_classes, dim=32, depth=1, heads=2, ffn_mult=2, max_len=16,
                                 dropout=0.0, pad_id=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    """A classifier fitted with Lightning on "does the text hold `zeta`" (300 steps of 32)."""
    root = tmp_path_factory.mktemp("cls")
    dm = TextDataModule(_write(root / "train.jsonl", 600, 0), _write(root / "valid.jsonl", 64, 1),
                        _write(root / "test.jsonl", 200, 2), field="text", label_field="label", max_len=16,
                        batch_size=32, pad_to_max=False, seed=0)
    dm.setup("fit")
    assert dm.tokenizer.pad_id == 0
    model = TextClassifier(_network(dm.vocab_size), optimizer=partial(torch.optim.AdamW, lr=3e-3))
    assert model.classes is None
    trainer = pl.Trainer(accelerator="cpu", max_steps=300, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=2,
                         val_check_interval=150, check_val_every_n_epoch=None)
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    seconds = time.perf_counter() - start
    return dm, model, trainer, seconds, root


def test_learns_token_presence(trained):
    dm, model, _, seconds, _ = trained
    assert model.classes == ["no", "yes"]  # taken from the DataModule at fit start
    assert seconds < 20, seconds
    records, metrics = model.evaluate_on(dm, split="test", num_examples=None, batch_size=64, seed=0)
    assert metrics["accuracy"] > 0.9, metrics
    assert set(metrics) >= {"accuracy", "num_examples", "per_class_accuracy", "majority_baseline"}
    assert metrics["num_examples"] == len(records) == 200
    agree = sum(r["label"] == r["predicted"] for r in records) / len(records)
    assert metrics["accuracy"] == pytest.approx(agree)
    assert set(metrics["per_class_accuracy"]) == {"no", "yes"}
    assert metrics["majority_class"] == "no"  # 40% positives in train
    assert metrics["majority_baseline"] == pytest.approx(sum(r["label"] == "no" for r in records) / 200)
    assert metrics["split_majority_baseline"] == pytest.approx(max(metrics["class_counts"].values()) / 200)
    texts = dm.texts("test")
    names = dm.label_names("test")
    assert [r["id"] for r in records] == list(range(200))
    assert all(r["text"] == texts[r["id"]] and r["label"] == names[r["id"]] for r in records)


def test_evaluate_dispatches_and_subsets(trained):
    dm, model, _, _, _ = trained
    records, metrics = evaluate(model, dm, split="test", num_samples=25, batch_size=8, seed=3, nll_batches=0,
                                nll_num_t=1)
    assert metrics["num_examples"] == len(records) == 25
    ids = [r["id"] for r in records]
    assert ids == sorted(ids) and len(set(ids)) == 25
    again, _ = model.evaluate_on(dm, split="test", num_examples=25, batch_size=25, seed=3)
    assert again == records


def test_classify_texts_round_trip(trained):
    dm, model, _, _, _ = trained
    records, _ = model.evaluate_on(dm, split="test", num_examples=None, batch_size=64, seed=0)
    predicted = model.classify_texts(dm.texts("test"), dm.tokenizer, batch_size=7)
    assert [model.classes[p] for p in predicted] == [r["predicted"] for r in records]
    long_pos = " ".join([MARKER] + WORDS * 3)  # 37 words: truncated to max_len 16, the marker survives
    out = model.classify_texts(["a b zeta c", "a b c d", long_pos, ""], dm.tokenizer)
    assert out[:3] == [1, 0, 1] and len(out) == 4
    assert model.encode_texts([long_pos], dm.tokenizer)[0][-1] == dm.tokenizer.eos_id
    assert len(model.encode_texts([long_pos], dm.tokenizer)[0]) == 16
    model.train()
    model.classify_texts(["a"], dm.tokenizer)
    assert model.training
    model.eval()


def test_classes_survive_checkpoint(trained, tmp_path):
    dm, model, trainer, _, _ = trained
    path = tmp_path / "cls.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    assert ckpt["textdiff"] == {"family": "TextClassifier", "module": "textdiff.families.classifier",
                                "classes": ["no", "yes"]}
    fresh = TextClassifier(_network(dm.vocab_size))
    fresh.load_weights(str(path))
    assert fresh.classes == ["no", "yes"]
    texts = dm.texts("test")[:20]
    assert fresh.classify_texts(texts, dm.tokenizer) == model.classify_texts(texts, dm.tokenizer)
    lightning = TextClassifier(_network(dm.vocab_size))
    lightning.on_load_checkpoint(ckpt)  # what Lightning calls when resuming
    assert lightning.classes == ["no", "yes"]
    with pytest.raises(ValueError, match=r"trained with \['yes', 'no'\]"):
        TextClassifier(_network(dm.vocab_size), classes=["yes", "no"]).load_weights(str(path))


def test_compute_loss_needs_labels():
    model = TextClassifier(_network(20))
    ids = torch.randint(1, 20, (3, 5))
    mask = torch.ones(3, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="the data config has no label_field"):
        model.compute_loss({"ids": ids, "mask": mask, "index": torch.arange(3)})
    terms = model.compute_loss({"ids": ids, "mask": mask, "labels": torch.tensor([0, 1, 1])})
    assert set(terms) == {"loss", "acc"} and terms["loss"].ndim == 0 and 0 <= terms["acc"] <= 1


def test_fit_on_unlabelled_data_fails_clearly(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a b c\nd e f\n", encoding="utf-8")
    dm = TextDataModule(str(path), max_len=8, batch_size=2)
    dm.setup("fit")
    trainer = pl.Trainer(accelerator="cpu", fast_dev_run=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    with pytest.raises(ValueError, match="the data config has no label_field"):
        trainer.fit(TextClassifier(_network(dm.vocab_size)), datamodule=dm)


def test_argument_checks():
    with pytest.raises(ValueError, match="is the data config's label_field set"):
        TransformerClassifier(20, 0)
    with pytest.raises(ValueError, match="has 3 classes"):
        TextClassifier(_network(20), classes=["a", "b", "c"])
    with pytest.raises(ValueError, match="label_smoothing"):
        TextClassifier(_network(20), label_smoothing=1.0)


def test_network_shapes_and_padding_invariance():
    net = _network(30, num_classes=4).eval()
    ids = torch.randint(1, 30, (3, 6))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4], dtype=torch.bool)
    ids = ids.masked_fill(~mask, 0)
    logits = net(ids, mask)
    assert logits.shape == (3, 4) and logits.dtype == torch.float32
    wider = net(torch.cat([ids, torch.zeros(3, 5, dtype=torch.long)], 1),
                torch.cat([mask, torch.zeros(3, 5, dtype=torch.bool)], 1))
    torch.testing.assert_close(wider, logits, atol=1e-5, rtol=1e-5)
    alone = net(ids[2:, :2], mask[2:, :2])
    torch.testing.assert_close(alone, logits[2:], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="exceeds the classifier's max_len=16"):
        net(torch.ones(1, 17, dtype=torch.long), torch.ones(1, 17, dtype=torch.bool))
    model = TextClassifier(net)
    logp = model.predict(ids, mask)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(3))
