"""Training order: a seeded shuffle every epoch, or a curriculum from easy to hard (``build.order``).

Why: the teacher's pass rate per problem (``curate/pass_rates.jsonl``) and the length of a trace
both say how hard an example is. A curriculum shows the student easy examples first: the build
stage writes the examples sorted easy to hard and marks the file ``order: curriculum``; training
then takes its batches in file order, every epoch again easy to hard, instead of shuffling.

- ``by: pass_rate``: easy = the teacher solved the problem in more of its samples (descending
  pass rate);
- ``by: length``: easy = fewer target tokens (the completion the student learns).

Ties are broken by a seeded hash of (problem, completion), so equal keys are not in file order.

    order = curriculum_order(examples, target_tokens, by="pass_rate", pass_rates=rates, seed=0)
    batches = epoch_batches(dataset, batch_size=64, seed=0, epoch=0)   # what training iterates

Tests: ``pytest tests/data/test_curriculum.py``.
"""

from __future__ import annotations

import hashlib
from typing import Mapping, Sequence

ORDERS = ("shuffle", "curriculum")


def curriculum_order(examples: Sequence, target_tokens: Sequence[int], by: str, seed: int,
                     pass_rates: Mapping[str, float] | None = None) -> list[int]:
    """Indices of ``examples`` (objects with ``problem_id`` and ``completion``) from easy to hard."""
    if by == "pass_rate":
        if pass_rates is None:
            raise ValueError("build.curriculum_by 'pass_rate' needs curate/pass_rates.jsonl (run curate)")
        missing = [e.problem_id for e in examples if e.problem_id not in pass_rates]
        if missing:
            raise ValueError(f"build.order curriculum: no teacher pass rate for problem {missing[0]!r} "
                             f"({len(missing)} in all); re-run curate")
        primary = [-pass_rates[e.problem_id] for e in examples]
    elif by == "length":
        primary = list(target_tokens)
    else:
        raise ValueError(f"build.curriculum_by: unknown key {by!r}; expected pass_rate or length")

    def tie(i: int) -> bytes:
        e = examples[i]
        return hashlib.blake2b(f"{seed}:{e.problem_id}:{e.completion}".encode(), digest_size=8).digest()
    return sorted(range(len(examples)), key=lambda i: (primary[i], tie(i)))


def in_order_batches(n: int, batch_size: int) -> list[list[int]]:
    """Batches of consecutive examples in file order (a curriculum's epoch)."""
    return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


def epoch_batches(dataset, batch_size: int, seed: int, epoch: int, group_by_length: bool = True) -> list[list[int]]:
    """One epoch of batches of ``dataset``: in file order for a curriculum-ordered build, else the
    seeded length-grouped shuffle (:func:`reasondistill.data.dataset.length_grouped_batches`)."""
    from reasondistill.data.dataset import length_grouped_batches

    if getattr(dataset, "order", "shuffle") == "curriculum":
        return in_order_batches(len(dataset), batch_size)
    return length_grouped_batches(dataset.lengths, batch_size, seed, epoch, group_by_length)
