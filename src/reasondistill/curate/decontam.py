"""Decontamination: drop training problems that share a word n-gram with an evaluation problem.

Why: a student trained on a problem that also sits in the held-out set (or on a near copy of it)
scores what it memorised, not what it learned. Ingested or downloaded training sets are seldom
disjoint from common test sets by construction, so before training every training problem is
compared with every evaluation problem, the way open-r1's ``scripts/decontaminate.py`` (after
s1) does it: lowercase, collapse whitespace, split into words, and flag a training problem when
any of its n-word sequences (n = 8 by default) occurs in an evaluation problem. A training
problem whose whole normalised text equals an evaluation problem's is flagged too, so problems
shorter than n words (the built-in arithmetic prompts are one "word") are still caught when
they are exact copies, and never flagged otherwise.

Cost: one pass over the evaluation problems to build a set of n-grams, one pass over the
training problems to look them up; no pairwise comparison.

    from reasondistill.curate.decontam import find_contaminated
    hits = find_contaminated(train_problems, test_problems, ngram=8)
    # {"train-id": {"eval_id": "test-id", "match": "the eight words they share ..."}}

Wired into the curate stage (``curate.decontaminate: {ngram: 8}``; ``null`` turns it off): the
traces of flagged problems are dropped from ``curate/curated.jsonl``, counted under
``dropped.contaminated`` in ``curate/summary.json`` and listed in ``curate/decontamination.json``.
``curate.decontaminate.against: [paths]`` adds benchmark files (any problem format; :mod:`.benchmarks`)
to compare with, and the record then gives the hits per benchmark.
Tests: ``pytest tests/curate/test_decontam.py``.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any, Iterable

from reasondistill.records import Problem, Trace, read_records, write_json

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize(text: str, strip_punctuation: bool = False) -> str:
    """Lowercase and collapse whitespace (open-r1's normalisation); optionally drop ASCII punctuation."""
    text = text.lower()
    if strip_punctuation:
        text = _PUNCT.sub(" ", text)
    return " ".join(text.split())


def word_ngrams(text: str, n: int) -> set[str]:
    """The distinct n-word sequences of an already normalised text (none if it has fewer than n words)."""
    words = text.split()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def build_index(problems: Iterable[Problem], ngram: int, strip_punctuation: bool = False
                ) -> tuple[dict[str, str], dict[str, str]]:
    """(n-gram -> first evaluation problem id holding it, normalised full text -> problem id)."""
    grams: dict[str, str] = {}
    whole: dict[str, str] = {}
    for p in problems:
        text = normalize(p.prompt, strip_punctuation)
        whole.setdefault(text, p.id)
        for g in word_ngrams(text, ngram):
            grams.setdefault(g, p.id)
    return grams, whole


def find_contaminated(train: Iterable[Problem], evaluation: Iterable[Problem], ngram: int = 8,
                      strip_punctuation: bool = False) -> dict[str, dict[str, str]]:
    """Training problems that overlap an evaluation problem: ``{train_id: {"eval_id", "match"}}``.

    ``match`` is the shared n-gram, or the whole normalised text for an exact copy.
    """
    if ngram < 1:
        raise ValueError(f"decontaminate: ngram must be >= 1, got {ngram}")
    grams, whole = build_index(evaluation, ngram, strip_punctuation)
    hits: dict[str, dict[str, str]] = {}
    for p in train:
        text = normalize(p.prompt, strip_punctuation)
        if text in whole:
            hits[p.id] = {"eval_id": whole[text], "match": text}
            continue
        words = text.split()
        for i in range(len(words) - ngram + 1):
            g = " ".join(words[i:i + ngram])
            if g in grams:
                hits[p.id] = {"eval_id": grams[g], "match": g}
                break
    return hits


def drop_contaminated(kept: list[Trace], hits: dict[str, Any]) -> tuple[list[Trace], int]:
    """The kept traces without those of flagged problems, and how many were dropped."""
    out = [t for t in kept if t.problem_id not in hits]
    return out, len(kept) - len(out)


def report(hits: dict[str, dict[str, str]], n_train: int, n_eval: int, ngram: int, traces_dropped: int,
           strip_punctuation: bool = False) -> dict[str, Any]:
    """The record saved as ``curate/decontamination.json`` (and summarised in the curate summary)."""
    return {"ngram": ngram, "strip_punctuation": strip_punctuation, "train_problems": n_train,
            "eval_problems": n_eval, "contaminated_problems": len(hits), "traces_dropped": traces_dropped,
            "ids": sorted(hits), "matches": {k: hits[k] for k in sorted(hits)}}


def apply_to_curation(kept: list[Trace], summary: dict[str, Any], train: list[Problem], eval_path: Path,
                      cfg, out_path: Path) -> list[Trace]:
    """The curate stage's step: drop flagged problems' traces, update ``summary``, save the record.

    ``cfg`` is ``curate.decontaminate`` (None: off; the record then says so). Evaluation problems
    are read from ``eval_path`` (``problems/test.jsonl``; a missing file means none) and from the
    benchmark files of ``cfg.against`` (:mod:`.benchmarks`); hits are reported per source under
    ``benchmarks`` and their union at the top level.
    """
    if cfg is None:
        write_json(out_path, {"enabled": False})
        return kept
    from reasondistill.curate.benchmarks import read_benchmarks

    evaluation = read_records(eval_path, Problem) if eval_path.exists() else []
    hits = find_contaminated(train, evaluation, cfg.ngram, cfg.strip_punctuation)
    per_source = {TEST_SPLIT: _source_record(hits, len(evaluation))}
    for label, problems in read_benchmarks(cfg):
        found = find_contaminated(train, problems, cfg.ngram, cfg.strip_punctuation)
        per_source[label] = _source_record(found, len(problems))
        for pid, hit in found.items():
            hits.setdefault(pid, hit)
    n_eval = sum(r["problems"] for r in per_source.values())
    kept, n_dropped = drop_contaminated(kept, hits)
    rec = report(hits, len(train), n_eval, cfg.ngram, n_dropped, cfg.strip_punctuation)
    if len(per_source) > 1:
        rec["benchmarks"] = per_source
    write_json(out_path, {"enabled": True, **rec})
    if n_dropped:
        summary["dropped"]["contaminated"] = n_dropped
    summary["kept"] = len(kept)
    summary["problems_with_a_kept_trace"] = len({t.problem_id for t in kept})
    summary["decontamination"] = {k: rec[k] for k in ("ngram", "eval_problems", "contaminated_problems",
                                                      "traces_dropped", "ids")}
    if len(per_source) > 1:
        summary["decontamination"]["benchmarks"] = {k: {"problems": r["problems"], "hits": r["hits"]}
                                                    for k, r in per_source.items()}
    return kept


TEST_SPLIT = "test split"


def _source_record(hits: dict[str, dict[str, str]], n_problems: int) -> dict[str, Any]:
    """One evaluation source's hits: how many of its problems it has, how many training problems hit it."""
    return {"problems": n_problems, "hits": len(hits), "ids": sorted(hits),
            "matches": {k: hits[k] for k in sorted(hits)}}
