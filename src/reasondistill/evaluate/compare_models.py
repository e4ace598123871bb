"""Student vs teacher on the same held-out problems: answer agreement, similarity of the thinking,
calibration of the student's vote, failure modes by difficulty and where the student falls off.

Why: accuracy alone does not say whether a student learned its teacher's *reasoning*. Agreement
(including copied mistakes), chain similarity, and the difficulty at which the student starts to
trail the teacher do.

Chain similarity is measured on the thinking parts (``<think>…</think>``) of the greedy
completions, over problems both models answered:

- ``rouge_l``: ROUGE-L F1 over whitespace tokens, 2·LCS/(|a|+|b|); 1 = same token sequence,
  0 = nothing in common (for chained arithmetic a token is one step line, e.g. ``52*3=56``).
- ``edit_distance``: Levenshtein distance over characters divided by the longer text's length;
  0 = identical, 1 = nothing shared (lower is closer).

Both are averaged over problems with a 95% bootstrap CI. Calibration (when the student was
sampled): ECE with confidence = the share of its k samples that agree with the vote, and the
vote's correctness as outcome (see :mod:`.sampled`).

    cmp = compare_to_teacher(student_rows, teacher_rows, problems, task, student_samples=rows, out_dir=d)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from reasondistill.evaluate.failures import annotate, breakdown, falloff
from reasondistill.evaluate.metrics import (answer_agreement, expected_calibration_error, normalized_edit_distance,
                                            plot_reliability, reliability_bins, rouge_l, rows_by_problem, with_ci)
from reasondistill.layout import EvalFiles
from reasondistill.records import Problem, write_json
from reasondistill.checks import Task
from reasondistill.thinking import split_thinking


def chain_similarity(student_rows: Sequence[Mapping[str, Any]], teacher_rows: Sequence[Mapping[str, Any]],
                     n_boot: int = 1000) -> dict[str, Any]:
    """Mean ROUGE-L and normalised edit distance between the two models' thinking, per problem."""
    s, t = rows_by_problem(student_rows, "student"), rows_by_problem(teacher_rows, "teacher")
    shared = sorted(set(s) & set(t))
    rl, ed = [], []
    for pid in shared:
        a, b = split_thinking(s[pid]["text"])[0], split_thinking(t[pid]["text"])[0]
        rl.append(rouge_l(a, b))
        ed.append(normalized_edit_distance(a, b, unit="char"))
    return {"n": len(shared), "rouge_l": with_ci(rl, n_boot=n_boot, proportion=False),
            "edit_distance": with_ci(ed, n_boot=n_boot, proportion=False),
            "definition": "thinking parts; rouge_l: F1 over whitespace tokens; edit_distance: Levenshtein over "
                          "characters / longer length"}


def calibration(vote_rows: Mapping[str, Mapping[str, Any]], n_bins: int = 10, png: str | Path | None = None,
                title: str = "student") -> dict[str, Any]:
    """ECE and reliability bins of per-problem votes ``{"share", "correct"}``; optionally a PNG."""
    conf = [float(v["share"]) for v in vote_rows.values()]
    ok = [bool(v["correct"]) for v in vote_rows.values()]
    if not conf:
        return {"n": 0, "ece": None, "bins": []}
    bins = reliability_bins(conf, ok, n_bins)
    out = {"n": len(conf), "ece": expected_calibration_error(conf, ok, n_bins), "bins": bins,
           "confidence": "share of the k samples agreeing with the vote"}
    if png is not None:
        plot_reliability(bins, png, title=f"{title}: vote confidence")
        out["png"] = Path(png).name
    return out


def compare_to_teacher(student_rows: Sequence[Mapping[str, Any]], teacher_rows: Sequence[Mapping[str, Any]],
                       problems: Sequence[Problem], task: Task, student_samples: Sequence[Mapping[str, Any]] | None = None,
                       k: int | None = None, threshold: float = 0.10, out_dir: str | Path | None = None,
                       name: str = "student", n_boot: int = 1000) -> dict[str, Any]:
    """Everything in the module docstring; ``*_rows`` are greedy rows (one per problem)."""
    s_ann, t_ann = annotate(student_rows, problems, task), annotate(teacher_rows, problems, task)
    result: dict[str, Any] = {
        "name": name,
        "agreement": answer_agreement(student_rows, teacher_rows),
        "chain_similarity": chain_similarity(student_rows, teacher_rows, n_boot),
        "failures": {"student": _keys(breakdown(s_ann)), "teacher": _keys(breakdown(t_ann))},
        "falloff": falloff(s_ann, t_ann, threshold=threshold, n_boot=n_boot),
    }
    if student_samples:
        from reasondistill.evaluate.sampled import vote_table

        votes = vote_table(list(student_samples), list(problems), task, k)
        png = EvalFiles(out_dir).compare_reliability if out_dir is not None else None
        result["calibration"] = calibration(votes, png=png, title=name)
        result["calibration"]["k"] = k or max(v["n"] for v in votes.values())
    if out_dir is not None:
        write_json(EvalFiles(out_dir).compare, result)
    return result


def _keys(table: Mapping[Any, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in table.items()}
