"""Streamed training data for corpora larger than memory (Hugging Face ``datasets`` streaming).

:class:`StreamingTextDataModule` is a :class:`~textdiff.data.datamodule.TextDataModule` whose train split is
never held in memory: ``datasets.load_dataset(..., streaming=True)`` reads the file in chunks, a shuffle buffer
mixes it, ``datasets.distributed.split_dataset_by_node`` gives each DDP rank a disjoint share and
:class:`TokenStream` tokenizes each batch when it is drawn. Items and batches are those of the in-memory module:
items ``{"ids": list[int] (n <= L, BOS/EOS framed), "index": int}`` (``index``: the example's position among the
file's non-blank lines, as in memory), batches ``ids`` (B, L) long, ``mask`` (B, L) bool, ``index`` (B,) long.
Valid/test splits are small and stay in memory.

Order: a pure function of ``(seed, epoch, rank)``: the stream in file order, the ``shuffle_buffer`` of
``datasets`` seeded with ``shuffle_seed()`` and shifted by the epoch, cut to a multiple of the world size (every
rank gets the same number of examples, as ``DistributedSampler(drop_last=True)``), then every ``world_size``-th
example from ``rank``. DataLoader workers take whole batches in turn (worker ``w`` the batches ``k`` with ``k %
num_workers == w``), so the batches come in the same order whatever ``num_workers`` is. An epoch ends at the
end of the file. A resumed run (``state_dict``: seed, epoch, batches done) skips exactly the batches its rank had
trained on, so it sees the batches the uninterrupted run would have seen.
"""
from __future__ import annotations

import functools
import inspect
import itertools
import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from textdiff.data.datamodule import TextDataModule
from textdiff.data.samplers import process_position
from textdiff.data.sources import (
    DataError, DataFileNotFoundError, _get_field, detect_format, fit_length, target_references, target_text,
)
from textdiff.data.tokenizers import Tokenizer

logger = logging.getLogger("textdiff.data")


def load_stream(source: dict[str, Any]) -> Any:
    """The raw rows of ``source`` as a ``datasets.IterableDataset``: ``{"text": line}`` per line of a local file
    (UTF-8, a BOM dropped; ``\\n``, ``\\r\\n`` and a lone ``\\r`` end a line, as in Python's text mode), or the
    rows of a Hugging Face dataset split."""
    import datasets

    if source["hf_dataset"] is None:
        return datasets.load_dataset("text", data_files=source["path"], split="train", streaming=True,
                                     encoding="utf-8-sig")
    try:
        return datasets.load_dataset(source["hf_dataset"], source["hf_config"], split=source["split"],
                                     streaming=True)
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds
        raise DataError(f"cannot stream Hugging Face dataset {source['hf_dataset']!r} (config="
                        f"{source['hf_config']!r}, split={source['split']!r}): {type(e).__name__}: {e}") from e


def _bad_utf8(path: str) -> str:
    """Where the first undecodable line of ``path`` is (read line by line: memory stays O(line))."""
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return f"{path}:{lineno}: line {lineno} is not valid UTF-8 ({e.reason}: byte 0x{line[e.start]:02x})"
    return f"{path}: not valid UTF-8"


def _supported(fn: Callable, **kwargs: Any) -> dict[str, Any]:
    """The ``kwargs`` that ``fn`` accepts (``datasets`` 4.x lacks some of the 5.x options)."""
    params = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def _where(source: dict[str, Any]) -> str:
    return source["path"] if source["hf_dataset"] is None else \
        f"dataset {source['hf_dataset']!r} split {source['split']!r}"


def _parse_row(source: dict[str, Any], row: dict[str, Any], i: int) -> dict[str, Any]:
    """Row ``i`` (0-based, blank lines included) -> ``{"value": str | list[str] | None (blank), "line": i + 1}``,
    read as :func:`~textdiff.data.sources.read_texts` / ``load_hf_split`` would (same errors)."""
    where = f"{_where(source)}:{i + 1}"
    if source["hf_dataset"] is not None:
        value = _get_field(row, source["field"] or "text", f"{_where(source)} row {i}")
        return {"value": None if isinstance(value, str) and not value.strip() else value, "line": i + 1}
    if not row["text"].strip():
        return {"value": None, "line": i + 1}
    if source["format"] == "lines":
        return {"value": row["text"], "line": i + 1}
    try:
        obj = json.loads(row["text"])
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: line {i + 1} is not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return {"value": _get_field(obj, source["field"], where), "line": i + 1}


def stream_examples(source: dict[str, Any], max_examples: Optional[int] = None) -> Any:
    """The non-blank examples of ``source`` in file order, capped at ``max_examples``: a lazy
    ``datasets.IterableDataset`` of ``{"value", "line" (1-based), "index" (0-based among non-blank)}``."""
    ds = load_stream(source)
    columns = ds.column_names or (["text"] if source["hf_dataset"] is None else None)
    ds = ds.map(functools.partial(_parse_row, source), with_indices=True, remove_columns=columns)
    ds = ds.filter(lambda ex: ex["value"] is not None)
    if max_examples is not None:
        ds = ds.take(max_examples)
    return ds.map(lambda ex, i: {"index": i}, with_indices=True)


class TokenStream(IterableDataset):
    """One DDP rank's training items, streamed: a torch ``IterableDataset`` of ``{"ids", "index"}``.

    Args:
        source: where the rows come from (``path``/``format``/``field``, or ``hf_dataset``/``hf_config``/``split``).
        tokenizer: encodes the texts; ``max_len`` (L), ``overflow`` and ``add_bos_eos`` as in ``TextDataModule``.
        batch_size: B; the unit in which workers share the stream and a resume skips.
        seed, shuffle_buffer: the shuffle (``shuffle_buffer=0``: file order).
        rank, world_size: this process's share. max_examples: use only the first N examples of the file.

    Set ``epoch`` and ``skip_batches`` (batches of this rank to leave out) before iterating; an epoch ends
    where the file ends. ``stats`` counts what this process streamed (examples, overflow) in the last epoch.
    """

    def __init__(self, source: dict[str, Any], tokenizer: Tokenizer, *, max_len: int, overflow: str,
                 add_bos_eos: bool, batch_size: int, seed: int, shuffle_buffer: int, rank: int = 0,
                 world_size: int = 1, max_examples: Optional[int] = None) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is not in [0, world_size={world_size})")
        self.source, self.tokenizer, self.max_len, self.overflow = source, tokenizer, max_len, overflow
        self.add_bos_eos, self.batch_size, self.seed = add_bos_eos, batch_size, seed
        self.shuffle_buffer, self.rank, self.world_size = shuffle_buffer, rank, world_size
        self.max_examples, self.where = max_examples, _where(source)
        self.epoch, self.skip_batches = 0, 0
        self.stats: dict[str, int] = {"epoch": 0, "examples": 0, "overflow": 0, "batches_skipped": 0}

    def stream(self, epoch: int) -> Any:
        """This rank's examples of ``epoch`` in training order (a ``datasets.IterableDataset``)."""
        from datasets.distributed import split_dataset_by_node

        ds = stream_examples(self.source, self.max_examples)
        if self.overflow == "drop":  # before the shuffle, so that every rank counts the same kept examples
            ds = ds.filter(lambda ex: len(self._frame(ex["value"])) <= self.max_len)
        if self.shuffle_buffer > 0:
            # one shard at a time into the buffer (datasets >= 5 interleaves shards through threads: slow)
            ds = ds.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer,
                            **_supported(ds.shuffle, max_buffer_input_shards=1))
        if self.world_size > 1:  # drop the last (N mod world_size) examples: equal shares, no DDP hang
            ds = ds.map(lambda batch: batch, batched=True, batch_size=self.world_size, drop_last_batch=True)
        ds = split_dataset_by_node(ds, rank=self.rank, world_size=self.world_size,
                                   **_supported(split_dataset_by_node, strategy="examples"))
        ds.set_epoch(epoch)  # on the final dataset: derived datasets start at epoch 0
        return ds

    def _framed(self, ids: list[int]) -> list[int]:
        return [self.tokenizer.bos_id, *ids, self.tokenizer.eos_id] if self.add_bos_eos else list(ids)

    def _frame(self, value: Any) -> list[int]:
        return self._framed(self.tokenizer.encode(target_text(value)))

    def encode(self, values: list[Any], indices: list[int]) -> list[list[int]]:
        """Framed token ids (n_i,) of a batch's values, fitted to L by :func:`~textdiff.data.sources.fit_length`
        (``"truncate"``: the first L-1 then EOS; ``"error"``: a DataError naming the file and the example
        index; ``"drop"`` was applied upstream). The first truncation is logged, later ones only counted."""
        seqs = [self._framed(s) for s in self.tokenizer.encode_batch([target_text(v) for v in values])]
        policy = "error" if self.overflow == "error" else "truncate"
        eos = self.tokenizer.eos_id if self.add_bos_eos else None
        out, n_over = fit_length(seqs, self.max_len, policy, eos, self.where, indices=indices, log=False)
        if n_over and not self.stats["overflow"]:
            first = next(i for i, seq in enumerate(seqs) if len(seq) > self.max_len)
            logger.warning("%s: example index %d has %d tokens > max_len=%d: truncated (further ones are counted, "
                           "not logged)", self.where, indices[first], len(seqs[first]), self.max_len)
        self.stats["overflow"] += n_over
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, skip = self.epoch, self.skip_batches
        self.stats.update(epoch=epoch, examples=0, overflow=0, batches_skipped=0)
        batches = self.stream(epoch).iter(batch_size=self.batch_size)
        k = -1
        try:
            for k, batch in enumerate(batches):
                if k < skip:
                    self.stats["batches_skipped"] += 1
                    continue
                if (k - skip) % workers != worker:
                    continue
                ids = self.encode(batch["value"], batch["index"])
                self.stats["examples"] += len(ids)
                yield from ({"ids": s, "index": i} for s, i in zip(ids, batch["index"]))
        except UnicodeDecodeError:
            if self.source["path"] is None:
                raise
            raise DataError(_bad_utf8(self.source["path"])) from None
        if k < 0 and skip == 0:
            share = f" (rank {self.rank} of {self.world_size})" if self.world_size > 1 else ""
            raise DataError(f"{self.where}: no training example left{share} (overflow={self.overflow!r})")
        logger.info("%s: epoch %d done on rank %d worker %d: %s", self.where, epoch, self.rank, worker,
                    self.stats)


class _StreamLoader(DataLoader):
    """A DataLoader over a :class:`TokenStream` that positions it (seed, epoch, batches to skip) each time an
    epoch's iterator is made (Lightning makes one per epoch; workers are started afresh and copy it)."""

    def __init__(self, stream: TokenStream, position: Callable[[], tuple[int, int, int]], **kwargs: Any) -> None:
        super().__init__(stream, **kwargs)
        self.position = position

    def __iter__(self) -> Any:
        self.dataset.seed, self.dataset.epoch, self.dataset.skip_batches = self.position()
        return super().__iter__()


class StreamingTextDataModule(TextDataModule):
    """A :class:`TextDataModule` whose train split is streamed from disk (or the hub), never loaded whole.

    Args:
        shuffle_buffer: examples in the shuffle buffer (``datasets``' ``IterableDataset.shuffle``); 0 = file order.
        tokenizer_sample: a tokenizer builder is fitted on the first N training examples (ignored when
            ``tokenizer_path`` holds a tokenizer or ``tokenizer`` is a Tokenizer / directory / hub name).
        train_sample: ``texts("train")``, ``references("train")`` and ``raw("train")`` hold only the first N
            training examples (the memorisation metrics of the evaluation and the fallback references use them).
        rank, world_size: this process's share of the stream; None = from ``torch.distributed`` (else 0 of 1).
        **kwargs: the arguments of :class:`TextDataModule` (``padding="pad"`` only, no ``label_field``).

    Needs ``trainer.max_steps``: a stream has no length, so Lightning cannot count an epoch's batches (its
    ``num_training_batches`` is inf) and the learning-rate schedule could not be sized. ``stats["train"]``
    holds the counts of the last streamed epoch (with ``num_workers=0``; workers log theirs).
    """

    def __init__(self, train_path: str | None = None, shuffle_buffer: int = 10_000,
                 tokenizer_sample: int = 100_000, train_sample: int = 100_000, rank: Optional[int] = None,
                 world_size: Optional[int] = None, **kwargs: Any) -> None:
        if kwargs.get("padding", "pad") != "pad":
            raise ValueError(f"{type(self).__name__} supports padding='pad' only, got {kwargs['padding']!r}")
        if kwargs.get("label_field") is not None:
            raise ValueError(f"{type(self).__name__} does not support label_field; use TextDataModule")
        if shuffle_buffer < 0 or tokenizer_sample < 1 or train_sample < 1:
            raise ValueError(f"shuffle_buffer={shuffle_buffer} must be >= 0, tokenizer_sample={tokenizer_sample} "
                             f"and train_sample={train_sample} >= 1")
        super().__init__(train_path=train_path, **kwargs)
        self.shuffle_buffer, self.tokenizer_sample = int(shuffle_buffer), int(tokenizer_sample)
        self.train_sample, self.rank, self.world_size = int(train_sample), rank, world_size
        self._iterations = 0  # epochs iterated without a trainer (plain use)

    def _source(self) -> dict[str, Any]:
        if self.hf_dataset is not None:
            return {"hf_dataset": self.hf_dataset, "hf_config": self.hf_config, "split": self.hf_splits["train"],
                    "field": self.field, "path": None, "format": None}
        path = Path(self.paths["train"])
        if not path.exists():
            raise DataFileNotFoundError(f"data file not found: {path}")
        if not path.is_file():
            raise DataError(f"not a regular file: {path}")
        fmt = detect_format(path)
        if fmt == "jsonl" and self.field is None:
            raise DataError(f"{path}: a JSON-lines file needs `field` (which key holds the text)")
        if fmt == "lines" and self.field is not None:
            raise DataError(f"{path}: `field`={self.field!r} was given but the file is plain text lines")
        return {"hf_dataset": None, "path": str(path), "format": fmt, "field": self.field}

    def train_stream(self, rank: Optional[int] = None, world_size: Optional[int] = None) -> TokenStream:
        """The training :class:`TokenStream` of ``rank`` of ``world_size`` (default: the module's, else the
        ``torch.distributed`` world, else 0 of 1), positioned at epoch 0."""
        here, dist_world = process_position()
        world = world_size or self.world_size or dist_world
        if rank is None:
            rank = self.rank if self.rank is not None else here
        return TokenStream(self._source(), self.build_tokenizer(), max_len=self.max_len, overflow=self.overflow,
                           add_bos_eos=self.add_bos_eos, batch_size=self.batch_size, seed=self.shuffle_seed(),
                           shuffle_buffer=self.shuffle_buffer, rank=rank, world_size=world,
                           max_examples=self.max_train_examples)

    def _head(self, n: int) -> list:
        """The first ``n`` non-blank training values (str or list of str), read from the stream's start."""
        source = self._source()
        try:
            rows = [ex["value"] for ex in itertools.islice(iter(stream_examples(source, self.max_train_examples)), n)]
        except UnicodeDecodeError:
            raise DataError(_bad_utf8(source["path"])) from None
        if not rows:
            raise DataError(f"{_where(source)}: file is empty (no non-blank lines)" if self.hf_dataset is None
                            else f"{_where(source)} has no non-blank rows")
        logger.info("%s: read the first %d examples (train_sample=%d, tokenizer_sample=%d)", self.where("train"),
                    len(rows), self.train_sample, self.tokenizer_sample)
        return rows

    def _read_split(self, split: str) -> list:
        """valid/test: the whole split (TextDataModule); train: only its first ``train_sample`` values."""
        return self._head(self.train_sample) if split == "train" else super()._read_split(split)

    def _training_texts(self) -> list[str]:
        """The texts a tokenizer builder is fitted on: those of the first ``tokenizer_sample`` examples."""
        n = self.tokenizer_sample
        rows = self.raw("train") if n <= self.train_sample else self._head(n)
        return [r for v in rows[:n] for r in target_references(v)]

    def dataset(self, split: str) -> Any:
        """valid/test: the encoded items in memory; train: a :class:`TokenStream` (nothing read yet)."""
        return self.train_stream() if split == "train" else super().dataset(split)

    def statistics_sequences(self) -> list[list[int]]:
        """Framed ids (n_i,) of the first ``train_sample`` training examples (the stream is not read to its end),
        fitted to L as in training (``overflow="drop"``: too long ones left out)."""
        stream, values = self.train_stream(rank=0, world_size=1), self.raw("train")
        if self.overflow == "drop":  # as the stream's filter: the kept ones fit already
            return [seq for seq in map(stream._frame, values) if len(seq) <= self.max_len]
        return stream.encode(values, list(range(len(values))))

    def setup(self, stage: str | None = None) -> None:
        """As TextDataModule's; fitting needs ``trainer.max_steps`` (a DataError without it)."""
        trainer = self.trainer
        if stage == "fit" and trainer is not None and (trainer.max_steps is None or trainer.max_steps < 0):
            raise DataError(f"{self.where('train')} is streamed and has no length, so training needs "
                            "trainer.max_steps (e.g. trainer.max_steps=20000); max_epochs alone cannot size "
                            "the run or its learning-rate schedule")
        super().setup(stage)

    def _position(self) -> tuple[int, int, int]:
        """(seed, epoch, batches to skip) for the epoch about to be iterated: a checkpoint's position once
        after ``load_state_dict``, else the trainer's current epoch (no trainer: one epoch per iteration)."""
        state, self._resume = self._resume, None
        if state:
            logger.info("training stream resumes at epoch %d after %d batches (seed %d)", state["epoch"],
                        state["batches_done"], state["seed"])
            return state["seed"], state["epoch"], state["batches_done"]
        if self.trainer is not None:
            return self.shuffle_seed(), int(self.trainer.current_epoch), 0
        self._iterations += 1
        return self.shuffle_seed(), self._iterations - 1, 0

    def train_dataloader(self) -> DataLoader:
        """Batches of the training stream (see the module docstring for the order); a resumed run continues
        the interrupted epoch after the batches its checkpoint had trained on."""
        stream = self.train_stream()
        self.stats["train"] = stream.stats
        return _StreamLoader(stream, self._position, batch_size=self.batch_size, num_workers=self.num_workers,
                             collate_fn=self.collator(), persistent_workers=False)

    def state_dict(self) -> dict[str, int]:
        """``seed``, ``epoch``, ``batches_done`` (TrainingOrderMixin); saved on an epoch's last batch, the
        position is the next epoch's start (a stream's end is only known when it is reached)."""
        state = super().state_dict()
        trainer = self.trainer
        if state and state["batches_done"] and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            state.update(epoch=state["epoch"] + 1, batches_done=0)
        return state
