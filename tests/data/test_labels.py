"""Class labels in TextDataModule: from an E2E meaning-representation slot or a whole field,
dropping or keeping examples without the slot, fixed class lists, errors that name the split and
example, and ``data.num_classes`` filled by ``build_datamodule``."""
from __future__ import annotations

import json
import logging

import pytest
import torch
from omegaconf import OmegaConf

from textdiff.cli.common import ConfigError, build_datamodule
from textdiff.data.datamodule import TextDataModule, collate
from textdiff.data.seq2seq import Seq2SeqDataModule
from textdiff.data.sources import DataError, parse_mr

TRAIN = [
    ("name[Alpha], eatType[pub], food[French]", "Alpha is a pub with French food ."),
    ("name[Beta], eatType[coffee shop]", "Beta is a coffee shop ."),
    ("name[Gamma], food[Italian]", "Gamma serves Italian food ."),  # no eatType
    ("name[Delta], eatType[restaurant], area[riverside]", "Delta is a restaurant by the river ."),
    ("name[Eps], eatType[pub]", "Eps is a pub ."),
]
VALID = [
    ("name[Zeta], eatType[coffee shop]", "Zeta is a coffee shop ."),
    ("name[Eta]", "Eta is a place ."),  # no eatType
    ("name[Theta], eatType[pub]", "Theta is a pub ."),
]
TEST_BAD = [
    ("name[Iota], eatType[pub]", "Iota is a pub ."),
    ("name[Kappa], eatType[bar]", "Kappa is a bar ."),  # not a training class
]


def _write(path, rows):
    lines = [json.dumps({"mr": mr, "ref": ref}) + "\n" for mr, ref in rows]
    path.write_text("".join(lines), encoding="utf-8")
    return str(path)


@pytest.fixture()
def e2e(tmp_path):
    return {"train_path": _write(tmp_path / "train.jsonl", TRAIN),
            "valid_path": _write(tmp_path / "valid.jsonl", VALID),
            "test_path": _write(tmp_path / "test_bad.jsonl", TEST_BAD)}


def _dm(e2e, **kw):
    args = dict(e2e, field="ref", label_field="mr", label_slot="eatType", max_len=16, batch_size=2)
    args.update(kw)
    return TextDataModule(**args)


def test_parse_mr():
    mr = "name[The Eagle], eatType[coffee shop], customer rating[5 out of 5], priceRange[£20-25]"
    assert parse_mr(mr) == {"name": "The Eagle", "eatType": "coffee shop",
                            "customer rating": "5 out of 5", "priceRange": "£20-25"}
    assert parse_mr("") == {}
    with pytest.raises(DataError, match=r"f\.jsonl:3: cannot parse .*'name\[a\] food'"):
        parse_mr("name[a] food", "f.jsonl:3")
    with pytest.raises(DataError, match="slot 'name' occurs twice"):
        parse_mr("name[a], name[b]")


def test_eattype_classes_labels_and_dropped_examples(e2e, caplog):
    dm = _dm(e2e)
    assert dm.classes == ["coffee shop", "pub", "restaurant"] and dm.num_classes == 3
    with caplog.at_level(logging.WARNING, logger="textdiff.data"):
        dm.setup("fit")
    assert dm.labels("train") == [1, 0, -1, 2, 1]  # -1: Gamma has no eatType
    assert dm.label_names("valid") == ["coffee shop", None, "pub"]
    assert dm.stats["train"] == {"examples": 5, "kept": 4, "overflow": 0, "missing_label": 1}
    assert dm.stats["valid"]["missing_label"] == 1 and dm.stats["valid"]["kept"] == 2
    assert "1 of 5 examples (20.00%) have no 'eatType' slot" in caplog.text
    # texts/references still cover every raw example, so ``index`` lines up with them
    assert dm.texts("train")[2] == "Gamma serves Italian food ."
    assert len(dm.references("valid")) == 3
    for split, loader in (("train", dm.train_dataloader()), ("valid", dm.val_dataloader())):
        seen = []
        for batch in loader:
            assert set(batch) == {"ids", "mask", "index", "labels"}
            assert batch["labels"].dtype == torch.long
            assert batch["labels"].shape == batch["index"].shape
            want = [dm.labels(split)[i] for i in batch["index"].tolist()]
            assert batch["labels"].tolist() == want
            seen += batch["index"].tolist()
        assert sorted(seen) == [i for i, c in enumerate(dm.labels(split)) if c >= 0]


def test_missing_label_keeps_examples_as_a_class(e2e):
    dm = _dm(e2e, missing_label="none")
    dm.setup("fit")
    assert dm.classes == ["coffee shop", "none", "pub", "restaurant"]
    assert dm.labels("train") == [2, 0, 1, 3, 2] and dm.labels("valid") == [0, 1, 2]
    assert dm.stats["train"]["kept"] == 5 and dm.stats["train"]["missing_label"] == 0


def test_unknown_label_names_split_and_index(e2e):
    dm = _dm(e2e)
    with pytest.raises(DataError, match=r"test split \(.*test_bad\.jsonl\): example index 1 has "
                                        r"label 'bar', which is not one of the 3 classes"):
        dm.setup("test")


def test_fixed_class_list(e2e):
    dm = _dm(e2e, classes=["restaurant", "pub", "coffee shop", "bar"])
    assert dm.num_classes == 4
    assert dm.labels("train") == [1, 2, -1, 0, 1]
    dm.setup("test")  # "bar" is a class now
    assert dm.labels("test") == [1, 3]
    with pytest.raises(DataError,
                       match=r"train split .* example index 0 has label 'pub'.*from data\.classes"):
        _dm(e2e, classes=["coffee shop", "restaurant"]).setup("fit")


def test_whole_field_label_without_slot(tmp_path):
    rows = [{"text": "good film", "topic": "film"}, {"text": "nice song", "topic": "music"},
            {"text": "bad film", "topic": " film "}]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    dm = TextDataModule(str(path), field="text", label_field="topic", max_len=8, batch_size=4)
    assert dm.classes == ["film", "music"] and dm.labels("train") == [0, 1, 0]
    batch = next(iter(dm.train_dataloader()))
    pairs = sorted(zip(batch["index"].tolist(), batch["labels"].tolist()))
    assert pairs == [(0, 0), (1, 1), (2, 0)]


def test_integer_labels_become_class_names_but_integer_texts_stay_errors(tmp_path):
    rows = [{"text": "stocks fell", "label": 2}, {"text": "team won", "label": 1}, {"text": 7, "label": 1}]
    path = tmp_path / "n.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]), encoding="utf-8")
    dm = TextDataModule(str(path), field="text", label_field="label", max_len=8, batch_size=4)
    assert dm.classes == ["1", "2"] and dm.labels("train") == [1, 0]  # AG News-style ClassLabel ids
    bad = tmp_path / "b.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match=r"b\.jsonl:3: field 'text' must be a string"):
        TextDataModule(str(bad), field="text", label_field="label", max_len=8).texts("train")


def test_argument_errors(e2e, tmp_path):
    with pytest.raises(ValueError, match="needs padding='pad'.*block"):
        _dm(e2e, padding="block")
    with pytest.raises(ValueError, match="label_slot given but label_field is None"):
        TextDataModule(e2e["train_path"], field="ref", label_slot="eatType")
    with pytest.raises(ValueError, match="missing_label='none' is not one of classes"):
        _dm(e2e, classes=["pub", "restaurant"], missing_label="none")
    with pytest.raises(ValueError, match="distinct"):
        _dm(e2e, classes=["pub", "pub"])
    lines = tmp_path / "plain.txt"
    lines.write_text("a b\nc d\n", encoding="utf-8")
    with pytest.raises(DataError, match="label_field='mr' needs a JSON-lines file"):
        TextDataModule(str(lines), label_field="mr").setup("fit")


def test_no_labels_is_unchanged(e2e):
    dm = TextDataModule(e2e["train_path"], e2e["valid_path"], field="ref", max_len=16, batch_size=2)
    dm.setup("fit")
    assert dm.classes == [] and dm.num_classes == 0
    assert set(next(iter(dm.train_dataloader()))) == {"ids", "mask", "index"}
    assert dm.stats["train"] == {"examples": 5, "kept": 5, "overflow": 0}
    with pytest.raises(DataError, match="no labels: set label_field"):
        dm.labels("train")


def test_collate_adds_labels_only_when_items_have_them():
    items = [{"ids": [1, 5, 2], "index": 0, "label": 2}, {"ids": [1, 2], "index": 1, "label": 0}]
    batch = collate(items, pad_id=0)
    assert batch["labels"].tolist() == [2, 0] and batch["labels"].dtype == torch.long
    bare = [{k: v for k, v in it.items() if k != "label"} for it in items]
    assert "labels" not in collate(bare, pad_id=0)


def _data_cfg(**data):
    return OmegaConf.create({"data": {"_target_": "textdiff.data.TextDataModule", "field": "ref",
                                      "max_len": 16, "vocab_size": None, **data}})


def test_build_datamodule_fills_num_classes(e2e, tmp_path):
    labelled = dict(train_path=e2e["train_path"], label_field="mr", label_slot="eatType")
    cfg = _data_cfg(**labelled, num_classes=None)
    dm = build_datamodule(cfg, tmp_path / "a")
    assert cfg.data.num_classes == dm.num_classes == 3
    # a saved config.yaml (num_classes filled in) rebuilds the DataModule
    again = build_datamodule(OmegaConf.create(OmegaConf.to_yaml(cfg)), None)
    assert again.classes == dm.classes
    cfg = _data_cfg(train_path=e2e["train_path"])  # no labels, no key: 0
    build_datamodule(cfg, tmp_path / "b")
    assert cfg.data.num_classes == 0
    build_datamodule(OmegaConf.create(OmegaConf.to_yaml(cfg)), None)
    with pytest.raises(ConfigError, match=r"data\.num_classes=5 but the data has 3 classes"):
        build_datamodule(_data_cfg(**labelled, num_classes=5), tmp_path / "c")
    with pytest.raises(ConfigError, match=r"data\.num_classes=3 but the data has no labels"):
        build_datamodule(_data_cfg(train_path=e2e["train_path"], num_classes=3), tmp_path / "d")


def test_build_datamodule_seq2seq_gets_zero_classes(e2e, tmp_path):
    cfg = OmegaConf.create({"data": {"_target_": "textdiff.data.Seq2SeqDataModule",
                                     "train_path": e2e["train_path"], "src_field": "mr",
                                     "tgt_field": "ref", "max_len": 16, "max_src_len": 16}})
    dm = build_datamodule(cfg, tmp_path)
    assert isinstance(dm, Seq2SeqDataModule) and cfg.data.num_classes == 0
    # num_classes is held out of Seq2SeqDataModule's arguments
    build_datamodule(OmegaConf.create(OmegaConf.to_yaml(cfg)), None)


def test_real_e2e_labels(shared_data):
    """Labels match the README's MR regex; eatType needs the whole train file (its first 11,000
    lines, grouped by MR, are all restaurants), food has all 7 classes in the first 300 lines."""
    import re

    root = shared_data / "e2e"
    dm = TextDataModule(str(root / "train.jsonl"), str(root / "valid.jsonl"), field="ref",
                        label_field="mr", label_slot="eatType", max_eval_examples=300)
    assert dm.classes == ["coffee shop", "pub", "restaurant"]
    for split in ("train", "valid"):
        lines = (root / f"{split}.jsonl").read_text("utf-8").splitlines()
        mrs = [json.loads(line)["mr"] for line in lines]
        labels = dm.labels(split)
        assert len(labels) == (len(mrs) if split == "train" else 300)
        for mr, c in zip(mrs, labels):
            want = dict(re.findall(r"(\w[\w ]*?)\[(.*?)\]", mr)).get("eatType")
            assert (c == -1) if want is None else dm.classes[c] == want
    assert set(dm.label_names("valid")) <= {"coffee shop", None}  # the devset has a single eatType
    food = TextDataModule(str(root / "train.jsonl"), field="ref", label_field="mr",
                          label_slot="food", max_train_examples=300)
    assert food.classes == ["Chinese", "English", "Fast food", "French", "Indian", "Italian",
                            "Japanese"]
