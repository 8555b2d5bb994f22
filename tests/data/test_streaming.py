"""StreamingTextDataModule: the streamed items are the in-memory module's, shuffled by (seed, epoch); DDP ranks
and DataLoader workers share the stream without overlap; a resumed run sees the uninterrupted run's batches;
only samples of the training file are held in memory; bad files fail with a DataError naming them."""
from __future__ import annotations

import json
import random
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from textdiff.data import streaming
from textdiff.data.datamodule import TextDataModule
from textdiff.data.sources import DataError, DataFileNotFoundError
from textdiff.data.streaming import StreamingTextDataModule
from textdiff.data.tokenizers import build_word_tokenizer

WORDS = "the cat dog sat ran on a mat and it was red big small . , !".split()
N = 203  # non-blank lines (odd: a 2-rank split drops one example per epoch)


def _lines(n: int = N, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 9))) for _ in range(n)]
    lines[5] = " ".join(["cat"] * 30)  # over-long for max_len=12
    return lines


@pytest.fixture()
def corpus(tmp_path):
    lines = _lines()
    raw = lines[:10] + ["", "   "] + lines[10:]  # blank lines are skipped (index counts non-blank lines)
    (tmp_path / "train.txt").write_text("\n".join(raw) + "\n", encoding="utf-8")
    (tmp_path / "train.jsonl").write_text(
        "\n".join(json.dumps({"target": [s, "ref"] if i % 2 else s}) for i, s in enumerate(lines)) + "\n",
        encoding="utf-8")
    (tmp_path / "valid.txt").write_text("the cat sat\na dog ran\n", encoding="utf-8")
    return tmp_path


def _stream_dm(path, **kw) -> StreamingTextDataModule:
    kw = {"max_len": 12, "batch_size": 8, "seed": 3, "shuffle_buffer": 16, **kw}
    dm = StreamingTextDataModule(str(path), **kw)
    dm.setup("fit")
    return dm


def _items(loader) -> list[tuple[tuple[int, ...], int]]:
    """(ids without padding, index) of every example, in loader order."""
    return [(tuple(ids[m].tolist()), int(i)) for b in loader for ids, m, i in zip(b["ids"], b["mask"], b["index"])]


def _memory_items(path, tok, **kw) -> list[tuple[tuple[int, ...], int]]:
    dm = TextDataModule(str(path), max_len=12, tokenizer=tok, **kw)
    dm.setup("fit")
    return [(tuple(it["ids"]), it["index"]) for it in dm.dataset("train")]


@pytest.mark.parametrize("name, field", [("train.txt", None), ("train.jsonl", "target")])
def test_file_order_stream_equals_in_memory_items(corpus, name, field):
    ref = TextDataModule(str(corpus / name), field=field, max_len=12)
    ref.setup("fit")
    dm = _stream_dm(corpus / name, field=field, shuffle_buffer=0, tokenizer_sample=10_000)
    assert dm.tokenizer.tokens == ref.tokenizer.tokens  # the sample is the whole file here
    expected = [(tuple(it["ids"]), it["index"]) for it in ref.dataset("train")]
    got = _items(dm.train_dataloader())
    assert got == expected and len(got) == N
    assert dm.stats["train"]["overflow"] == 1 and got[5][0][-1] == dm.tokenizer.eos_id
    batch = next(iter(dm.train_dataloader()))
    assert batch["ids"].shape == (8, 12) and batch["mask"].dtype == torch.bool  # pad_to_max collate
    assert batch["index"].tolist() == list(range(8))


def test_drop_and_error_policies_as_in_memory(corpus):
    tok = build_word_tokenizer(_lines())
    dropped = _memory_items(corpus / "train.txt", tok, overflow="drop")
    dm = _stream_dm(corpus / "train.txt", tokenizer=tok, overflow="drop", shuffle_buffer=0)
    assert _items(dm.train_dataloader()) == dropped and 5 not in {i for _, i in dropped}
    dm = _stream_dm(corpus / "train.txt", tokenizer=tok, overflow="error")
    with pytest.raises(DataError, match=r"train\.txt: example index 5 has 32 tokens, more than max_len=12"):
        list(dm.train_dataloader())


def test_shuffled_epochs_are_permutations_fixed_by_seed_and_epoch(corpus):
    tok = build_word_tokenizer(_lines())
    expected = Counter(_memory_items(corpus / "train.txt", tok))
    loader = _stream_dm(corpus / "train.txt", tokenizer=tok).train_dataloader()
    epoch0, epoch1 = _items(loader), _items(loader)  # no trainer: each iteration is the next epoch
    assert Counter(epoch0) == expected == Counter(epoch1)
    assert epoch0 != epoch1 and [i for _, i in epoch0] != list(range(N))
    again = _stream_dm(corpus / "train.txt", tokenizer=tok).train_dataloader()
    assert _items(again) == epoch0
    assert _items(_stream_dm(corpus / "train.txt", tokenizer=tok, seed=4).train_dataloader()) != epoch0


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_get_disjoint_equal_shares_of_the_file(corpus, world):
    tok = build_word_tokenizer(_lines())
    shares = [_items(_stream_dm(corpus / "train.txt", tokenizer=tok, rank=r, world_size=world).train_dataloader())
              for r in range(world)]
    indices = [{i for _, i in share} for share in shares]
    assert all(len(s) == N // world for s in shares)  # equal lengths: DDP ranks run the same number of batches
    assert all(not (indices[a] & indices[b]) for a in range(world) for b in range(a + 1, world))
    union = set().union(*indices)
    assert len(union) == N - N % world and union <= set(range(N))
    expected = dict((i, ids) for ids, i in _memory_items(corpus / "train.txt", tok))
    assert all(expected[i] == ids for share in shares for ids, i in share)


def test_workers_give_the_same_batches_as_the_main_process(corpus):
    tok = build_word_tokenizer(_lines())
    main = _items(_stream_dm(corpus / "train.txt", tokenizer=tok).train_dataloader())
    two = _items(_stream_dm(corpus / "train.txt", tokenizer=tok, num_workers=2).train_dataloader())
    assert two == main


@pytest.mark.parametrize("world", [1, 2])
def test_resume_skips_exactly_the_batches_done(corpus, world):
    tok = build_word_tokenizer(_lines())
    for rank in range(world):
        loader = _stream_dm(corpus / "train.txt", tokenizer=tok, rank=rank, world_size=world).train_dataloader()
        list(loader)  # epoch 0
        full = [_items([b]) for b in loader]  # epoch 1's batches
        dm = _stream_dm(corpus / "train.txt", tokenizer=tok, rank=rank, world_size=world)
        dm.load_state_dict({"seed": 3, "epoch": 1, "batches_done": 5})
        loader = dm.train_dataloader()
        assert [_items([b]) for b in loader] == full[5:]
        assert len(_items(loader)) == N // world  # the skip applied once: the next epoch is whole


class _Recorder:
    """A tiny LightningModule that records the index of every training batch it sees."""

    @staticmethod
    def make(seen: list):
        import pytorch_lightning as pl

        class Tiny(pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.emb = torch.nn.Embedding(64, 2)

            def training_step(self, batch, _):
                seen.append(batch["index"].tolist())
                return self.emb(batch["ids"]).sum()

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        return Tiny()


def _fit(corpus, tmp_path, tok, max_steps, seen, ckpt=None, every=1000):
    import pytorch_lightning as pl

    from textdiff.run.checkpoint import LastCheckpoint

    dm = StreamingTextDataModule(str(corpus / "train.txt"), max_len=12, batch_size=32, seed=3, shuffle_buffer=16,
                                 tokenizer=tok)
    trainer = pl.Trainer(max_steps=max_steps, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[LastCheckpoint(str(tmp_path), every)],
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(_Recorder.make(seen), datamodule=dm, ckpt_path=ckpt)
    return tmp_path / "last.ckpt"


@pytest.mark.parametrize("k", [3, 7])  # 7 batches of 32 per epoch: k=7 is saved on an epoch's last batch
def test_killed_and_resumed_fit_sees_the_uninterrupted_batches(corpus, tmp_path, k, one_thread):
    tok = build_word_tokenizer(_lines())
    full: list = []
    _fit(corpus, tmp_path / "a", tok, 10, full)
    assert [len(b) for b in full[:7]] == [32] * 6 + [N - 6 * 32]  # the epoch ends where the file ends
    part: list = []
    ckpt = _fit(corpus, tmp_path / "b", tok, k, part, every=k)
    _fit(corpus, tmp_path / "b", tok, 10, part, ckpt=str(ckpt))
    assert len(full) == 10 and part == full


def test_texts_train_reads_only_train_sample_lines(corpus, monkeypatch):
    real, pulled = streaming.load_stream, []

    def counting(source):  # the real stream, counting the rows it hands out
        return real(source).map(lambda row: pulled.append(1) or row)

    monkeypatch.setattr(streaming, "load_stream", counting)
    dm = StreamingTextDataModule(str(corpus / "train.txt"), max_len=12, train_sample=20, tokenizer_sample=15)
    assert dm.texts("train") == _lines()[:20] and len(dm.references("train")) == 20
    assert dm.build_tokenizer().vocab_size > 4
    assert len(pulled) <= 22 + 1  # 20 non-blank lines and the 2 blank ones before them
    dm = StreamingTextDataModule(str(corpus / "train.txt"), max_len=12, train_sample=5, tokenizer_sample=50)
    dm.build_tokenizer()  # a larger tokenizer sample reads its own head
    assert len(dm.texts("train")) == 5


@pytest.mark.parametrize("overflow", ["truncate", "drop"])
def test_statistics_sequences_are_the_in_memory_items_of_the_first_train_sample(corpus, monkeypatch, overflow):
    """DiffusionBERT's corpus statistics come from here: the first train_sample examples, framed and fitted as
    in training, without streaming the rest of the file."""
    tok = build_word_tokenizer(_lines())
    full = [list(ids) for ids, _ in _memory_items(corpus / "train.txt", tok, overflow=overflow)]
    real, pulled = streaming.load_stream, []
    monkeypatch.setattr(streaming, "load_stream", lambda source: real(source).map(lambda r: pulled.append(1) or r))
    dm = StreamingTextDataModule(str(corpus / "train.txt"), max_len=12, tokenizer=tok, overflow=overflow,
                                 train_sample=40)
    seqs = dm.statistics_sequences()
    head = [list(ids) for ids, i in _memory_items(corpus / "train.txt", tok, overflow=overflow) if i < 40]
    assert seqs == head and len(pulled) <= 42 + 1
    assert (len(seqs) == 39) == (overflow == "drop")  # example 5 is over-long
    assert TextDataModule(str(corpus / "train.txt"), max_len=12, tokenizer=tok,
                          overflow=overflow).statistics_sequences() == full


def test_bad_files_raise_data_errors_that_name_them(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataFileNotFoundError, match="nope.txt"):
        StreamingTextDataModule(str(missing)).setup("fit")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.txt: file is empty"):
        StreamingTextDataModule(str(empty)).texts("train")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nbad \xff byte\n")
    with pytest.raises(DataError, match=r"bad\.txt:2: line 2 is not valid UTF-8"):
        StreamingTextDataModule(str(bad)).texts("train")
    badjson = tmp_path / "bad.jsonl"
    badjson.write_text('{"t": "ok"}\n{"t": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: line 2 is not valid JSON"):
        StreamingTextDataModule(str(badjson), field="t").texts("train")
    with pytest.raises(ValueError, match="padding='pad' only"):
        StreamingTextDataModule(str(bad), padding="block")


def test_fit_needs_max_steps_and_state_rolls_over_at_a_streams_end(corpus):
    dm = StreamingTextDataModule(str(corpus / "train.txt"))
    progress = SimpleNamespace(current=SimpleNamespace(processed=5), is_last_batch=False)
    dm.trainer = SimpleNamespace(max_steps=-1, current_epoch=2, num_training_batches=float("inf"),
                                 fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)))
    with pytest.raises(DataError, match="train.txt.*needs trainer.max_steps"):
        dm.setup("fit")
    assert dm.state_dict() == {"seed": 0, "epoch": 2, "batches_done": 5}
    progress.is_last_batch = True  # saved on the stream's last batch: the next epoch starts afresh
    assert dm.state_dict() == {"seed": 0, "epoch": 3, "batches_done": 0}
