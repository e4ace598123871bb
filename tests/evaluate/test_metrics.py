"""Tests for evaluate.metrics and evaluate.failures: brute-force and property checks on pure functions."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from reasondistill.curate.verdicts import judge
from reasondistill.evaluate.failures import (FAILURE_MODES, annotate, breakdown, classify_failure, diagnose,
                                             falloff, task_of)
from reasondistill.evaluate.metrics import (Vote, answer_agreement, avg_at_n, bootstrap_ci, correct_by_problem,
                                            edit_distance, expected_calibration_error, lcs_length, maj_at_k,
                                            majority_vote, majority_votes, mean_pass_at_k, normalized_edit_distance, pass_at_k,
                                            pass_at_k_per_problem, plot_reliability, reliability_bins, rouge_l,
                                            one_by_one, vote_outcomes, with_ci)
from reasondistill.tasks.arith import ChainedArithmetic

# ----------------------------------------------------------------------------- pass@k


def brute_pass_at_k(n, c, k):
    items = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(items[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_enumeration_over_subsets():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_1_is_fraction_correct_and_monotone_in_k():
    for n in (1, 5, 16, 100):
        for c in range(n + 1):
            assert pass_at_k(n, c, 1) == pytest.approx(c / n)
            values = [pass_at_k(n, c, k) for k in range(1, n + 1)]
            assert all(a <= b + 1e-12 for a, b in zip(values, values[1:]))
            assert all(0.0 <= v <= 1.0 for v in values)


def test_pass_at_k_large_n_is_stable():
    assert pass_at_k(10_000, 1, 1) == pytest.approx(1e-4)
    assert pass_at_k(1000, 500, 10) == pytest.approx(1 - math.comb(500, 10) / math.comb(1000, 10))


def test_pass_at_k_rejects_bad_arguments():
    for n, c, k in [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_mean_pass_at_k_and_grouping_of_sample_rows():
    rows = [{"problem_id": "a", "sample": 1, "verdict": "correct"},
            {"problem_id": "b", "sample": 0, "verdict": "wrong"},
            {"problem_id": "a", "sample": 0, "verdict": "truncated"},
            {"problem_id": "b", "sample": 1, "verdict": "wrong"}]
    grouped = correct_by_problem(rows)
    assert grouped == {"a": [False, True], "b": [False, False]}
    counts = [(len(v), sum(v)) for v in grouped.values()]
    assert mean_pass_at_k(counts, 1) == pytest.approx(0.25)
    assert mean_pass_at_k(counts, 2) == pytest.approx(0.5)
    assert pass_at_k_per_problem(counts, 2) == [1.0, 0.0]
    assert math.isnan(mean_pass_at_k([], 1))
    assert avg_at_n(grouped.values()) == pytest.approx(mean_pass_at_k(counts, 1))
    assert avg_at_n([[True, True, False, False], [True]]) == pytest.approx(0.75)


# ----------------------------------------------------------------------------- majority vote


def test_majority_vote_ignores_unparseable_and_strips():
    v = majority_vote(["42", " 42\n", "17", None, "", "   "])
    assert v == Vote(answer="42", votes=2, share=2 / 6, n_valid=3, n=6)
    assert majority_vote([None, None]) == Vote(None, 0, 0.0, 0, 2)
    assert majority_vote([]).answer is None


def test_majority_vote_ties_are_deterministic_and_order_free():
    answers = ["7", "3", "7", "3", "5", None]
    results = {majority_vote(list(p)) for p in itertools.permutations(answers)}
    assert results == {Vote("3", 2, 2 / 6, 5, 6)}  # tie between 3 and 7: smallest wins
    rng = random.Random(0)
    for _ in range(200):
        xs = [rng.choice(["1", "2", "3", "10", None]) for _ in range(rng.randint(1, 9))]
        ys = xs[:]
        rng.shuffle(ys)
        assert majority_vote(xs) == majority_vote(ys)


def test_majority_vote_with_an_equivalence():
    def numeric(a, b):
        return float(a) == float(b)

    v = majority_vote(["42.0", "42", "17", "17.00", "042"], equal=numeric)
    assert (v.answer, v.votes, v.n_valid) == ("042", 3, 5)  # 042 < 42 < 42.0 as strings


def test_maj_at_k_and_vote_outcomes():
    samples = {"p1": ["5", "5", "6", "6", "6"], "p2": ["1", None, None, "2", "2"], "p3": [None, None]}
    answers = {"p1": "5", "p2": "2", "p3": "0"}

    def ok(key, ans):
        return ans == answers[key]

    assert maj_at_k(samples, one_by_one(ok)) == pytest.approx(1 / 3)  # p1 votes 6, p2 votes 2, p3 abstains
    assert maj_at_k({"p1": samples["p1"], "p2": samples["p2"]}, one_by_one(ok), k=2) == pytest.approx(0.5)
    correct, conf = vote_outcomes([["5", "5", "6"], ["7"]], one_by_one(lambda i, a: a == ["5", "8"][i]))
    assert correct.tolist() == [True, False] and conf.tolist() == pytest.approx([2 / 3, 1.0])
    with pytest.raises(ValueError):
        maj_at_k(samples, one_by_one(ok), k=3)  # p3 has only 2 samples


def test_majority_votes_check_equalities_in_rounds():
    asked = []

    def same(items):
        asked.append(items)
        return [float(a) == float(b) for _, a, b in items]

    votes = majority_votes({"p": ["1", "1.0", "2"], "q": ["3"]}, same)
    assert (votes["p"].answer, votes["p"].votes, votes["q"].answer) == ("1", 2, "3")
    assert [len(batch) for batch in asked] == [1, 1]  # one equality per round: the one the vote needs next
    assert majority_votes({"p": ["1", "1.0"]}) == {"p": majority_vote(["1", "1.0"])}  # string equality


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_the_mean_and_narrows_with_n():
    rng = np.random.default_rng(1)
    widths = []
    for n in (20, 80, 320, 1280):
        x = rng.random(n) < 0.6
        low, high = bootstrap_ci(x)
        assert low <= x.mean() <= high
        widths.append(high - low)
    assert all(a > b for a, b in zip(widths, widths[1:]))
    for seed in range(20):
        x = np.random.default_rng(seed).exponential(size=50)
        low, high = bootstrap_ci(x, seed=seed)
        assert low <= x.mean() <= high


def test_bootstrap_ci_is_seeded_and_leaves_global_rng_alone():
    x = np.random.default_rng(2).random(100)
    state = np.random.get_state()[1].copy()
    a = bootstrap_ci(x, seed=3)
    assert np.array_equal(state, np.random.get_state()[1])
    assert a == bootstrap_ci(x, seed=3)
    assert a != bootstrap_ci(x, seed=4)
    assert bootstrap_ci(x, alpha=0.5)[1] - bootstrap_ci(x, alpha=0.5)[0] < a[1] - a[0]


def test_bootstrap_ci_edge_cases_and_other_statistics():
    assert bootstrap_ci([0.5] * 10) == (0.5, 0.5)
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    low, high = bootstrap_ci([1.0, 2.0, 3.0, 100.0], stat=np.median)
    assert 1.0 <= low <= high <= 100.0
    with pytest.raises(ValueError):
        bootstrap_ci([1, 2], alpha=0)
    with pytest.raises(ValueError):
        bootstrap_ci([[1, 2]])


def test_with_ci_on_per_problem_pass_at_k():
    counts = [(8, c) for c in (0, 1, 2, 4, 8, 3, 0, 5)]
    res = with_ci(pass_at_k_per_problem(counts, 4), n_boot=500, seed=1)
    assert set(res) == {"value", "ci_low", "ci_high", "n"}
    assert res["n"] == 8 and res["value"] == pytest.approx(mean_pass_at_k(counts, 4))
    assert 0 <= res["ci_low"] <= res["value"] <= res["ci_high"] <= 1
    empty = with_ci([])
    assert empty["n"] == 0 and math.isnan(empty["value"])


# ----------------------------------------------------------------------------- calibration


def test_ece_is_zero_when_perfectly_calibrated():
    conf = [0.25] * 4 + [0.75] * 4 + [1.0] * 3 + [0.0] * 2
    correct = [1, 0, 0, 0] + [1, 1, 0, 1] + [1, 1, 1] + [0, 0]
    assert expected_calibration_error(conf, correct) == pytest.approx(0.0, abs=1e-12)


def test_ece_is_small_for_sampled_calibrated_data_and_large_for_overconfidence():
    rng = np.random.default_rng(0)
    conf = rng.random(50_000)
    correct = rng.random(50_000) < conf
    assert expected_calibration_error(conf, correct) < 0.02
    assert expected_calibration_error(np.ones(100), np.zeros(100)) == pytest.approx(1.0)


def test_ece_matches_a_hand_computed_example():
    conf = [0.1, 0.2, 0.85, 0.9, 0.95]
    correct = [0, 1, 1, 1, 0]
    # bins 1, 2, 8 hold one each: |0-.1|, |1-.2|, |1-.85|; bin 9 holds .9 and .95 with accuracy .5
    expected = (0.1 + 0.8 + 0.15) / 5 + 2 / 5 * abs(0.5 - 0.925)
    assert expected_calibration_error(conf, correct) == pytest.approx(expected)
    assert expected == pytest.approx(0.38)
    # two bins: [0, .5) holds .1, .2 (conf .15, acc .5); [.5, 1] holds the rest (conf .9, acc 2/3)
    assert expected_calibration_error(conf, correct, n_bins=2) == pytest.approx(
        2 / 5 * abs(0.5 - 0.15) + 3 / 5 * abs(2 / 3 - 0.9))


def test_reliability_bins_layout_and_validation(tmp_path):
    bins = reliability_bins([0.0, 0.05, 0.5, 1.0, 1.0], [0, 1, 1, 1, 0], n_bins=4)
    assert [b["count"] for b in bins] == [2, 0, 1, 2]
    assert bins[1]["confidence"] is None and bins[1]["accuracy"] is None
    assert bins[0]["accuracy"] == 0.5 and bins[3]["confidence"] == 1.0
    assert (bins[0]["lo"], bins[-1]["hi"]) == (0.0, 1.0)
    assert math.isnan(expected_calibration_error([], []))
    for conf, corr in [([1.2], [1]), ([-0.1], [0]), ([0.5, 0.5], [1])]:
        with pytest.raises(ValueError):
            reliability_bins(conf, corr)
    out = plot_reliability(bins, tmp_path / "plots" / "rel.png", title="student")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- chain similarity


def ref_lcs(a, b):
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def ref_lev(a, b):
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def rand_str(rng, alphabet="abc", max_len=12):
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, max_len)))


def test_lcs_and_edit_distance_match_reference_dp():
    rng = random.Random(0)
    for _ in range(300):
        a, b = rand_str(rng), rand_str(rng)
        assert lcs_length(a, b) == ref_lcs(a, b)
        assert edit_distance(a, b) == ref_lev(a, b)
    assert edit_distance("kitten", "sitting") == 3
    assert lcs_length("ABCBDAB", "BDCABA") == 4


def test_edit_distance_is_a_metric_on_random_strings():
    rng = random.Random(1)
    for _ in range(300):
        a, b, c = (rand_str(rng, "ab", 8) for _ in range(3))
        assert edit_distance(a, b) == edit_distance(b, a)
        assert (edit_distance(a, b) == 0) == (a == b)
        assert edit_distance(a, c) <= edit_distance(a, b) + edit_distance(b, c)
        nd = normalized_edit_distance(a, b)
        assert nd == normalized_edit_distance(b, a) and 0.0 <= nd <= 1.0


def test_normalized_edit_distance_units_and_known_non_metric_case():
    assert normalized_edit_distance("47+5=52 52*3=56", "47+5=52 52*3=57", unit="token") == 0.5
    assert normalized_edit_distance("47+5=52 52*3=56", "47+5=52 52*3=57") == pytest.approx(1 / 15)
    assert normalized_edit_distance("", "") == 0.0 and normalized_edit_distance("", "abc") == 1.0
    assert edit_distance("a  b\nc", "a x c", unit="token") == 1
    # documented: normalising by the longer length breaks the triangle inequality
    assert normalized_edit_distance("ab", "ba") > (normalized_edit_distance("ab", "aba")
                                                   + normalized_edit_distance("aba", "ba"))
    with pytest.raises(ValueError):
        edit_distance("a", "b", unit="word")


def test_rouge_l_properties():
    rng = random.Random(2)
    for _ in range(200):
        a = " ".join(rand_str(rng, "xyz", 3) or "w" for _ in range(rng.randint(0, 8)))
        b = " ".join(rand_str(rng, "xyz", 3) or "w" for _ in range(rng.randint(0, 8)))
        assert rouge_l(a, a) == 1.0
        assert rouge_l(a, b) == pytest.approx(rouge_l(b, a))
        assert 0.0 <= rouge_l(a, b) <= 1.0
    # LCS of (a b c d) and (a c d e) is a c d: P = R = 3/4
    assert rouge_l("a b c d", "a c d e") == pytest.approx(0.75)
    assert rouge_l("a b", "a b c d") == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert rouge_l("", "") == 1.0 and rouge_l("a", "") == 0.0 and rouge_l("a b", "c d") == 0.0


# ----------------------------------------------------------------------------- student vs teacher


def eval_row(pid, predicted, verdict, difficulty=3):
    return {"problem_id": pid, "difficulty": difficulty, "predicted": predicted, "verdict": verdict}


def test_answer_agreement_by_problem_id():
    student = [eval_row("a", "1", "correct"), eval_row("b", "2", "wrong"), eval_row("c", None, "unparseable"),
               eval_row("d", "4", "wrong"), eval_row("s", "9", "wrong")]
    teacher = [eval_row("d", "5", "correct"), eval_row("c", None, "unparseable"), eval_row("b", " 2", "wrong"),
               eval_row("a", "1", "correct"), eval_row("t", "0", "correct")]
    res = answer_agreement(student, teacher)
    assert res["n"] == 4 and res["agree"] == 2 and res["agreement"] == 0.5
    assert (res["only_in_a"], res["only_in_b"]) == (1, 1)
    assert (res["both_correct"], res["both_wrong"], res["only_a_correct"], res["only_b_correct"]) == (1, 2, 0, 1)
    assert res["same_wrong"] == 1  # b: the student copied the teacher's wrong 2
    with pytest.raises(ValueError):
        answer_agreement(student + student[:1], teacher)
    assert math.isnan(answer_agreement([], teacher)["agreement"])


# ----------------------------------------------------------------------------- failure modes

TASK = ChainedArithmetic(3, 5)
PROBLEM = TASK.make(47, [("+", 5), ("*", 3), ("-", 2)])  # 47+5=52, 52*3=56, 56-2=54


def completion_row(problem, text, finish_reason="stop", verdict=True):
    row = {"problem_id": problem.id, "difficulty": problem.difficulty, "text": text,
           "finish_reason": finish_reason}
    if verdict:
        row["verdict"] = judge(TASK, problem, text, finish_reason).verdict
    return row


CASES = [
    ("<think>47+5=52\n52*3=56\n56-2=54</think>\n\n54", "stop", "correct", None),
    ("<think>47+5=52\n52*3=57\n57-2=55</think>\n\n55", "stop", "step_error", 1),
    ("<think>47+5=52\n52*3=56</think>\n\n54", "stop", "correct", 2),  # right answer, step missing
    ("<think>47+5=52\n52*3=56</think>\n\n56", "stop", "step_error", 2),  # stopped a step early
    ("<think>47+5=52\n52*3=56\n56-2=54</think>\n\n45", "stop", "wrong_final_answer", None),
    ("45", "stop", "wrong_final_answer", None),  # no thinking: no step to blame
    ("<think>47+5=52\n52*3=56\n56-2=54</think>\n\n", "stop", "no_answer", None),
    ("<think>47+5=52\n52*3=56\n56-2=54</think>\n\nThe answer is 54.", "stop", "format_error", None),
    ("<think>47+5=52\n52*3=56\n56-2", "stop", "format_error", 2),  # never closed
    ("<think>47+5=52</think><think>52*3=56</think>54", "stop", "format_error", 1),  # repeated tags
    ("<think>47+5=52\n52*3=56\n56-2", "length", "truncated", 2),
    ("<think>47+5=52\n52*3=56\n56-2=54</think>\n\n54", "length", "truncated", None),
]


@pytest.mark.parametrize("text,finish,mode,step", CASES)
def test_classify_failure_on_hand_built_rows(text, finish, mode, step):
    for with_verdict in (True, False):
        row = completion_row(PROBLEM, text, finish, verdict=with_verdict)
        assert classify_failure(row, PROBLEM, TASK) == mode
        assert diagnose(row, PROBLEM, TASK) == {"failure": mode, "first_wrong_step": step}


def test_task_without_step_checker_gives_wrong_final_answer():
    class AnswerOnly:  # a task that can check answers but not steps
        name = "answer_only"

        def check(self, problem, answer):
            return TASK.check(problem, answer)

    row = completion_row(PROBLEM, CASES[1][0])
    assert classify_failure(row, PROBLEM, AnswerOnly()) == "wrong_final_answer"
    with pytest.raises(ValueError):
        classify_failure({**row, "verdict": "maybe"}, PROBLEM, TASK)


def test_annotate_and_breakdown_per_difficulty_and_task():
    problems = TASK.problems("test", n=12, seed=0)
    rows = []
    for i, p in enumerate(problems):
        steps = p.solution.splitlines()
        if i % 3 == 0:
            text = f"<think>{p.solution}</think>\n\n{p.answer}"
        elif i % 3 == 1:
            text = f"<think>{steps[0]}\nbad\n</think>\n\n{(int(p.answer) + 1) % 100}"
        else:
            text = f"<think>{p.solution}"
        rows.append(completion_row(p, text, "length" if i % 3 == 2 else "stop"))
    annotated = annotate(rows, problems, TASK)
    assert [r["failure"] for r in annotated] == ["correct", "step_error", "truncated"] * 4
    assert all(r["first_wrong_step"] == 1 for r in annotated[1::3])
    assert "failure" not in rows[0]  # annotate copies

    table = breakdown(annotated)
    assert list(table) == sorted({p.difficulty for p in problems})
    assert sum(g["n"] for g in table.values()) == 12
    for g in table.values():
        assert set(g["modes"]) == set(FAILURE_MODES) and sum(g["modes"].values()) == g["n"]
        assert g["accuracy"] == pytest.approx(g["modes"]["correct"] / g["n"])
    per_task = breakdown(annotated, key=task_of)
    assert list(per_task) == ["chained_arith"] and per_task["chained_arith"]["accuracy"] == pytest.approx(1 / 3)
    by_verdict = breakdown(rows)  # not annotated: counted by verdict
    assert set().union(*(g["modes"] for g in by_verdict.values())) <= {"correct", "wrong", "truncated"}
    with pytest.raises(KeyError):
        annotate(rows, problems[:1], TASK)


def test_falloff_finds_first_difficulty_where_student_trails():
    teacher, student = [], []
    acc = {3: (1.0, 1.0), 4: (1.0, 0.95), 5: (0.9, 0.6), 6: (0.8, 0.2)}  # teacher, student
    for d, (ta, sa) in acc.items():
        for i in range(20):
            pid = f"p{d}-{i}"
            teacher.append(eval_row(pid, "1", "correct" if i < ta * 20 else "wrong", d))
            student.append(eval_row(pid, "1", "correct" if i < sa * 20 else "wrong", d))
    res = falloff(student, teacher, threshold=0.10)
    assert res["first_falloff"] == 5
    gaps = {e["difficulty"]: e["gap"] for e in res["by_difficulty"]}
    assert gaps == pytest.approx({3: 0.0, 4: 0.05, 5: 0.3, 6: 0.6})
    for e in res["by_difficulty"]:
        assert e["gap_ci_low"] <= e["gap"] <= e["gap_ci_high"] and e["n_student"] == e["n_teacher"] == 20
    assert falloff(student, teacher, threshold=0.5)["first_falloff"] == 6
    assert falloff(student, teacher, threshold=0.9)["first_falloff"] is None

    # unpaired: the teacher was only run on the easy half; missing levels get None
    res = falloff(student, [r for r in teacher if r["difficulty"] <= 4], paired=False)
    assert [e["teacher"] for e in res["by_difficulty"]] == [1.0, 1.0, None, None]
    assert res["first_falloff"] is None and "gap_ci_low" not in res["by_difficulty"][0]
    # paired: only shared problems are compared
    res = falloff(student, [r for r in teacher if r["difficulty"] <= 4])
    assert [e["difficulty"] for e in res["by_difficulty"]] == [3, 4]
