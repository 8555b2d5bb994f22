"""DataModules: batch layout, block padding, overflow accounting, tokenizer reuse, real corpora."""
from __future__ import annotations

import functools
import logging
import warnings

import pytest
import torch
from torch.utils.data import SequentialSampler

from textdiff.data.datamodule import TextDataModule
from textdiff.data.samplers import ResumableSampler
from textdiff.data.seq2seq import Seq2SeqDataModule
from textdiff.data.sources import DataError
from textdiff.data.tokenizers import (
    WordTokenizer,
    build_bpe_tokenizer,
    build_word_tokenizer,
    load_tokenizer,
)

# token counts (word regex): 4, 3, 6, 2, 5
LINES = ["the cat sat .", "a dog ran", "the cat and the dog played", "hello there",
         "one two three four five"]


@pytest.fixture()
def corpus(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    valid = tmp_path / "valid.txt"
    valid.write_text("the cat ran\nthe dog sat .\n", encoding="utf-8")
    return tmp_path


def _all_batches(loader):
    return list(loader)


def test_pad_mode_shapes_mask_bos_eos(corpus):
    dm = TextDataModule(str(corpus / "train.txt"), str(corpus / "valid.txt"), max_len=10,
                        batch_size=3)
    dm.setup("fit")
    tok = dm.tokenizer
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"ids", "mask", "index"}
    assert batch["ids"].shape == (2, 10) and batch["ids"].dtype == torch.long
    assert batch["mask"].shape == (2, 10) and batch["mask"].dtype == torch.bool
    assert batch["index"].tolist() == [0, 1]
    assert batch["mask"].sum(1).tolist() == [5, 6]  # 3 and 4 words + BOS + EOS
    assert (batch["ids"][:, 0] == tok.bos_id).all()
    assert batch["ids"][0, 4] == tok.eos_id and batch["ids"][1, 5] == tok.eos_id
    assert (batch["ids"][~batch["mask"]] == tok.pad_id).all()
    assert tok.decode(batch["ids"][1].tolist()) == "the dog sat."
    # all train examples, each once, through the shuffled loader
    idx = torch.cat([b["index"] for b in _all_batches(dm.train_dataloader())])
    assert sorted(idx.tolist()) == [0, 1, 2, 3, 4]
    assert isinstance(dm.train_dataloader().sampler, ResumableSampler)
    assert isinstance(dm.val_dataloader().sampler, SequentialSampler)


def test_pad_to_longest_and_no_bos_eos(corpus):
    dm = TextDataModule(str(corpus / "train.txt"), max_len=10, batch_size=2, pad_to_max=False,
                        add_bos_eos=False)
    dm.setup("fit")
    ids = dm.dataset("train")
    assert [len(it["ids"]) for it in ids] == [4, 3, 6, 2, 5]
    batch = dm.collator()(ids[:2])
    assert batch["ids"].shape == (2, 4) and batch["mask"].sum().item() == 7


def test_block_mode_counts_and_stream_prefix(corpus, caplog):
    L = 4
    dm = TextDataModule(str(corpus / "train.txt"), padding="block", max_len=L, batch_size=100)
    with caplog.at_level(logging.INFO, logger="textdiff.data"):
        dm.setup("fit")
    tok = dm.tokenizer
    stream = [t for line in LINES for t in [tok.bos_id, *tok.encode(line), tok.eos_id]]
    assert len(stream) == 30  # 20 words + 5 BOS + 5 EOS
    batch = next(iter(dm.train_dataloader()))
    n = len(stream) // L
    assert batch["ids"].shape == (n, L) == (7, 4)
    assert batch["mask"].all()
    order = batch["index"].argsort()
    assert batch["index"][order].tolist() == list(range(n))
    assert batch["ids"][order].flatten().tolist() == stream[: n * L]
    assert dm.stats["train"]["dropped_tokens"] == 2
    assert "30 tokens -> 7 blocks of 4" in caplog.text and "last 2 tokens" in caplog.text


def test_truncation_is_counted_and_logged(corpus, caplog):
    dm = TextDataModule(str(corpus / "train.txt"), max_len=6)
    with caplog.at_level(logging.INFO, logger="textdiff.data"):
        dm.setup("fit")
    # framed lengths 6, 5, 8, 4, 7 -> two over max_len=6
    assert "2 of 5 examples (40.00%) are longer than max_len=6 tokens and were truncated" in (
        caplog.text)
    assert dm.stats["train"] == {"examples": 5, "kept": 5, "overflow": 2}
    items = dm.dataset("train")
    tok = dm.tokenizer
    assert items[2]["ids"] == [tok.bos_id, *tok.encode(LINES[2])[:4], tok.eos_id]


def test_drop_and_error_policies(corpus, caplog):
    dm = TextDataModule(str(corpus / "train.txt"), max_len=6, overflow="drop")
    with caplog.at_level(logging.INFO, logger="textdiff.data"):
        dm.setup("fit")
    assert [it["index"] for it in dm.dataset("train")] == [0, 1, 3]
    assert "were dropped" in caplog.text and dm.stats["train"]["kept"] == 3
    dm = TextDataModule(str(corpus / "train.txt"), max_len=6, overflow="error")
    with pytest.raises(DataError, match=r"train\.txt\): example index 2 has 8 tokens"):
        dm.setup("fit")


def test_vocab_size_mismatch_names_config_key(corpus):
    dm = TextDataModule(str(corpus / "train.txt"), vocab_size=999)
    with pytest.raises(ValueError, match=r"data\.vocab_size=999.*vocab_size=2\d"):
        dm.setup("fit")
    real = TextDataModule(str(corpus / "train.txt")).build_tokenizer().vocab_size
    TextDataModule(str(corpus / "train.txt"), vocab_size=real).setup("fit")


def test_tokenizer_path_saves_then_loads(corpus, tmp_path):
    path = tmp_path / "run" / "tokenizer"
    dm1 = TextDataModule(str(corpus / "train.txt"), tokenizer_path=str(path),
                         tokenizer=functools.partial(build_word_tokenizer, min_count=1))
    with pytest.raises(RuntimeError, match="not built"):
        dm1.vocab_size
    tok1 = dm1.build_tokenizer()
    assert dm1.build_tokenizer() is tok1 and (path / "vocab.json").is_file()
    # a different builder is ignored: the saved vocabulary wins
    dm2 = TextDataModule(str(corpus / "train.txt"), tokenizer_path=str(path),
                         tokenizer=functools.partial(build_word_tokenizer, min_count=100))
    tok2 = dm2.build_tokenizer()
    assert isinstance(tok2, WordTokenizer) and tok2.tokens == tok1.tokens
    assert load_tokenizer(path).tokens == tok1.tokens


def test_ready_tokenizer_instance_and_bpe_builder(corpus):
    word = WordTokenizer.from_texts(["the cat"])
    dm = TextDataModule(str(corpus / "train.txt"), tokenizer=word)
    assert dm.build_tokenizer() is word
    dm = TextDataModule(str(corpus / "train.txt"), max_len=16, batch_size=5,
                        tokenizer=functools.partial(build_bpe_tokenizer, vocab_size=300))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["ids"].shape == (5, 16) and (batch["ids"][:, 0] == dm.tokenizer.bos_id).all()
    with pytest.raises(TypeError, match="is a class"):
        TextDataModule(str(corpus / "train.txt"), tokenizer=WordTokenizer)


def test_missing_splits(corpus):
    dm = TextDataModule(str(corpus / "train.txt"))
    dm.setup("fit")
    assert dm.val_dataloader() == [] and dm.test_dataloader() == []
    with pytest.raises(DataError, match="no 'valid' split.*valid_path is None"):
        dm.texts("valid")
    assert dm.texts("train") == LINES
    assert dm.references("train") == [[s] for s in LINES]
    with pytest.raises(ValueError, match="unknown split"):
        dm.texts("dev")


def test_seeded_shuffle_is_deterministic(corpus):
    def order(seed):
        dm = TextDataModule(str(corpus / "train.txt"), batch_size=2, seed=seed)
        dm.setup("fit")
        return [b["index"].tolist() for b in dm.train_dataloader()]

    assert order(3) == order(3)
    assert sorted(sum(order(3), [])) == [0, 1, 2, 3, 4]


def test_fit_with_lightning_trainer(corpus):
    import pytorch_lightning as pl

    class Tiny(pl.LightningModule):
        def __init__(self, vocab_size):
            super().__init__()
            self.emb = torch.nn.Embedding(vocab_size, 4)

        def training_step(self, batch, _):
            return self.emb(batch["ids"])[batch["mask"]].pow(2).mean()

        def validation_step(self, batch, _):  # never called: there is no valid split
            raise AssertionError("no validation data expected")

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = TextDataModule(str(corpus / "train.txt"), max_len=8, batch_size=2)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Total length of `list`.*")
        trainer.fit(Tiny(dm.build_tokenizer().vocab_size), datamodule=dm)
    assert trainer.global_step == 3


def test_seq2seq_parallel_files(tmp_path):
    (tmp_path / "train.de").write_text("Hallo Welt\nein Hund\tläuft\n", encoding="utf-8")
    (tmp_path / "train.en").write_text("hello world\na dog runs\n", encoding="utf-8")
    dm = Seq2SeqDataModule(str(tmp_path / "train"), src_suffix="de", tgt_suffix="en",
                           max_len=6, max_src_len=7, batch_size=2)
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert b["ids"].shape == (2, 6) and b["src_ids"].shape == (2, 7)
    assert b["src_mask"].dtype == torch.bool
    order = b["index"].argsort()
    assert b["src_mask"][order].sum(1).tolist() == [4, 5]
    assert b["mask"][order].sum(1).tolist() == [4, 5]
    assert dm.sources("train") == ["Hallo Welt", "ein Hund\tläuft"]
    assert "Hund" in dm.tokenizer.token_to_id and "dog" in dm.tokenizer.token_to_id  # joint
    (tmp_path / "bad.de").write_text("a\nb\n", encoding="utf-8")
    (tmp_path / "bad.en").write_text("a\n", encoding="utf-8")
    bad = Seq2SeqDataModule(str(tmp_path / "bad"), src_suffix="de", tgt_suffix="en")
    with pytest.raises(DataError, match=r"bad\.de has 2 lines.*bad\.en has 1 lines"):
        bad.build_tokenizer()


def test_seq2seq_needs_fields_or_suffixes(tmp_path):
    with pytest.raises(ValueError, match="src_suffix/tgt_suffix"):
        Seq2SeqDataModule(str(tmp_path / "train.jsonl"))


# ----------------------------------------------------------------------------- real corpora
def test_real_e2e_text(shared_data):
    e2e = shared_data / "e2e"
    dm = TextDataModule(str(e2e / "train.jsonl"), str(e2e / "valid.jsonl"), field="ref",
                        max_train_examples=1000, max_eval_examples=100, batch_size=16,
                        tokenizer=functools.partial(build_word_tokenizer, min_count=2))
    dm.setup("fit")
    assert 300 < dm.vocab_size < 1000
    b = next(iter(dm.train_dataloader()))
    assert b["ids"].shape == b["mask"].shape == (16, 64) and b["index"].shape == (16,)
    assert len(dm.texts("valid")) == 100 and dm.texts("train")[0].startswith("A child friendly")
    n_blocks = len(TextDataModule(str(e2e / "train.jsonl"), field="ref", padding="block",
                                  max_train_examples=1000).dataset("train"))
    assert n_blocks > 200


def test_real_multi30k_seq2seq(shared_data):
    raw = shared_data / "multi30k" / "raw"
    dm = Seq2SeqDataModule(str(raw / "train"), str(raw / "valid"), str(raw / "test"),
                           src_suffix="de", tgt_suffix="en", max_train_examples=2000,
                           max_len=40, max_src_len=48, batch_size=8)
    dm.setup("fit")
    b = next(iter(dm.val_dataloader()))
    assert b["ids"].shape == (8, 40) and b["src_ids"].shape == (8, 48)
    assert b["index"].tolist() == list(range(8))
    assert len(dm.texts("valid")) == 1014 and len(dm.references("test")) == 1000
    assert dm.texts("valid")[0] == dm.references("valid")[0][0]


def test_real_scitldr_multiple_references(shared_data):
    sci = shared_data / "scitldr"
    dm = Seq2SeqDataModule(str(sci / "train.jsonl"), test_path=str(sci / "test.jsonl"),
                           src_field="source", tgt_field="target", max_src_len=256,
                           max_train_examples=200)
    refs, texts = dm.references("test"), dm.texts("test")
    assert len(refs) == 310 and sum(len(r) > 1 for r in refs) > 100
    assert all(t == r[0] for t, r in zip(texts, refs))
    assert dm.sources("test")[0].count(". ") >= 3  # sentences joined with spaces
    dm.setup("test")
    b = next(iter(dm.test_dataloader()))
    assert b["src_ids"].shape == (64, 256) and b["ids"].shape == (64, 64)


def test_block_segments_is_checked(shared_data):
    from textdiff.data import TextDataModule

    with pytest.raises(ValueError, match="block_segments='partial'"):
        TextDataModule(train_path=str(shared_data / "tatoeba_en" / "train.txt"), padding="block",
                       block_segments="partial")
