"""Reading raw text: plain lines, JSON lines, line-aligned parallel files, Hugging Face datasets.

Every reader names the file (and the 1-based line) in its errors and counts what it skips:
blank lines are skipped and the count is logged on the ``textdiff.data`` logger, never silently.

Field values. A JSON/HF field holds a string or a list of strings (``scitldr``: ``source`` is a
list of sentences, ``target`` a list of TLDRs). :func:`source_text` joins a list with one space
(all sentences form the input), :func:`target_text` takes the first element (the text to model;
``target[0]`` is the author's TLDR) and :func:`target_references` keeps every element (the
references for BLEU/ROUGE).

:func:`fit_length` applies the DataModules' overflow policy (truncate / drop / error) to
encoded examples and logs the counts; it lives here because it is plain Python (no Lightning).
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger("textdiff.data")

JSONL_SUFFIXES = frozenset({".jsonl", ".json"})
UNSUPPORTED_SUFFIXES = frozenset(
    {".gz", ".bz2", ".xz", ".zip", ".zst", ".tar", ".csv", ".tsv", ".parquet", ".arrow", ".pkl"}
)
FORMATS = ("lines", "jsonl")
OVERFLOW_POLICIES = ("truncate", "drop", "error")


class DataError(ValueError):
    """Bad input data; the message names the file and, where it applies, the 1-based line."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A data file does not exist (both a ``ValueError`` and a ``FileNotFoundError``)."""


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.2f}%" if whole else "0.00%"


def _raw_lines(path: str | os.PathLike) -> list[str]:
    """All lines of a UTF-8 file (blank ones included), without ``\\n``/``\\r\\n`` endings."""
    p = Path(path)
    if not p.exists():
        raise DataFileNotFoundError(f"data file not found: {p}")
    if not p.is_file():
        raise DataError(f"not a regular file: {p}")
    data = p.read_bytes()
    chunks = data.split(b"\n")
    if chunks and chunks[-1] == b"":
        chunks.pop()
    lines, offset = [], 0  # offset: of the line's first byte in the file
    for lineno, chunk in enumerate(chunks, start=1):
        try:
            line = chunk.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(
                f"{p}:{lineno}: line {lineno} is not valid UTF-8 ({e.reason}: byte 0x{chunk[e.start]:02x} "
                f"at byte {e.start} of the line, byte offset {offset + e.start} in the file)"
            ) from None
        offset += len(chunk) + 1
        if lineno == 1 and line.startswith("\ufeff"):
            line = line[1:]
        lines.append(line[:-1] if line.endswith("\r") else line)
    return lines


def _non_blank(path: str | os.PathLike, lines: list[str]) -> list[tuple[int, str]]:
    """(1-based line number, text) of the non-blank lines; logs how many were skipped."""
    kept = [(i, s) for i, s in enumerate(lines, start=1) if s.strip()]
    if not kept:
        raise DataError(f"{path}: file is empty (no non-blank lines)")
    skipped = len(lines) - len(kept)
    if skipped:
        pct = _pct(skipped, len(lines))
        logger.warning("%s: skipped %d blank lines of %d (%s)", path, skipped, len(lines), pct)
    return kept


def read_lines(path: str | os.PathLike) -> list[str]:
    """One example per line of a UTF-8 text file.

    Only the line ending is stripped (``\\n`` and a ``\\r`` before it); tabs and other
    whitespace stay. Blank lines are skipped, counted and logged.

    Raises:
        DataFileNotFoundError: the file is missing.
        DataError: the file has no non-blank line, or a line is not valid UTF-8 (line and byte offset named).
    """
    return [s for _, s in _non_blank(path, _raw_lines(path))]


def _get_field(row: Any, field: str, where: str, int_fields: Sequence[str] = ()) -> Any:
    """``row[field]``; a dotted name (``translation.de``) walks nested objects. For a field named in
    ``int_fields`` (labels: a Hugging Face ``ClassLabel`` column such as AG News' ``label``), an integer is
    also accepted and returned as its decimal string."""
    value = row
    for part in field.split("."):
        if not isinstance(value, dict):
            kind = type(value).__name__
            raise DataError(f"{where}: no field {field!r} (cannot look up {part!r} in a {kind})")
        if part not in value:
            raise DataError(f"{where}: no field {field!r} (keys present: {sorted(value)})")
        value = value[part]
    if isinstance(value, str):
        return value
    if field in int_fields and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise DataError(
        f"{where}: field {field!r} must be a string or a non-empty list of strings, "
        f"got {type(value).__name__}: {str(value)[:80]!r}"
    )


def read_jsonl(path: str | os.PathLike, field: str | Sequence[str], int_fields: Sequence[str] = ()) -> list:
    """Values of ``field`` from a JSON-lines file (one object per non-blank line).

    Args:
        path: the ``.jsonl`` file.
        field: one field name (values: str or list of str), or several names, in which case
            each element of the result is a tuple with one value per name (one pass over the
            file for source and target). Dotted names walk nested objects.
        int_fields: fields that may also hold integers (labels), returned as strings.

    Raises:
        DataError: a line is not valid JSON / not an object / lacks the field (the message names
            ``file:line`` and lists the keys present), or the file is empty or not UTF-8.
    """
    fields = [field] if isinstance(field, str) else list(field)
    if not fields:
        raise DataError(f"{path}: read_jsonl needs at least one field name")
    out = []
    for lineno, line in _non_blank(path, _raw_lines(path)):
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: line {lineno} is not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        values = tuple(_get_field(row, f, where, int_fields) for f in fields)
        out.append(values[0] if isinstance(field, str) else values)
    return out


def read_parallel(
    src_path: str | os.PathLike, tgt_path: str | os.PathLike
) -> tuple[list[str], list[str]]:
    """Line-aligned source/target files (line i of one translates line i of the other).

    Lines are never split on tabs. Pairs where either side is blank are skipped together (so
    the alignment holds), counted and logged.

    Raises:
        DataError: the files have different line counts (both files and counts named, and the
            first line of the longer file that has no partner), or either file is empty / not UTF-8.
    """
    src, tgt = _raw_lines(src_path), _raw_lines(tgt_path)
    if len(src) != len(tgt):
        longer, shorter = (src_path, tgt_path) if len(src) > len(tgt) else (tgt_path, src_path)
        raise DataError(
            f"parallel files differ in length: {src_path} has {len(src)} lines but "
            f"{tgt_path} has {len(tgt)} lines ({longer} line {min(len(src), len(tgt)) + 1} "
            f"has no partner in {shorter})"
        )
    pairs = [(s, t) for s, t in zip(src, tgt) if s.strip() and t.strip()]
    if not pairs:
        raise DataError(f"{src_path} / {tgt_path}: files are empty (no non-blank line pairs)")
    skipped = len(src) - len(pairs)
    if skipped:
        logger.warning(
            "%s / %s: skipped %d of %d line pairs (%s) with a blank side",
            src_path, tgt_path, skipped, len(src), _pct(skipped, len(src)),
        )
    return [s for s, _ in pairs], [t for _, t in pairs]


def load_hf_split(
    name: str, split: str, field: str | Sequence[str], config: str | None = None,
    int_fields: Sequence[str] = (),
) -> list:
    """Values of ``field`` from one split of a Hugging Face dataset (``datasets.load_dataset``).

    ``field`` and ``int_fields`` work as in :func:`read_jsonl` (several names give tuples; dotted names
    such as ``translation.de`` reach nested columns). Rows whose text is blank are skipped and logged.

    Raises:
        DataError: the dataset/split cannot be loaded (offline mode named when set), or a field
            is missing (the columns present are listed).
    """
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds
        offline = any(
            os.environ.get(v, "") not in ("", "0", "false")
            for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
        )
        hint = " (offline mode is set: the hub cannot be reached here)" if offline else ""
        raise DataError(
            f"cannot load Hugging Face dataset {name!r} (config={config!r}, split={split!r})"
            f"{hint}: {type(e).__name__}: {e}"
        ) from e
    fields = [field] if isinstance(field, str) else list(field)
    for f in fields:
        if f.split(".")[0] not in ds.column_names:
            raise DataError(
                f"dataset {name!r} split {split!r} has no field {f!r} (columns: {ds.column_names})"
            )
    out, skipped = [], 0
    for i, row in enumerate(ds):
        where = f"dataset {name!r} split {split!r} row {i}"
        values = tuple(_get_field(row, f, where, int_fields) for f in fields)
        if any(isinstance(v, str) and not v.strip() for v in values):
            skipped += 1
            continue
        out.append(values[0] if isinstance(field, str) else values)
    if skipped:
        logger.warning("%s/%s: skipped %d blank rows of %d", name, split, skipped, len(ds))
    if not out:
        raise DataError(f"dataset {name!r} split {split!r} has no non-blank rows")
    return out


def detect_format(path: str | os.PathLike, format: str | None = None) -> str:
    """``"jsonl"`` for ``.jsonl``/``.json``, ``"lines"`` for any other text file.

    Raises:
        DataError: ``format`` is not one of ``"lines"``/``"jsonl"``, or the extension is a
            compressed/tabular/binary format we do not read (``.gz``, ``.csv``, ``.parquet``...).
    """
    if format is not None:
        if format not in FORMATS:
            raise DataError(f"{path}: unknown format {format!r}; expected one of {FORMATS}")
        return format
    suffix = Path(path).suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in UNSUPPORTED_SUFFIXES:
        raise DataError(
            f"{path}: unknown format {suffix!r}; supported are plain text (one example per "
            "line) and JSON lines (.jsonl/.json); decompress or convert the file first"
        )
    return "lines"


def read_texts(
    path: str | os.PathLike, field: str | Sequence[str] | None = None, format: str | None = None
) -> list:
    """Read a data file by extension: JSON lines (``field`` required) or plain lines.

    Returns:
        For lines: N strings. For JSON lines: N field values (str or list of str), or tuples
        when ``field`` names several fields.
    """
    fmt = detect_format(path, format)
    if fmt == "jsonl":
        if field is None:
            raise DataError(f"{path}: a JSON-lines file needs `field` (which key holds the text)")
        return read_jsonl(path, field)
    if field is not None:
        raise DataError(f"{path}: `field`={field!r} was given but the file is plain text lines")
    return read_lines(path)


def source_text(value: str | Sequence[str]) -> str:
    """A source field value as one string: a list is joined with single spaces."""
    return value if isinstance(value, str) else " ".join(value)


def target_text(value: str | Sequence[str]) -> str:
    """A target field value as the one text to model: a list gives its first element."""
    return value if isinstance(value, str) else value[0]


def target_references(value: str | Sequence[str]) -> list[str]:
    """All references of a target value: ``[value]`` for a string, every element of a list."""
    return [value] if isinstance(value, str) else list(value)


_MR_SLOT = re.compile(r"\s*([^\[\],]+?)\s*\[([^\[\]]*)\]\s*(?:,|$)")


def parse_mr(mr: str, where: str = "meaning representation") -> dict[str, str]:
    """Slots of an E2E-style meaning representation, in order.

    ``"name[The Eagle], eatType[coffee shop], food[French]"`` ->
    ``{"name": "The Eagle", "eatType": "coffee shop", "food": "French"}``. Slot names and values are
    stripped of surrounding spaces; values may hold spaces and non-ASCII characters but no brackets
    (E2E values never hold a comma or a bracket). An empty MR gives ``{}``.

    Raises:
        DataError: the text is not a comma-separated list of ``slot[value]`` (``where`` and the
            offending text are named), or a slot occurs twice.
    """
    slots: dict[str, str] = {}
    pos, text = 0, mr.strip()
    while pos < len(text):
        m = _MR_SLOT.match(text, pos)
        if m is None:
            raise DataError(f"{where}: cannot parse the meaning representation {mr!r} at "
                            f"{text[pos:pos + 30]!r} (expected 'slot[value], slot[value], ...')")
        name, value = m.group(1).strip(), m.group(2).strip()
        if name in slots:
            raise DataError(f"{where}: slot {name!r} occurs twice in the meaning representation "
                            f"{mr!r}")
        slots[name] = value
        pos = m.end()
    return slots

# -- over-long examples (used by the DataModules) ------------------------------------------
def fit_length(
    seqs: Sequence[list[int]], max_len: int, overflow: str, eos_id: int | None, where: str,
    limit_name: str = "max_len", indices: Sequence[int] | None = None, log: bool = True,
) -> tuple[list[list[int] | None], int]:
    """Apply the overflow policy to framed sequences (each (n_i,), BOS/EOS already added).

    ``"truncate"`` keeps the first ``max_len - 1`` tokens then ``eos_id`` (the first ``max_len``
    when ``eos_id`` is None); ``"drop"`` puts None in that slot; ``"error"`` raises a DataError
    naming ``where`` and the 0-based example index (``indices[i]`` when given: the examples' positions
    in their split, for a batch of a stream). ``log=False`` leaves the count to the caller.

    Returns:
        (sequences with None for dropped ones, number of over-long examples).
    """
    out: list[list[int] | None] = list(seqs)
    over = [i for i, seq in enumerate(seqs) if len(seq) > max_len]
    for i in over:
        if overflow == "error":
            index = i if indices is None else indices[i]
            raise DataError(
                f"{where}: example index {index} has {len(seqs[i])} tokens, more than {limit_name}="
                f"{max_len} (overflow='error'; use 'truncate' or 'drop', or raise {limit_name})"
            )
        cut = seqs[i][: max_len - 1] + [eos_id] if eos_id is not None else seqs[i][:max_len]
        out[i] = None if overflow == "drop" else cut
    if over and log:
        logger.warning(
            "%s: %d of %d examples (%.2f%%) are longer than %s=%d tokens and were %s",
            where, len(over), len(seqs), 100.0 * len(over) / len(seqs), limit_name, max_len,
            "dropped" if overflow == "drop" else "truncated",
        )
    return out, len(over)
