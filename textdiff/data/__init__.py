"""Data layer: tokenizers, raw-text readers, Lightning DataModules and a synthetic toy corpus.

Re-exports are lazy (same ``__getattr__`` pattern as :mod:`textdiff`), so importing
``textdiff.data`` or ``textdiff.data.tokenizers`` does not pull in Lightning, ``transformers``
or ``datasets``.
"""
from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it (loaded lazily on first attribute access)
_EXPORTS = {
    # tokenizers (no Lightning; transformers/tokenizers imported inside functions)
    "Tokenizer": "textdiff.data.tokenizers",
    "TokenizerError": "textdiff.data.tokenizers",
    "WordTokenizer": "textdiff.data.tokenizers",
    "HFTokenizer": "textdiff.data.tokenizers",
    "build_word_tokenizer": "textdiff.data.tokenizers",
    "build_bpe_tokenizer": "textdiff.data.tokenizers",
    "load_tokenizer": "textdiff.data.tokenizers",
    "decode_ids": "textdiff.data.tokenizers",
    # raw text
    "DataError": "textdiff.data.sources",
    "DataFileNotFoundError": "textdiff.data.sources",
    "read_lines": "textdiff.data.sources",
    "read_jsonl": "textdiff.data.sources",
    "read_parallel": "textdiff.data.sources",
    "read_texts": "textdiff.data.sources",
    "load_hf_split": "textdiff.data.sources",
    "source_text": "textdiff.data.sources",
    "target_text": "textdiff.data.sources",
    "target_references": "textdiff.data.sources",
    # DataModules (import Lightning)
    "TextDataModule": "textdiff.data.datamodule",
    "Seq2SeqDataModule": "textdiff.data.seq2seq",
    "StreamingTextDataModule": "textdiff.data.streaming",
    "collate": "textdiff.data.datamodule",
    # corpus statistics (spindle token weights, length histogram)
    "token_counts": "textdiff.data.word_freq",
    "spindle_weights": "textdiff.data.word_freq",
    "length_counts": "textdiff.data.word_freq",
    # synthetic corpus and paths
    "make_toy_corpus": "textdiff.data.synthetic",
    "toy_corpus_dir": "textdiff.data.synthetic",
    "shared_data_dir": "textdiff.data.paths",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'textdiff.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
