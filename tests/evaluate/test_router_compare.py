"""The student-first cascade (accuracy vs teacher share, chosen threshold) and student-vs-teacher
comparison (agreement, chain similarity, calibration, failure modes, fall-off) on scripted rows."""

from __future__ import annotations

import json

import pytest

from reasondistill.evaluate.compare_models import chain_similarity, compare_to_teacher
from reasondistill.evaluate.router import cascade_curve, choose_threshold, route_student
from scripted import solved_rows


def test_cascade_curve_end_points_and_chosen_threshold():
    # four problems: the student is right and sure on a, b; unsure and wrong on c; sure and wrong on d
    votes = {"a": {"correct": True, "share": 1.0}, "b": {"correct": True, "share": 0.75},
             "c": {"correct": False, "share": 0.5}, "d": {"correct": False, "share": 1.0}}
    teacher = {"a": True, "b": True, "c": True, "d": False}
    res = cascade_curve(votes, teacher, thresholds=[0, 0.6, 0.8, 1.01], n_boot=100)
    by_t = {p["threshold"]: p for p in res["points"]}
    assert by_t[0.0]["teacher_share"] == 0 and by_t[0.0]["accuracy"]["value"] == 0.5  # student alone
    assert by_t[1.01]["teacher_share"] == 1 and by_t[1.01]["accuracy"]["value"] == 0.75  # teacher alone
    assert by_t[0.6]["teacher_calls"] == 1 and by_t[0.6]["accuracy"]["value"] == 0.75  # c goes to the teacher
    assert res["teacher_accuracy"] == 0.75 and res["student_accuracy"] == 0.5
    assert res["chosen"] == {"threshold": 0.6, "accuracy": 0.75, "teacher_share": 0.25, "teacher_calls": 1}
    assert choose_threshold(res["points"][:1], 0.75) is None  # student alone is 25 points short


def test_route_student_from_rows(arith, tmp_path):
    problems = arith.problems("test", 4, seed=5)
    teacher = solved_rows(problems)
    samples = []
    for p, n_wrong in zip(problems, [0, 1, 3, 3]):  # votes: right 4/4, right 3/4, wrong 3/4, wrong 3/4
        for s in range(4):
            ok = s >= n_wrong
            ans = p.answer if ok else str((int(p.answer) + 1) % 100)
            samples.append({"problem_id": p.id, "sample": s, "verdict": "correct" if ok else "wrong", "predicted": ans})
    res = route_student(samples, teacher, problems, arith, k=4, thresholds=[0, 0.5, 0.8, 1.0], out_dir=tmp_path)
    assert res["student_accuracy"] == 0.5 and res["teacher_accuracy"] == 1.0
    routed_tokens = sum(r["completion_tokens"] for r in teacher[1:])  # problems 1-3 are routed at 0.8
    assert res["chosen"] == {"threshold": 0.8, "accuracy": 1.0, "teacher_share": 0.75, "teacher_calls": 3,
                             "teacher_prompt_tokens": 0, "teacher_completion_tokens": routed_tokens}
    assert routed_tokens > 0
    assert json.loads((tmp_path / "router.json").read_text())["k"] == 4
    assert (tmp_path / "router.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="fewer than k=8"):
        route_student(samples, teacher, problems, arith, k=8)


def test_compare_to_teacher(arith, tmp_path):
    problems = arith.problems("test", 40, seed=11)
    hard = [p for p in problems if p.difficulty == 5]
    teacher = solved_rows(problems)
    student = solved_rows(problems, step_error={p.id for p in hard})  # fails every hardest problem
    res = compare_to_teacher(student, teacher, problems, arith, out_dir=tmp_path, n_boot=100)
    easy = len(problems) - len(hard)
    assert res["agreement"]["agree"] == easy and res["agreement"]["only_b_correct"] == len(hard)
    assert res["falloff"]["first_falloff"] == 5
    assert res["failures"]["student"]["5"]["modes"]["step_error"] == len(hard)
    assert res["failures"]["teacher"]["5"]["accuracy"] == 1.0
    sim = res["chain_similarity"]
    assert sim["n"] == 40 and 0.5 < sim["rouge_l"]["value"] < 1 and 0 < sim["edit_distance"]["value"] < 0.5
    assert "calibration" not in res  # the student was not sampled
    samples = [{"problem_id": r["problem_id"], "sample": s, "verdict": r["verdict"], "predicted": r["predicted"]}
               for r in student for s in range(2)]
    res = compare_to_teacher(student, teacher, problems, arith, student_samples=samples, out_dir=tmp_path, n_boot=100)
    assert res["calibration"]["ece"] == pytest.approx(len(hard) / 40)  # always sure, wrong on the hard ones
    assert (tmp_path / "compare_reliability.png").exists() and (tmp_path / "compare.json").exists()


def test_chain_similarity_identical_and_disjoint():
    a = [{"problem_id": "x", "text": "<think>1+2=3\n3*2=6</think>\n\n6"}]
    b = [{"problem_id": "x", "text": "<think>zz yy</think>\n\n6"}]
    same = chain_similarity(a, a, n_boot=10)
    assert same["rouge_l"]["value"] == 1.0 and same["edit_distance"]["value"] == 0.0
    # not proportions: no Wilson interval for a similarity or a distance ([1, 1] and [0, 0] here, as resampled)
    assert (same["rouge_l"]["ci_low"], same["edit_distance"]["ci_high"]) == (1.0, 0.0)
    assert chain_similarity(a, b, n_boot=10)["rouge_l"]["value"] == 0.0
