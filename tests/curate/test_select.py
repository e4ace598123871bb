"""Curation that uses what it measures: the pass-rate band, K traces chosen first / diverse /
shortest (with the distance reported), and near-duplicate problems found with MinHash."""

from __future__ import annotations

import pytest

from reasondistill.config import CurateConfig
from reasondistill.curate.filters import curate
from reasondistill.curate.minhash import near_duplicates
from reasondistill.curate.select import jaccard_distance, select_traces, shingles
from reasondistill.records import Problem, Trace


def trace(p: Problem, sample: int, thinking: str, answer: str | None = None, tokens: int = 10) -> Trace:
    answer = p.answer if answer is None else answer
    return Trace(problem_id=p.id, sample=sample, thinking=thinking, answer=answer,
                 text=f"<think>{thinking}</think>\n\n{answer}", prompt_tokens=5, completion_tokens=tokens,
                 finish_reason="stop", teacher="t")


def test_shingles_and_distance_are_as_stated():
    assert shingles("AB  cdef", 5) == {"ab cd", "b cde", " cdef"}
    assert shingles("abc", 5) == {"abc"} and shingles("", 5) == frozenset()
    a, b = frozenset({"x", "y"}), frozenset({"y", "z"})
    assert jaccard_distance(a, b) == pytest.approx(1 - 1 / 3)
    assert jaccard_distance(a, a) == 0.0 and jaccard_distance(frozenset(), frozenset()) == 0.0


def test_pass_rate_band_keeps_problems_neither_trivial_nor_hopeless(arith):
    easy, mid, hard = arith.problems("train", 3, seed=0)
    wrong = lambda p: str((int(p.answer) + 1) % 100)  # noqa: E731
    traces = [trace(easy, 0, "a step"), trace(easy, 1, "other step"),   # 2/2 correct: trivial
              trace(mid, 0, "a step"), trace(mid, 1, "x", wrong(mid)),  # 1/2
              trace(hard, 0, "y", wrong(hard)), trace(hard, 1, "z", wrong(hard))]  # 0/2: hopeless
    problems = {p.id: p for p in (easy, mid, hard)}
    kept, _, summary, rates = curate(problems, traces, arith, CurateConfig(max_per_problem=None))
    assert {t.problem_id for t in kept} == {easy.id, mid.id}
    assert {r["problem_id"]: r["pass_rate"] for r in rates} == {easy.id: 1.0, mid.id: 0.5, hard.id: 0.0}
    band = CurateConfig(max_per_problem=None, pass_rate={"min": 0.25, "max": 0.75})
    kept, _, summary, _ = curate(problems, traces, arith, band)
    assert [t.problem_id for t in kept] == [mid.id]
    assert summary["dropped"]["pass_rate_above_max"] == 2
    assert summary["pass_rate_band"]["problems_above_max"] == 1
    # a hopeless problem has no correct trace to drop unless correctness is not required
    loose = CurateConfig(max_per_problem=None, require_correct=False, pass_rate={"min": 0.25})
    kept, _, summary, _ = curate(problems, traces, arith, loose)
    assert hard.id not in {t.problem_id for t in kept} and summary["dropped"]["pass_rate_below_min"] == 2


STEPS = "12+3=15\n15*4=60\n60-7=53"
NEAR = "12+3=15\n15*4=60\n60-7=53 "  # the same chain with a trailing space: distance ~0
FAR = "first add twelve and three; then multiply the fifteen by four and take seven away"


def test_diverse_keeps_the_farthest_trace_first_keeps_the_first_and_the_summary_says_so(arith):
    p = arith.problems("train", 1, seed=1)[0]
    traces = [trace(p, 0, STEPS, tokens=30), trace(p, 1, NEAR, tokens=31), trace(p, 2, FAR, tokens=80),
              trace(p, 3, STEPS + "\ncheck: 53", tokens=12)]
    res = {}
    for mode in ("first", "diverse", "shortest"):
        kept, _, summary, _ = curate({p.id: p}, traces, arith, CurateConfig(max_per_problem=2, select=mode))
        res[mode] = ([t.sample for t in kept], summary["select"])
    assert res["first"][0] == [0, 1]
    assert res["diverse"][0] == [0, 2]
    assert res["shortest"][0] == [0, 3]
    first, diverse = res["first"][1], res["diverse"][1]
    assert diverse["mode"] == "diverse" and "Jaccard" in diverse["distance"]
    assert first["mean_pairwise_distance_available"] == pytest.approx(diverse["mean_pairwise_distance_available"])
    assert diverse["mean_pairwise_distance_kept"] > diverse["mean_pairwise_distance_available"]
    assert first["mean_pairwise_distance_kept"] < 0.1 < first["mean_pairwise_distance_available"]
    assert res["shortest"][1]["mean_tokens_kept"] == pytest.approx(21) and \
        res["shortest"][1]["mean_tokens_available"] == pytest.approx(38.25)


def test_select_diverse_is_max_min_not_first():
    p = Problem("p", "t", "q", "1")
    cands = [trace(p, i, th) for i, th in enumerate(["aaaaaaaaaa", "aaaaaaaaab", "zzzzzzzzzz", "aaaaazzzzz"])]
    assert [t.sample for t in select_traces(cands, 3, "diverse")] == [0, 2, 3]
    assert [t.sample for t in select_traces(cands, 3, "first")] == [0, 1, 2]
    assert select_traces(cands, None, "diverse") == cands


def test_near_duplicate_problems_are_found_with_minhash_and_their_traces_dropped(arith):
    base = "A train leaves the station at 3 pm travelling at 60 km per hour towards a city 180 km away."
    problems = [Problem("a", "math", base + " When does it arrive?", "6"),
                Problem("b", "math", base + " When does it arrive ?", "6"),  # near copy
                Problem("c", "math", "How many primes are there below one hundred, counting two?", "25")]
    dups = near_duplicates(problems, threshold=0.8)
    assert list(dups) == ["b"] and dups["b"]["of"] == "a" and dups["b"]["jaccard"] >= 0.8
    assert near_duplicates(problems, threshold=0.999) == {}  # not the same shingles
    # through curation (chained-arithmetic checking; the prompts above only matter for MinHash)
    ps = arith.problems("train", 3, seed=2)
    ps = [Problem(q.id, q.task, prompt, q.answer, q.solution) for q, prompt in zip(ps, [x.prompt for x in problems])]
    traces = [trace(q, 0, "s") for q in ps]
    kept, _, summary, _ = curate({q.id: q for q in ps}, traces, arith, CurateConfig(near_dedup={"threshold": 0.8}))
    assert [t.problem_id for t in kept] == sorted([ps[0].id, ps[2].id])
    assert summary["dropped"]["near_duplicate"] == 1 and summary["near_duplicates"]["problems"] == 1
    kept, _, summary, _ = curate({q.id: q for q in ps}, traces, arith, CurateConfig())
    assert len(kept) == 3 and "near_duplicate" not in summary["dropped"]
