"""Which K traces a problem keeps (``curate.select``), and how different kept traces are.

Why: "K traces per problem" used to mean the first K distinct texts in sample order. Two other
choices are useful and measurable: ``diverse`` keeps traces that reason differently (so K > 1 adds
information, not copies) and ``shortest`` trims verbosity by selection (the fewest tokens among
the correct traces). The distance is stated and reported, so the choice can be judged:

- shingles: the set of character ``n``-grams (default 5) of the thinking text after lowercasing and
  collapsing whitespace (a text shorter than n is one shingle; an empty text has none);
- distance: Jaccard distance 1 - |A ∩ B| / |A ∪ B| of two shingle sets (0 = same shingles,
  1 = none shared; two empty texts are at distance 0).

``diverse`` is the greedy max-min (farthest-point) rule: start from the first trace in sample order,
then repeatedly add the candidate whose smallest distance to the traces already kept is largest
(ties: earlier sample). The curate summary reports the mean pairwise distance of the kept traces
against that of all candidates, on the problems that keep at least two.

    kept = select_traces(candidates, k=2, mode="diverse", length=lambda t: t.completion_tokens)
    diversity_summary({pid: (kept, candidates)})   # {"mean_pairwise_distance_kept": ..., ...}

Tests: ``pytest tests/curate/test_select.py``.
"""

from __future__ import annotations

from itertools import combinations
from typing import Callable, Mapping, Sequence

from reasondistill.records import Trace

SHINGLE = 5
DISTANCE = "Jaccard distance of character 5-gram sets of the normalised thinking text"


def shingles(text: str, n: int = SHINGLE) -> frozenset[str]:
    """Character n-grams of ``text`` lowercased with whitespace collapsed (see module docstring)."""
    norm = " ".join(text.lower().split())
    if len(norm) <= n:
        return frozenset([norm]) if norm else frozenset()
    return frozenset(norm[i:i + n] for i in range(len(norm) - n + 1))


def jaccard_distance(a: frozenset[str] | set[str], b: frozenset[str] | set[str]) -> float:
    union = len(a | b)
    return 1.0 - len(a & b) / union if union else 0.0


def mean_pairwise_distance(sets: Sequence[frozenset[str]]) -> float | None:
    """Mean Jaccard distance over all pairs; None for fewer than two sets."""
    pairs = list(combinations(sets, 2))
    return sum(jaccard_distance(a, b) for a, b in pairs) / len(pairs) if pairs else None


def select_traces(candidates: Sequence[Trace], k: int | None, mode: str,
                  length: Callable[[Trace], int] | None = None, n: int = SHINGLE) -> list[Trace]:
    """At most ``k`` (None: all) of a problem's ``candidates`` (in sample order), chosen by ``mode``."""
    cands = list(candidates)
    if k is None or len(cands) <= k:
        return cands
    if mode == "first":
        return cands[:k]
    if mode == "shortest":
        if length is None:
            raise ValueError("select 'shortest' needs the traces' lengths")
        ranked = sorted(range(len(cands)), key=lambda i: (length(cands[i]), i))
        return [cands[i] for i in sorted(ranked[:k])]
    if mode != "diverse":
        raise ValueError(f"curate.select: unknown mode {mode!r}; expected first, diverse or shortest")
    sh = [shingles(t.thinking, n) for t in cands]
    chosen = [0]
    nearest = [jaccard_distance(sh[0], s) for s in sh]  # distance of each candidate to the kept set
    while len(chosen) < k:
        best = max((i for i in range(len(cands)) if i not in chosen), key=lambda i: (nearest[i], -i))
        chosen.append(best)
        nearest = [min(d, jaccard_distance(sh[best], s)) for d, s in zip(nearest, sh)]
    return [cands[i] for i in sorted(chosen)]


def diversity_summary(groups: Mapping[str, tuple[Sequence[Trace], Sequence[Trace]]], n: int = SHINGLE,
                      length: Callable[[Trace], int] | None = None) -> dict[str, object]:
    """Mean pairwise distance of kept vs available traces over problems keeping two or more
    (``groups``: problem id -> (kept, candidates)); with ``length``, mean length kept vs available."""
    kept_d, avail_d = [], []
    for kept, cands in groups.values():
        if len(kept) >= 2:
            kept_d.append(mean_pairwise_distance([shingles(t.thinking, n) for t in kept]))
            avail_d.append(mean_pairwise_distance([shingles(t.thinking, n) for t in cands]))
    out: dict[str, object] = {
        "distance": DISTANCE.replace("5-gram", f"{n}-gram"), "problems_measured": len(kept_d),
        "mean_pairwise_distance_kept": sum(kept_d) / len(kept_d) if kept_d else None,
        "mean_pairwise_distance_available": sum(avail_d) / len(avail_d) if avail_d else None}
    if length is not None:
        kept_len = [length(t) for kept, _ in groups.values() for t in kept]
        avail_len = [length(t) for _, cands in groups.values() for t in cands]
        out["mean_tokens_kept"] = sum(kept_len) / len(kept_len) if kept_len else None
        out["mean_tokens_available"] = sum(avail_len) / len(avail_len) if avail_len else None
    return out
