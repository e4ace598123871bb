"""Why a completion failed, how failures spread over difficulty, and where a student falls off.

Why: "accuracy went from 0.62 to 0.48" does not say what to fix. A wrong answer after a wrong
step (the chain broke), a right chain with a wrong final line, a cut-off completion and a broken
format each call for a different remedy, and the difficulty at which a student starts to trail
its teacher is the number that says how much reasoning was actually distilled.

    rows = [obj for _, obj in iter_jsonl("runs/demo/eval/student/completions.jsonl")]
    rows = annotate(rows, problems, task)
    breakdown(rows)                       # per difficulty: n, accuracy, counts of failure modes
    breakdown(rows, key=task_of)          # per task
    falloff(student_rows, teacher_rows, threshold=0.10)["first_falloff"]

Rows are the greedy evaluation rows of :mod:`.accuracy` (problem_id, difficulty, text, verdict,
finish_reason, ...), one per problem.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from reasondistill.curate.verdicts import judge
from reasondistill.evaluate.metrics import bootstrap_ci, rows_by_problem
from reasondistill.records import Problem
from reasondistill.checks import Task
from reasondistill.thinking import split_thinking

FAILURE_MODES = ("correct", "truncated", "no_answer", "format_error", "step_error", "wrong_final_answer")


def diagnose(row: Mapping[str, Any], problem: Problem, task: Task) -> dict[str, Any]:
    """``{"failure": mode, "first_wrong_step": int | None}`` for one completion row.

    In order: "truncated" (hit the token limit, whatever it says); "format_error" (broken
    ``<think>`` block, or an answer the task cannot read); "no_answer" (well-formed, but the
    answer after the thinking is empty); "correct"; for a wrong answer, "step_error" when the
    task can locate a wrong step (``task.first_wrong_step``) in a non-empty thinking, else
    "wrong_final_answer" (every step right, or no steps to blame: an empty thinking or a task
    that cannot check steps). The row's own verdict is used; without one the row is judged.
    ``first_wrong_step`` is also reported for correct answers (a lucky guess after a broken chain).
    """
    text = row.get("text", "")
    thinking, answer, well_formed = split_thinking(text)
    verdict = row.get("verdict") or judge(task, problem, text, row.get("finish_reason", "stop")).verdict
    locate = getattr(task, "first_wrong_step", None)
    step = locate(problem, thinking) if locate is not None and thinking.strip() else None
    if row.get("finish_reason") == "length" or verdict == "truncated":
        mode = "truncated"
    elif verdict == "correct":
        mode = "correct"
    elif not well_formed:
        mode = "format_error"
    elif not answer.strip():
        mode = "no_answer"
    elif verdict == "unparseable":
        mode = "format_error"
    elif verdict == "wrong":
        mode = "step_error" if step is not None else "wrong_final_answer"
    else:
        raise ValueError(f"{row.get('problem_id')}: unknown verdict {verdict!r}")
    return {"failure": mode, "first_wrong_step": step}


def classify_failure(row: Mapping[str, Any], problem: Problem, task: Task) -> str:
    """One of :data:`FAILURE_MODES` (see :func:`diagnose` for the rules)."""
    return diagnose(row, problem, task)["failure"]


def annotate(rows: Iterable[Mapping[str, Any]], problems: Sequence[Problem] | Mapping[str, Problem],
             task: Task) -> list[dict[str, Any]]:
    """Copies of the rows with ``failure`` and ``first_wrong_step`` added (problems matched by id)."""
    by_id = problems if isinstance(problems, Mapping) else {p.id: p for p in problems}
    out = []
    for r in rows:
        if r["problem_id"] not in by_id:
            raise KeyError(f"annotate: no problem with id {r['problem_id']!r}")
        out.append({**r, **diagnose(r, by_id[r["problem_id"]], task)})
    return out


def task_of(row: Mapping[str, Any]) -> str:
    """The task of a row: its ``task`` field, else the prefix of ``problem_id`` (``task:prompt``)."""
    return row.get("task") or str(row["problem_id"]).split(":", 1)[0]


def _is_correct(row: Mapping[str, Any]) -> bool:
    return row.get("verdict", row.get("failure")) == "correct"


def _group(rows: Iterable[Mapping[str, Any]], key: str | Callable[[Mapping[str, Any]], Any]) -> dict:
    get = key if callable(key) else (lambda r: r[key])
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(get(r), []).append(r)
    return dict(sorted(groups.items(), key=lambda kv: (isinstance(kv[0], str), kv[0])))


def breakdown(rows: Iterable[Mapping[str, Any]], key: str | Callable[[Mapping[str, Any]], Any] = "difficulty",
              ) -> dict[Any, dict[str, Any]]:
    """Per group (``key``: a row field, or a function such as :func:`task_of`), sorted:
    ``{"n", "correct", "accuracy", "modes": {mode: count}}``.

    ``modes`` counts the ``failure`` field of :func:`annotate`-d rows (all six modes listed,
    zeros included); rows without it are counted by their ``verdict`` instead.
    """
    out = {}
    for g, members in _group(rows, key).items():
        modes: dict[str, int] = {}
        if all("failure" in r for r in members):
            modes = dict.fromkeys(FAILURE_MODES, 0)
        for r in members:
            m = r.get("failure", r.get("verdict"))
            modes[m] = modes.get(m, 0) + 1
        correct = sum(_is_correct(r) for r in members)
        out[g] = {"n": len(members), "correct": correct, "accuracy": correct / len(members), "modes": modes}
    return out


def falloff(student_rows: Iterable[Mapping[str, Any]], teacher_rows: Iterable[Mapping[str, Any]],
            threshold: float = 0.10, paired: bool = True, n_boot: int = 1000, seed: int = 0,
            ) -> dict[str, Any]:
    """Student vs teacher accuracy per difficulty, and the first difficulty where the student
    falls more than ``threshold`` (accuracy units: 0.10 = 10 points) below the teacher.

    ``paired`` (default) compares only problems both were evaluated on, and adds a bootstrap
    interval of the gap (over those problems); otherwise each side uses all its own rows, and a
    difficulty one side lacks gets None. ``gap`` = teacher - student (positive: student trails).
    """
    s, t = rows_by_problem(student_rows, "student_rows"), rows_by_problem(teacher_rows, "teacher_rows")
    if paired:
        shared = set(s) & set(t)
        s = {pid: r for pid, r in s.items() if pid in shared}
        t = {pid: r for pid, r in t.items() if pid in shared}
    by_s, by_t = _group(s.values(), "difficulty"), _group(t.values(), "difficulty")
    levels = sorted(set(by_s) | set(by_t))
    table, first = [], None
    for d in levels:
        acc_s = float(np.mean([_is_correct(r) for r in by_s[d]])) if d in by_s else None
        acc_t = float(np.mean([_is_correct(r) for r in by_t[d]])) if d in by_t else None
        gap = acc_t - acc_s if acc_s is not None and acc_t is not None else None
        entry = {"difficulty": d, "student": acc_s, "teacher": acc_t, "gap": gap,
                 "n_student": len(by_s.get(d, [])), "n_teacher": len(by_t.get(d, []))}
        if paired:
            diffs = [_is_correct(t[r["problem_id"]]) - _is_correct(r) for r in by_s[d]]
            entry["gap_ci_low"], entry["gap_ci_high"] = bootstrap_ci(diffs, n_boot=n_boot, seed=seed)
        table.append(entry)
        if first is None and gap is not None and gap > threshold:
            first = d
    return {"threshold": threshold, "paired": paired, "by_difficulty": table, "first_falloff": first}
