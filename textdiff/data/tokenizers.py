"""Tokenizers behind one small interface: a word-level vocabulary and a Hugging Face wrapper.

Importing this module is cheap: ``transformers`` and ``tokenizers`` are imported inside the
functions that need them, and nothing here imports Lightning or touches the network.

Special-token convention (both kinds): ``encode`` never adds BOS/EOS (the DataModules do);
``decode`` always drops PAD and, with ``skip_special=True``, also BOS, EOS, MASK and any other
control token. UNK is *kept* by ``decode`` (it stands for a word, and dropping it would change
the text that metrics see), unless it shares its id with BOS/EOS/PAD (as in GPT-2).
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

logger = logging.getLogger("textdiff.data")

WORD_VOCAB_FILE = "vocab.json"
HF_MARKER_FILE = "textdiff_tokenizer.json"
WORD_PATTERN = r"\w+(?:[-'’]\w+)*|[^\w\s]"
"""Word splitting used by :class:`WordTokenizer`: runs of word characters, optionally joined by
inner hyphens/apostrophes (``kid-friendly``, ``don't``, ``It's`` stay whole), or one
punctuation character."""

_NO_SPACE_BEFORE = frozenset(",.!?;:)%")
_NO_SPACE_AFTER = frozenset("(")


class TokenizerError(ValueError):
    """A tokenizer cannot be built, loaded or saved (the message names the path/name)."""


class Tokenizer:
    """Common interface of every tokenizer the data layer uses.

    Attributes:
        vocab_size: number of ids, specials included (the embedding table size).
        pad_id, unk_id, bos_id, eos_id: ids of the special tokens.
        mask_id: id of the mask token (absorbing diffusion), or None when there is none.
    """

    vocab_size: int
    pad_id: int
    unk_id: int
    bos_id: int
    eos_id: int
    mask_id: int | None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, (n,), without BOS/EOS."""
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` for many texts at once: N lists of ids (no BOS/EOS)."""
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of ``ids`` (n,). PAD is always dropped; other specials too if ``skip_special``."""
        raise NotImplementedError

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        """The token strings of ``ids`` (n,), specials included."""
        raise NotImplementedError

    def save(self, directory: str | os.PathLike) -> None:
        """Write into ``directory`` (created) so that :func:`load_tokenizer` restores it."""
        raise NotImplementedError

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids dropped by ``decode(..., skip_special=True)`` (PAD, BOS, EOS, MASK, ...)."""
        ids = {self.pad_id, self.bos_id, self.eos_id}
        if self.mask_id is not None:
            ids.add(self.mask_id)
        return frozenset(ids)

    def _filter(self, ids: Sequence[int], skip_special: bool) -> list[int]:
        ids = [int(i) for i in ids]
        drop = self.special_ids if skip_special else frozenset({self.pad_id})
        return [i for i in ids if i not in drop]


class WordTokenizer(Tokenizer):
    """Word-level vocabulary in the style of Diffusion-LM (E2E / ROCStories experiments).

    Diffusion-LM split words with spaCy; we do not depend on spaCy and split with the regex
    :data:`WORD_PATTERN` instead (words with inner ``-``/``'`` kept whole, each punctuation mark
    its own token). Special tokens come first with fixed ids: ``[PAD]``=0, ``[UNK]``=1,
    ``[START]``=2 (BOS), ``[END]``=3 (EOS) and, if requested, ``[MASK]``=4; words follow.

    Args:
        tokens: the full token list; position = id. Must start with the special tokens.
        lowercase: lowercase text before lookup.
        options: build options recorded for provenance (``min_count``, ``max_size``).
    """

    SPECIALS = ("[PAD]", "[UNK]", "[START]", "[END]")
    MASK = "[MASK]"

    def __init__(
        self, tokens: Sequence[str], lowercase: bool = False, options: dict | None = None
    ) -> None:
        tokens = list(tokens)
        if tuple(tokens[:4]) != self.SPECIALS:
            raise TokenizerError(f"WordTokenizer tokens must start with {list(self.SPECIALS)}")
        if len(set(tokens)) != len(tokens):
            dup = [t for t, c in Counter(tokens).items() if c > 1][:5]
            raise TokenizerError(f"WordTokenizer has duplicate tokens: {dup}")
        self.tokens = tokens
        self.lowercase = bool(lowercase)
        self.options = dict(options or {})
        self.token_to_id = {t: i for i, t in enumerate(tokens)}
        self.vocab_size = len(tokens)
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = 0, 1, 2, 3
        self.mask_id = self.token_to_id.get(self.MASK)
        self._regex = re.compile(WORD_PATTERN)

    @classmethod
    def from_texts(
        cls,
        texts: Iterable[str],
        min_count: int = 1,
        max_size: int | None = None,
        lowercase: bool = False,
        add_mask_token: bool = False,
    ) -> "WordTokenizer":
        """Build the vocabulary from ``texts``.

        Words with count >= ``min_count`` are kept, sorted by (-count, word) so the ids are
        deterministic. ``max_size`` caps the *total* vocabulary size, specials included. How
        many word types and running words fall out of the vocabulary (and become ``[UNK]``) is
        logged.
        """
        if min_count < 1:
            raise TokenizerError(f"min_count must be >= 1, got {min_count}")
        regex = re.compile(WORD_PATTERN)
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(regex.findall(text.lower() if lowercase else text))
        specials = list(cls.SPECIALS) + ([cls.MASK] if add_mask_token else [])
        if max_size is not None and max_size <= len(specials):
            raise TokenizerError(f"max_size={max_size} leaves no room beside {specials}")
        words = sorted(
            (w for w, c in counts.items() if c >= min_count and w not in specials),
            key=lambda w: (-counts[w], w),
        )
        if max_size is not None:
            words = words[: max_size - len(specials)]
        total, kept = sum(counts.values()), sum(counts[w] for w in words)
        if total:
            logger.info(
                "word vocabulary: %d of %d word types kept (min_count=%d, max_size=%s); "
                "%d of %d running words (%.2f%%) will map to [UNK]",
                len(words), len(counts), min_count, max_size, total - kept, total,
                100.0 * (total - kept) / total,
            )
        options = {"min_count": min_count, "max_size": max_size, "add_mask_token": add_mask_token}
        return cls(specials + words, lowercase=lowercase, options=options)

    def split(self, text: str) -> list[str]:
        """The word strings of ``text`` (after lowercasing, if enabled)."""
        return self._regex.findall(text.lower() if self.lowercase else text)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, (n,); unknown words map to ``unk_id``; no BOS/EOS."""
        get, unk = self.token_to_id.get, self.unk_id
        return [get(w, unk) for w in self.split(text)]

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        """The token strings of ``ids`` (n,); raises IndexError for an id out of range."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise IndexError(f"token id {i} out of range [0, {self.vocab_size})")
            out.append(self.tokens[i])
        return out

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Join the tokens of ``ids`` (n,) with spaces, then detokenise lightly.

        No space goes before ``, . ! ? ; : ) %`` or after ``(``. PAD is always dropped;
        ``[START]``/``[END]``/``[MASK]`` too when ``skip_special``; ``[UNK]`` is kept.
        """
        out: list[str] = []
        prev = None
        for tok in self.convert_ids_to_tokens(self._filter(ids, skip_special)):
            if out and tok not in _NO_SPACE_BEFORE and prev not in _NO_SPACE_AFTER:
                out.append(" ")
            out.append(tok)
            prev = tok
        return "".join(out)

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``vocab.json`` (token list and options) into ``directory``."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        payload = {
            "textdiff_kind": "word",
            "format_version": 1,
            "pattern": WORD_PATTERN,
            "lowercase": self.lowercase,
            "options": self.options,
            "tokens": self.tokens,
        }
        (path / WORD_VOCAB_FILE).write_text(
            json.dumps(payload, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
        )

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "WordTokenizer":
        """Restore a tokenizer written by :meth:`save`."""
        file = Path(directory) / WORD_VOCAB_FILE
        try:
            payload = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise TokenizerError(f"cannot read word vocabulary {file}: {e}") from e
        if payload.get("textdiff_kind") != "word" or "tokens" not in payload:
            raise TokenizerError(f"{file} is not a textdiff WordTokenizer vocabulary")
        if payload.get("pattern", WORD_PATTERN) != WORD_PATTERN:
            raise TokenizerError(f"{file} was saved with a different word pattern")
        return cls(payload["tokens"], payload.get("lowercase", False), payload.get("options"))

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size}, lowercase={self.lowercase})"


def build_word_tokenizer(texts: Iterable[str], **kwargs: Any) -> WordTokenizer:
    """``WordTokenizer.from_texts(texts, **kwargs)`` as a plain function (for Hydra ``_partial_``).

    Args:
        texts: training texts, N strings.
        **kwargs: ``min_count``, ``max_size``, ``lowercase``, ``add_mask_token``.
    """
    return WordTokenizer.from_texts(texts, **kwargs)


class HFTokenizer(Tokenizer):
    """A ``transformers`` fast tokenizer behind the common interface.

    BOS is the tokenizer's ``bos_token`` or else its ``cls_token``; EOS is ``eos_token`` or else
    ``sep_token``. A missing BOS, PAD or UNK falls back to EOS (logged).

    Args:
        name_or_path: a hub name or a local directory, passed to ``AutoTokenizer.from_pretrained``.
        **kwargs: passed on to ``from_pretrained``.
    """

    def __init__(self, name_or_path: str | os.PathLike, **kwargs: Any) -> None:
        from transformers import AutoTokenizer

        name = str(name_or_path)
        try:
            tok = AutoTokenizer.from_pretrained(name, **kwargs)
        except Exception as e:  # noqa: BLE001 - transformers raises many kinds
            offline = any(
                os.environ.get(v, "") not in ("", "0", "false")
                for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
            )
            hint = " (HF_HUB_OFFLINE is set: the hub is offline here; use a local directory)"
            hint = hint if offline else ""
            raise TokenizerError(f"cannot load Hugging Face tokenizer {name!r}{hint}: {e}") from e
        self._wrap(tok, name)

    @classmethod
    def from_transformers(cls, tok: Any, name_or_path: str = "<in-memory>") -> "HFTokenizer":
        """Wrap an already built ``transformers`` tokenizer (e.g. a ``PreTrainedTokenizerFast``)."""
        self = cls.__new__(cls)
        self._wrap(tok, name_or_path)
        return self

    def _wrap(self, tok: Any, name: str) -> None:
        self.hf = tok
        self.name_or_path = name
        self.vocab_size = len(tok)
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
        eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        if eos is None:
            raise TokenizerError(f"tokenizer {name!r} has neither an eos_token nor a sep_token")
        pad, unk = tok.pad_token_id, tok.unk_token_id
        for role, value in (("bos/cls", bos), ("pad", pad), ("unk", unk)):
            if value is None:
                logger.warning("tokenizer %r has no %s token; using eos (id %d)", name, role, eos)
        bos, pad, unk = (eos if v is None else v for v in (bos, pad, unk))
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = int(bos), int(eos), int(pad), int(unk)
        self.mask_id = None if tok.mask_token_id is None else int(tok.mask_token_id)

    @property
    def special_ids(self) -> frozenset[int]:
        """All of the tokenizer's special ids except UNK (unless UNK doubles as BOS/EOS/PAD)."""
        ids = set(super().special_ids) | {int(i) for i in self.hf.all_special_ids}
        if self.unk_id not in (self.pad_id, self.bos_id, self.eos_id):
            ids.discard(self.unk_id)
        return frozenset(ids)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, (n,), with ``add_special_tokens=False``."""
        return list(self.hf.encode(text, add_special_tokens=False))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Batched (fast, Rust-side) ``encode``: N lists of ids."""
        if not texts:
            return []
        return [list(x) for x in self.hf(list(texts), add_special_tokens=False)["input_ids"]]

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of ``ids`` (n,); PAD always dropped, other specials when ``skip_special``."""
        return self.hf.decode(self._filter(ids, skip_special), skip_special_tokens=False)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        """Token strings of ``ids`` (n,)."""
        return list(self.hf.convert_ids_to_tokens([int(i) for i in ids]))

    def save(self, directory: str | os.PathLike) -> None:
        """``save_pretrained(directory)`` plus a ``textdiff_tokenizer.json`` marker."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.hf.save_pretrained(str(path))
        marker = {"textdiff_kind": "hf", "name_or_path": self.name_or_path}
        (path / HF_MARKER_FILE).write_text(json.dumps(marker) + "\n", encoding="utf-8")

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name_or_path!r}, vocab_size={self.vocab_size})"


def build_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 4000, lowercase: bool = False
) -> HFTokenizer:
    """Train a byte-level BPE on ``texts`` with the ``tokenizers`` library (deterministic).

    Specials ``[PAD] [UNK] [CLS] [SEP] [MASK]`` get ids 0-4; ``[CLS]``/``[SEP]`` serve as
    BOS/EOS. Byte-level means no input is ever out of vocabulary.

    Args:
        texts: training texts, N strings.
        vocab_size: target vocabulary size (at least 262: 256 bytes + 5 specials + 1 merge).
        lowercase: lowercase (NFC-normalised) text before tokenizing.
    """
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    if vocab_size < 262:
        raise TokenizerError(f"build_bpe_tokenizer: vocab_size={vocab_size} < 262 (256 bytes, "
                             "5 specials and at least one merge)")
    tok = RustTokenizer(models.BPE(unk_token="[UNK]"))
    norm = [normalizers.NFC()] + ([normalizers.Lowercase()] if lowercase else [])
    tok.normalizer = normalizers.Sequence(norm)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )
    return HFTokenizer.from_transformers(fast, name_or_path=f"<bpe vocab_size={vocab_size}>")


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Restore a tokenizer saved with ``Tokenizer.save`` (either kind), or a plain HF directory."""
    path = Path(directory)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    if (path / HF_MARKER_FILE).is_file():
        return HFTokenizer(str(path))
    vocab = path / WORD_VOCAB_FILE
    if vocab.is_file():
        try:
            kind = json.loads(vocab.read_text(encoding="utf-8")).get("textdiff_kind")
        except ValueError:
            kind = None
        if kind == "word":
            return WordTokenizer.load(path)
    if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
        return HFTokenizer(str(path))
    raise TokenizerError(
        f"{path} holds no tokenizer: expected {WORD_VOCAB_FILE} (WordTokenizer), {HF_MARKER_FILE} "
        "or tokenizer.json / tokenizer_config.json (Hugging Face)"
    )


def decode_ids(ids: Any, tokenizer: Any, block: bool = False, partial: bool = False) -> list[list[str]]:
    """Token ids (N, L) (a long tensor or nested lists) -> per row, the list of sentences it holds.

    A "pad"-mode row is one sentence: the tokens after a leading BOS up to the first EOS (the rest is
    padding). A "block"-mode row (Diffusion-LM's E2E training layout) holds several sentences
    separated by EOS/BOS; only the complete ones (opened by BOS and closed by EOS) are returned, and
    with ``partial`` also the text before the row's first BOS and after its last EOS (rows cut from
    documents longer than a block, as OpenWebText's). Where BOS and EOS are one token (GPT-2's
    ``<|endoftext|>``) it closes the sentence before it and opens the next.
    """
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    out: list[list[str]] = []
    for row in (ids.tolist() if hasattr(ids, "tolist") else ids):
        if not block:
            start = 1 if row and row[0] == bos else 0
            end = row.index(eos, start) if eos in row[start:] else len(row)
            out.append([tokenizer.decode(row[start:end])])
            continue
        sentences: list[str] = []
        current: Optional[list[int]] = [] if partial else None  # None: outside a sentence
        for tok in row:
            if tok == eos and current is not None:
                sentences.append(tokenizer.decode(current))
                current = [] if tok == bos else None
            elif tok == bos:
                if partial and current:  # a fragment with no EOS before the next BOS
                    sentences.append(tokenizer.decode(current))
                current = []
            elif tok == eos:
                current = None
            elif current is not None:
                current.append(tok)
        if partial and current:
            sentences.append(tokenizer.decode(current))
        out.append([s for s in sentences if s.strip()])
    return out
