"""Which problems a generation shard holds, and where its files are: the arithmetic of
``reasondistill generate RUN --shard I/N``, shared by the generate stage (pipeline.py), the verb and
``reasondistill merge`` (shards.py).

Why a module of its own: the pipeline needs only this, and ``shards.py`` (which builds a Pipeline
to merge) sits above the pipeline; keeping the arithmetic here keeps the imports pointing down.

    i, n = parse_shard("2/8")
    [p for p in problems if in_shard(p.id, i, n)]
"""

from __future__ import annotations

import argparse
import hashlib
import re
from pathlib import Path

from reasondistill.layout import Layout

SHARD_FILE = re.compile(  # the file of shard I of N
    r"^traces-(\d+)-of-(\d+)\.jsonl$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` → (i, N), with 0 ≤ i < N (shards are numbered from 0)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: expected I/N, e.g. 0/4 (shards are numbered 0..N-1)")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or i >= n:
        raise argparse.ArgumentTypeError(f"{text!r}: need N >= 1 and 0 <= I < N (shards are numbered 0..N-1)")
    return i, n


def shard_of(problem_id: str, n: int) -> int:
    """The shard of a problem: a hash of its id, so the same on every machine and in any order."""
    digest = hashlib.blake2b(problem_id.encode("utf-8"), digest_size=8, person=b"rd-shard").digest()
    return int.from_bytes(digest, "little") % n


def in_shard(problem_id: str, i: int, n: int) -> bool:
    return shard_of(problem_id, n) == i


def shard_files(root: Path, i: int, n: int) -> tuple[Path, Path]:
    """(traces file, progress file) of shard i of N in a run directory."""
    d = Layout(root).shards_dir
    return d / f"traces-{i}-of-{n}.jsonl", d / f"traces-{i}-of-{n}.progress.json"
