"""Write a large one-sentence-per-line corpus by repeating ../shared/data/tatoeba_en/train.txt, for the
streaming demonstration (experiments/streaming/README.md).

    python experiments/streaming/make_corpus.py [OUT] [--bytes N] [--source FILE]

OUT defaults to /tmp/textdiff_stream/train_big.txt and must lie outside the repository. The source (3.4 MB)
is read once; the output is written copy by copy (memory stays at one copy), until it holds at least
``--bytes`` (default 2.2e9, above 2 GiB). Prints the size and line count it wrote.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def make_corpus(out: Path, source: Path, min_bytes: int) -> tuple[int, int, int]:
    """Repeat ``source`` into ``out`` until it has ``min_bytes``; returns (bytes, lines, copies)."""
    data = source.read_bytes()
    if not data.strip():
        raise SystemExit(f"make_corpus: {source} is empty")
    if not data.endswith(b"\n"):
        data += b"\n"
    lines_per_copy = data.count(b"\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    written = copies = 0
    with open(out, "wb") as f:
        while written < min_bytes:
            f.write(data)
            written += len(data)
            copies += 1
    return written, lines_per_copy * copies, copies


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="?", default="/tmp/textdiff_stream/train_big.txt")
    p.add_argument("--bytes", type=float, default=2.2e9, help="minimum size of the output in bytes")
    p.add_argument("--source", default=str(REPO.parent / "shared" / "data" / "tatoeba_en" / "train.txt"))
    args = p.parse_args(argv)
    out = Path(args.out).expanduser().resolve()
    if out == REPO or REPO in out.parents:
        raise SystemExit(f"make_corpus: {out} is inside the repository {REPO}; write it elsewhere (e.g. /tmp)")
    start = time.perf_counter()
    size, lines, copies = make_corpus(out, Path(args.source), int(args.bytes))
    print(f"wrote {out}: {size:,} bytes ({size / 2**30:.2f} GiB), {lines:,} lines, {copies} copies of "
          f"{args.source}, in {time.perf_counter() - start:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
