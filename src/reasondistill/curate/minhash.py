"""Near-duplicate training problems across the set, found with MinHash LSH (``curate.near_dedup``).

Why: exact deduplication misses a problem restated with other spacing, numbering or a changed
word; such repeats over-weight one problem in training (and, across splits, are what
decontamination looks for). Comparing every pair is quadratic, so each prompt gets a MinHash
signature (``datasketch``, ``num_perm`` permutations, fixed seed) of its character shingles
(:func:`reasondistill.curate.select.shingles`), an LSH index proposes candidates, and a candidate
whose estimated Jaccard similarity reaches ``threshold`` makes the later problem (in the order
given) a near-duplicate of the earlier, kept one.

    dups = near_duplicates(problems, threshold=0.85)   # {later_id: {"of": earlier_id, "jaccard": 0.91}}

Tests: ``pytest tests/curate/test_select.py -k near``.
"""

from __future__ import annotations

from typing import Sequence

from reasondistill.curate.select import shingles
from reasondistill.records import Problem

LSH_CAP = 0.9  # the LSH index needs >= 2 bands: above this it proposes at 0.9
SEED = 1  # MinHash permutations: fixed, so a run's result does not change between runs


def signature(text: str, num_perm: int = 128, shingle: int = 5):
    """The MinHash of ``text``'s character shingles."""
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=SEED)
    for s in sorted(shingles(text, shingle)):
        m.update(s.encode("utf-8"))
    return m


def near_duplicates(problems: Sequence[Problem], threshold: float = 0.85, num_perm: int = 128,
                    shingle: int = 5) -> dict[str, dict[str, object]]:
    """Problems whose prompt is a near-duplicate of an earlier kept one: ``{id: {"of", "jaccard"}}``."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=min(threshold, LSH_CAP), num_perm=num_perm)  # proposes; the estimate decides
    sigs: dict[str, object] = {}
    dups: dict[str, dict[str, object]] = {}
    for p in problems:
        sig = signature(p.prompt, num_perm, shingle)
        best, best_j = None, 0.0
        for other in lsh.query(sig):
            j = sig.jaccard(sigs[other])
            if j > best_j or (j == best_j and best is not None and other < best):
                best, best_j = other, j
        if best is not None and best_j >= threshold:
            dups[p.id] = {"of": best, "jaccard": round(float(best_j), 4)}
            continue
        if p.id not in sigs:
            lsh.insert(p.id, sig)
            sigs[p.id] = sig
    return dups
