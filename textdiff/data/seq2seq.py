"""``Seq2SeqDataModule``: source/target pairs (translation, summarisation, data-to-text) for the conditional
families, on the same base as ``TextDataModule`` (tokenizer, splits, loaders, overflow policy)."""
from __future__ import annotations

import logging

from textdiff.data.datamodule import Items, TokenizerSpec, _BaseDataModule
from textdiff.data.sources import fit_length, load_hf_split, read_jsonl, read_parallel, source_text
from textdiff.data.sources import target_references, target_text

logger = logging.getLogger("textdiff.data")


class Seq2SeqDataModule(_BaseDataModule):
    """Source/target pairs with one joint tokenizer (built on source + target training texts).

    Args:
        train_path, valid_path, test_path: with ``src_suffix``/``tgt_suffix``, the common stem
            of parallel files (``.../multi30k/raw/train`` + ``de``/``en`` reads ``train.de`` and
            ``train.en``); otherwise ``.jsonl`` files read with ``src_field``/``tgt_field``
            (``mr``/``ref`` for e2e, ``source``/``target`` for scitldr).
        src_field, tgt_field: JSON/HF fields (dotted names such as ``translation.de`` reach
            nested ones). A list-valued source is joined with spaces; a list-valued target gives
            its first element as the text and all elements as references.
        src_suffix, tgt_suffix: file suffixes of parallel files.
        max_src_len: S, the source length including BOS/EOS (same overflow policy).
        Other arguments: as in :class:`TextDataModule`. Both sides get BOS/EOS.
    """

    def __init__(
        self, train_path: str | None = None, valid_path: str | None = None,
        test_path: str | None = None, src_field: str | None = None, tgt_field: str | None = None,
        src_suffix: str | None = None, tgt_suffix: str | None = None,
        hf_dataset: str | None = None, hf_config: str | None = None,
        hf_splits: dict[str, str] | None = None, tokenizer: TokenizerSpec = None,
        tokenizer_path: str | None = None, max_len: int = 64, max_src_len: int = 128,
        batch_size: int = 64, eval_batch_size: int | None = None, num_workers: int = 0,
        overflow: str = "truncate", max_train_examples: int | None = None,
        max_eval_examples: int | None = None, vocab_size: int | None = None,
        pad_to_max: bool = True, seed: int | None = None,
    ) -> None:
        paths = {"train": train_path, "valid": valid_path, "test": test_path}
        super().__init__(paths, tokenizer, tokenizer_path, max_len, batch_size, eval_batch_size,
                         num_workers, overflow, max_train_examples, max_eval_examples, vocab_size,
                         pad_to_max, seed, hf_dataset, hf_config, hf_splits)
        if max_src_len < 2:
            raise ValueError(f"max_src_len={max_src_len} must be >= 2 (it includes BOS and EOS)")
        self.parallel = hf_dataset is None and (src_suffix is not None or tgt_suffix is not None)
        if self.parallel and (src_suffix is None or tgt_suffix is None):
            raise ValueError("parallel files need both src_suffix and tgt_suffix")
        if not self.parallel and (src_field is None or tgt_field is None):
            raise ValueError("Seq2SeqDataModule needs src_suffix/tgt_suffix (parallel files) "
                             "or src_field/tgt_field (JSON lines / HF dataset)")
        self.src_field, self.tgt_field, self.max_src_len = src_field, tgt_field, max_src_len
        self.suffixes = (src_suffix.lstrip("."), tgt_suffix.lstrip(".")) if self.parallel else ()

    def _read_split(self, split: str) -> list:
        fields, path = [self.src_field, self.tgt_field], self.paths[split]
        if self.hf_dataset is not None:
            return load_hf_split(self.hf_dataset, self.hf_splits[split], fields, self.hf_config)
        if self.parallel:
            src, tgt = read_parallel(f"{path}.{self.suffixes[0]}", f"{path}.{self.suffixes[1]}")
            return list(zip(src, tgt))
        return read_jsonl(path, fields)

    def sources(self, split: str) -> list[str]:
        """The raw source texts of ``split`` (list values joined with spaces)."""
        return [source_text(s) for s, _ in self.raw(split)]

    def texts(self, split: str) -> list[str]:
        """The raw target texts of ``split`` (first element of list values)."""
        return [target_text(t) for _, t in self.raw(split)]

    def references(self, split: str) -> list[list[str]]:
        """Per example, all target references (every element of list values)."""
        return [target_references(t) for _, t in self.raw(split)]

    def _training_texts(self) -> list[str]:
        return self.sources("train") + [r for refs in self.references("train") for r in refs]

    def _encode(self, split: str) -> Items:
        tok, where, policy = self.tokenizer, self.where(split), self.overflow
        src = [self._frame(e, True) for e in tok.encode_batch(self.sources(split))]
        tgt = [self._frame(e, True) for e in tok.encode_batch(self.texts(split))]
        src, n_src = fit_length(src, self.max_src_len, policy, tok.eos_id, f"{where} source",
                                "max_src_len")
        tgt, n_tgt = fit_length(tgt, self.max_len, policy, tok.eos_id, f"{where} target")
        items = [{"ids": t, "index": i, "src_ids": s}
                 for i, (s, t) in enumerate(zip(src, tgt)) if s is not None and t is not None]
        if len(items) < len(tgt):
            logger.warning("%s: %d of %d pairs dropped in total", where, len(tgt) - len(items),
                           len(tgt))
        self._record(split, len(tgt), len(items), n_src + n_tgt, overflow_src=n_src,
                     overflow_tgt=n_tgt)
        return items
