"""Lightning DataModules for unconditional text and for sequence-to-sequence pairs.

Both yield :class:`textdiff.core.types.Batch` dicts: ``ids`` (B, L) long, ``mask`` (B, L) bool
(True on real tokens, BOS/EOS included), ``index`` (B,) long (position in the split, so
``references(split)[index]`` lines up); seq2seq (``textdiff.data.seq2seq``) adds ``src_ids`` (B, S) and
``src_mask`` (B, S); a TextDataModule with ``label_field`` adds ``labels`` (B,) long (class ids,
``labels(split)[index]``).
Splits: ``"train"``, ``"valid"``, ``"test"``. Truncated/dropped examples are counted, logged on
the ``textdiff.data`` logger and kept in ``self.stats[split]``.
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from textdiff.core.types import Batch, pad_sequences  # pad_sequences: re-exported, its old home
from textdiff.data.sources import OVERFLOW_POLICIES, DataError, fit_length, load_hf_split
from textdiff.data.labels import LabelsMixin
from textdiff.data.samplers import TrainingOrderMixin
from textdiff.data.sources import detect_format, read_jsonl, read_texts, target_references, target_text
from textdiff.data.tokenizers import HFTokenizer, Tokenizer, build_word_tokenizer, load_tokenizer

logger = logging.getLogger("textdiff.data")

SPLITS = ("train", "valid", "test")
DEFAULT_HF_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
TokenizerSpec = Union[Tokenizer, Callable[[list[str]], Tokenizer], str, None]
Items = list[dict[str, Any]]


def collate(
    items: Items, pad_id: int, max_len: int | None = None, max_src_len: int | None = None
) -> Batch:
    """Collate items ``{"ids", "index"[, "src_ids"][, "label"]}`` into a :class:`Batch` padded with
    ``pad_id``: ids/mask (B, L), index (B,), src_ids/src_mask (B, S) for pairs, labels (B,) long
    when the items carry a class id. ``max_len`` / ``max_src_len`` fix L / S; None pads to the
    longest in the batch."""
    ids, mask = pad_sequences([it["ids"] for it in items], pad_id, max_len)
    batch = Batch(ids=ids, mask=mask, index=torch.tensor([it["index"] for it in items]))
    if "label" in items[0]:
        batch["labels"] = torch.tensor([it["label"] for it in items], dtype=torch.long)
    if "src_ids" in items[0]:
        src = [it["src_ids"] for it in items]
        batch["src_ids"], batch["src_mask"] = pad_sequences(src, pad_id, max_src_len)
    return batch


def save_tokenizer(tok: Tokenizer, path: Path) -> None:
    """Save into a temporary sibling, then rename (safe when several DDP ranks race)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    tok.save(tmp)
    try:
        os.rename(tmp, path)
        logger.info("saved tokenizer (vocab_size=%d) to %s", tok.vocab_size, path)
    except OSError:  # another process saved it first
        shutil.rmtree(tmp, ignore_errors=True)


class _BaseDataModule(TrainingOrderMixin, pl.LightningDataModule):
    """Tokenizer, splits and loaders shared by both DataModules (subclasses define
    ``_read_split``, ``_training_texts``, ``_encode``, ``texts`` and ``references``)."""

    def __init__(
        self, paths: dict[str, str | None], tokenizer: TokenizerSpec, tokenizer_path: str | None,
        max_len: int, batch_size: int, eval_batch_size: int | None, num_workers: int,
        overflow: str, max_train_examples: int | None, max_eval_examples: int | None,
        vocab_size: int | None, pad_to_max: bool, seed: int | None, hf_dataset: str | None,
        hf_config: str | None, hf_splits: dict[str, str] | None,
    ) -> None:
        super().__init__()
        if paths["train"] is None and hf_dataset is None:
            raise ValueError(f"{type(self).__name__} needs train_path or hf_dataset")
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow={overflow!r}; expected one of {OVERFLOW_POLICIES}")
        if max_len < 2:
            raise ValueError(f"max_len={max_len} must be >= 2 (it includes BOS and EOS)")
        if isinstance(tokenizer, type):
            raise TypeError(f"tokenizer={tokenizer.__name__} is a class; pass a Tokenizer or a "
                            "builder such as functools.partial(build_word_tokenizer, min_count=2)")
        self.paths, self._tokenizer_spec, self.tokenizer_path = paths, tokenizer, tokenizer_path
        self.max_len, self.batch_size, self.num_workers = max_len, batch_size, num_workers
        self.eval_batch_size = eval_batch_size or batch_size
        self.overflow, self.pad_to_max, self.seed = overflow, pad_to_max, seed
        self.max_train_examples, self.max_eval_examples = max_train_examples, max_eval_examples
        self.expected_vocab_size = vocab_size  # checked against the tokenizer in setup()
        self.hf_dataset, self.hf_config = hf_dataset, hf_config
        self.hf_splits = dict(DEFAULT_HF_SPLITS if hf_splits is None else hf_splits)
        self._tok: Tokenizer | None = None
        self._raw: dict[str, list] = {}
        self._datasets: dict[str, Items] = {}
        self.stats: dict[str, dict[str, int]] = {}  # per split: examples, kept, overflow, ...

    def has_split(self, split: str) -> bool:
        """Whether ``split`` has data (a path, or an ``hf_splits`` entry with ``hf_dataset``)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return split in self.hf_splits if self.hf_dataset else self.paths[split] is not None

    def where(self, split: str) -> str:
        """Human-readable origin of a split, used in messages."""
        if self.hf_dataset is not None:
            return f"{split} split (dataset {self.hf_dataset!r}: {self.hf_splits.get(split)!r})"
        sfx = getattr(self, "suffixes", ())  # parallel files: stem.{src,tgt}
        path = f"{self.paths[split]}.{{{','.join(sfx)}}}" if sfx else self.paths[split]
        return f"{split} split ({path})"

    def raw(self, split: str) -> list:
        """The raw examples of ``split`` (cached), capped by ``max_train/eval_examples``."""
        if split not in self._raw:
            if not self.has_split(split):
                why = f"hf_splits has no {split!r}" if self.hf_dataset else f"{split}_path is None"
                raise DataError(f"no {split!r} split in {type(self).__name__}: {why}")
            rows = self._read_split(split)
            cap = self.max_train_examples if split == "train" else self.max_eval_examples
            if cap is not None and len(rows) > cap:
                logger.info("%s: using the first %d of %d", self.where(split), cap, len(rows))
                rows = rows[:cap]
            self._raw[split] = rows
        return self._raw[split]

    def build_tokenizer(self) -> Tokenizer:
        """Load the tokenizer from ``tokenizer_path`` if it holds one, else build/take it (a
        builder is called on the training texts) and save it there. Idempotent; usable before
        :meth:`setup`."""
        if self._tok is not None:
            return self._tok
        path = Path(self.tokenizer_path) if self.tokenizer_path else None
        if path is not None and path.is_dir() and any(path.iterdir()):
            tok = load_tokenizer(path)
            logger.info("loaded tokenizer (vocab_size=%d) from %s", tok.vocab_size, path)
        else:
            spec = self._tokenizer_spec or build_word_tokenizer
            if isinstance(spec, Tokenizer):
                tok = spec
            elif isinstance(spec, (str, os.PathLike)):
                tok = load_tokenizer(spec) if Path(spec).is_dir() else HFTokenizer(str(spec))
            elif callable(spec):
                tok = spec(self._training_texts())
                if not isinstance(tok, Tokenizer):
                    raise TypeError(f"tokenizer builder {spec!r} returned {type(tok).__name__}")
            else:
                raise TypeError(f"cannot make a tokenizer from {type(spec).__name__}: {spec!r}")
            if path is not None:
                save_tokenizer(tok, path)
        self._tok = tok
        return tok

    def _check_vocab_size(self) -> None:
        want, tok = self.expected_vocab_size, self._tok
        if want is not None and tok is not None and int(want) != tok.vocab_size:
            raise ValueError(f"data.vocab_size={want} but the tokenizer has vocab_size="
                             f"{tok.vocab_size}; set data.vocab_size={tok.vocab_size} or unset it")

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer; call :meth:`build_tokenizer` (or :meth:`setup`) first."""
        if self._tok is None:
            raise RuntimeError("tokenizer not built yet: call build_tokenizer() or setup() first")
        return self._tok

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size (specials included)."""
        return self.tokenizer.vocab_size

    def _frame(self, ids: list[int], add: bool) -> list[int]:
        return [self.tokenizer.bos_id, *ids, self.tokenizer.eos_id] if add else list(ids)

    def setup(self, stage: str | None = None) -> None:
        """Build the tokenizer, check ``vocab_size`` and encode the splits ``stage`` needs."""
        self.build_tokenizer()
        self._check_vocab_size()
        needs = {"fit": ("train", "valid"), "validate": ("valid",), "test": ("test",)}
        for split in needs.get(stage or "", SPLITS):  # predict / None: every split
            if self.has_split(split):
                self.dataset(split)

    def dataset(self, split: str) -> Items:
        """The encoded items ``{"ids", "index"[, "src_ids"]}`` of ``split`` (made on first use)."""
        if split not in self._datasets:
            self.build_tokenizer()
            self._datasets[split] = self._encode(split)
        return self._datasets[split]

    def statistics_sequences(self) -> list[list[int]]:
        """The training sequences (framed ids, each (n_i,) with n_i <= L) that corpus statistics are counted
        on, e.g. DiffusionBERT's token frequencies and length histogram: the whole train split here."""
        return [item["ids"] for item in self.dataset("train")]

    def _record(self, split: str, examples: int, kept: int, overflow: int, **extra: int) -> None:
        self.stats[split] = {"examples": examples, "kept": kept, "overflow": overflow, **extra}
        if kept == 0:
            raise DataError(f"{self.where(split)}: no example left (overflow={self.overflow!r})")

    def collator(self) -> Callable[[Items], Batch]:
        """The collate function (fixed lengths L/S when ``pad_to_max``)."""
        if not self.pad_to_max:
            return functools.partial(collate, pad_id=self.tokenizer.pad_id)
        return functools.partial(collate, pad_id=self.tokenizer.pad_id, max_len=self.max_len,
                                 max_src_len=getattr(self, "max_src_len", None))

    def _loader(self, split: str, train: bool) -> DataLoader | list:
        if not self.has_split(split):
            return []
        data = self.dataset(split)
        return DataLoader(
            data, batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=self.train_sampler(data) if train else None, drop_last=False, num_workers=self.num_workers,
            collate_fn=self.collator(), persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches in an order fixed by ``(shuffle_seed(), epoch)``, sharded over DDP
        ranks (:class:`~textdiff.data.samplers.ResumableSampler`); a resumed run continues the
        interrupted epoch where its checkpoint was written."""
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches in order; ``[]`` when there is no valid split."""
        return self._loader("valid", train=False)

    def test_dataloader(self) -> DataLoader | list:
        """Test batches in order; ``[]`` when there is no test split."""
        return self._loader("test", train=False)


class TextDataModule(LabelsMixin, _BaseDataModule):
    """Unconditional text: one example per line/JSON row, or fixed blocks of a token stream.

    Args:
        train_path, valid_path, test_path: ``.txt`` (one example per line) or ``.jsonl``
            (with ``field``) files; ignored when ``hf_dataset`` is set.
        field: JSON/HF field with the text (e.g. ``ref`` for e2e; default ``text`` for HF).
            A list value gives its first element as the text and all elements as references.
        hf_dataset, hf_config, hf_splits: a Hugging Face dataset and the map from our split
            names to its split names (default train/validation/test).
        padding: ``"pad"``: each example is ``[BOS] tokens [EOS]`` padded to L. ``"block"``
            (Diffusion-LM's E2E mode): the split's framed examples are concatenated and cut into
            consecutive blocks of exactly ``max_len``; the partial last block is dropped (logged);
            ``index`` is the block number and ``mask`` is all True.
        block_segments: the sentences a generated "block" row yields for scoring (``decode_ids``):
            ``"complete"`` (opened by BOS and closed by EOS, as Diffusion-LM's E2E sentences) or ``"all"``
            (also the partial first and last: documents longer than a block, e.g. OpenWebText's).
        add_bos_eos: frame each example with BOS/EOS.
        tokenizer: a Tokenizer, a builder ``list[str] -> Tokenizer`` called on the training
            texts, or a tokenizer directory / HF name; default ``build_word_tokenizer``.
        tokenizer_path: directory to load the tokenizer from when it exists, else to save to.
        max_len: L, including BOS/EOS. overflow: ``"truncate"`` | ``"drop"`` | ``"error"``.
        max_train_examples, max_eval_examples: keep only the first N examples of a split.
        vocab_size: if given, must equal the tokenizer's (``data.vocab_size`` check).
        pad_to_max: pad to L (fixed shape) rather than to the longest in the batch.
        seed: seeds the training shuffle order (default: the run's ``seed``); the order is a function
            of (seed, epoch), so a resumed run continues it (``state_dict``).
        label_field: JSON/HF field holding each example's class (e.g. ``mr`` for e2e); None = no
            labels (batches have no ``labels``). Needs ``padding="pad"`` (a block mixes examples).
        label_slot: when set, ``label_field`` holds an E2E-style meaning representation
            (``"name[X], eatType[pub], ..."``) and the class is the value of this slot (``eatType``
            -> ``pub``); otherwise the whole (string) field value is the class.
        classes: the class names, in class-id order; None = the sorted distinct labels of the
            training split (after ``max_train_examples``). A valid/test label outside the list
            raises a DataError naming the split and the example index.
        missing_label: the class of examples whose MR lacks ``label_slot``; None = drop them
            (counted in ``stats[split]["missing_label"]`` and logged).
    """

    def __init__(
        self, train_path: str | None = None, valid_path: str | None = None,
        test_path: str | None = None, field: str | None = None, hf_dataset: str | None = None,
        hf_config: str | None = None, hf_splits: dict[str, str] | None = None,
        padding: str = "pad", block_segments: str = "complete", add_bos_eos: bool = True,
        tokenizer: TokenizerSpec = None,
        tokenizer_path: str | None = None, max_len: int = 64, batch_size: int = 64,
        eval_batch_size: int | None = None, num_workers: int = 0, overflow: str = "truncate",
        max_train_examples: int | None = None, max_eval_examples: int | None = None,
        vocab_size: int | None = None, pad_to_max: bool = True, seed: int | None = None,
        label_field: str | None = None, label_slot: str | None = None,
        classes: Sequence[str] | None = None, missing_label: str | None = None,
    ) -> None:
        paths = {"train": train_path, "valid": valid_path, "test": test_path}
        super().__init__(paths, tokenizer, tokenizer_path, max_len, batch_size, eval_batch_size,
                         num_workers, overflow, max_train_examples, max_eval_examples, vocab_size,
                         pad_to_max, seed, hf_dataset, hf_config, hf_splits)
        if padding not in ("pad", "block"):
            raise ValueError(f"padding={padding!r}; expected 'pad' or 'block'")
        if block_segments not in ("complete", "all"):
            raise ValueError(f"block_segments={block_segments!r}; expected 'complete' or 'all'")
        self.field, self.padding, self.add_bos_eos = field, padding, add_bos_eos
        self.block_segments = block_segments
        self._init_labels(label_field, label_slot, classes, missing_label, padding)

    def _read_split(self, split: str) -> list:
        """Field values (N,); with ``label_field``, (text value, label value) pairs (N,)."""
        if self.hf_dataset is not None:
            name, config, text = self.hf_dataset, self.hf_config, self.field or "text"
            fields = text if self.label_field is None else [text, self.label_field]
            labels = [self.label_field] if self.label_field else []
            return load_hf_split(name, self.hf_splits[split], fields, config, int_fields=labels)
        if self.label_field is None:
            return read_texts(self.paths[split], self.field)
        if detect_format(self.paths[split]) != "jsonl" or self.field is None:
            raise DataError(f"{self.where(split)}: label_field={self.label_field!r} needs a "
                            "JSON-lines file (.jsonl) with `field` naming the text, or a Hugging "
                            "Face dataset")
        return read_jsonl(self.paths[split], [self.field, self.label_field], int_fields=[self.label_field])

    def _values(self, split: str) -> list:
        """The text-field values of ``split`` (N,), without the label values."""
        rows = self.raw(split)
        return rows if self.label_field is None else [text for text, _ in rows]

    def texts(self, split: str) -> list[str]:
        """The raw texts of ``split`` (N strings; the first element of list values)."""
        return [target_text(v) for v in self._values(split)]

    def references(self, split: str) -> list[list[str]]:
        """Per example, its reference texts (all elements of list values)."""
        return [target_references(v) for v in self._values(split)]

    def _training_texts(self) -> list[str]:
        return [r for refs in self.references("train") for r in refs]

    def _encode(self, split: str) -> Items:
        seqs = [self._frame(e, self.add_bos_eos)
                for e in self.tokenizer.encode_batch(self.texts(split))]
        where, L = self.where(split), self.max_len
        if self.padding == "block":
            stream = [t for s in seqs for t in s]
            n = len(stream) // L
            left = len(stream) - n * L
            logger.info("%s: %d examples, %d tokens -> %d blocks of %d; the last %d tokens "
                        "(%.2f%%) are dropped", where, len(seqs), len(stream), n, L, left,
                        100.0 * left / max(len(stream), 1))
            self._record(split, len(seqs), n, 0, tokens=len(stream), dropped_tokens=left)
            return [{"ids": stream[i * L:(i + 1) * L], "index": i} for i in range(n)]
        eos = self.tokenizer.eos_id if self.add_bos_eos else None
        fitted, n_over = fit_length(seqs, L, self.overflow, eos, where)
        if self.label_field is None:
            items = [{"ids": s, "index": i} for i, s in enumerate(fitted) if s is not None]
            self._record(split, len(seqs), len(items), n_over)
            return items
        labels = self.labels(split)
        n_missing = labels.count(-1)
        if n_missing:
            logger.warning("%s: %d of %d examples (%.2f%%) have no %r slot in field %r and were "
                           "dropped (set missing_label to keep them as a class)", where, n_missing,
                           len(seqs), 100.0 * n_missing / max(len(seqs), 1), self.label_slot,
                           self.label_field)
        items = [{"ids": s, "index": i, "label": c}
                 for i, (s, c) in enumerate(zip(fitted, labels)) if s is not None and c >= 0]
        if not items and n_missing:
            raise DataError(f"{where}: no example left: {n_missing} of {len(seqs)} lack the "
                            f"{self.label_slot!r} slot (missing_label=None drops them)")
        self._record(split, len(seqs), len(items), n_over, missing_label=n_missing)
        return items
