"""Failure modes for any task: by verdict, by difficulty (the teacher's pass rate), by length, and
each student failure classified as capacity or distribution mismatch.

Why: :mod:`.failures` locates the wrong step where a task can check steps (chained arithmetic);
this module needs only the verdicts every task gives, so it works for every task and for the OOD
split. It answers the seeds' question about a student's failures: is it *capacity* (the problem
is in distribution and the teacher solves it, so the student could have learned it) or
*distribution mismatch* (the problem is out of distribution)? A failure on an in-distribution
problem the teacher does not solve either is counted apart (``teacher_fails_too``): neither.

- verdicts: correct / wrong / unparseable / truncated / timeout (an answer whose check ran past the
  verify time limit, kept apart from the other unparseable ones);
- difficulty bucket: the teacher's pass rate on the problem: the share of its sampled answers that
  are correct when the teacher was sampled (``evaluate.samples``), else its greedy verdict (0 or 1);
  buckets ``0``, ``(0, 0.5)``, ``[0.5, 1)``, ``1``, or ``no teacher`` when it was not evaluated;
- length: the model's completion tokens in quarters of ``max_new_tokens``.

    fm = failure_modes(rows, max_new_tokens=256, teacher_rows=t_rows, ood_rows=o_rows, teacher_samples=s)
    render_markdown({"s1": fm})

Tests: ``pytest tests/evaluate/test_failure_modes.py``.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from reasondistill.checks import TIMEOUT

VERDICTS = ("correct", "wrong", "unparseable", "truncated", "timeout")
BUCKETS = ("0", "(0, 0.5)", "[0.5, 1)", "1", "no teacher")
CLASSES = ("capacity", "distribution_mismatch", "teacher_fails_too")
EXAMPLES = 3


def verdict_of(row: Mapping[str, Any]) -> str:
    """The row's verdict, with a time-out told apart from other unparseable answers."""
    if row.get("verdict") == "unparseable" and row.get("reason") == TIMEOUT:
        return "timeout"
    return row.get("verdict", "unparseable")


def teacher_pass_rates(teacher_rows: Iterable[Mapping[str, Any]] | None,
                       teacher_samples: Iterable[Mapping[str, Any]] | None) -> dict[str, float]:
    """Per problem: the teacher's share of correct samples, else its greedy correctness."""
    rates: dict[str, float] = {}
    for r in teacher_rows or []:
        rates[r["problem_id"]] = float(r["verdict"] == "correct")
    sampled: dict[str, list[bool]] = {}
    for r in teacher_samples or []:
        sampled.setdefault(r["problem_id"], []).append(r["verdict"] == "correct")
    rates.update({pid: sum(v) / len(v) for pid, v in sampled.items() if v})
    return rates


def bucket(rate: float | None) -> str:
    if rate is None:
        return "no teacher"
    if rate == 0:
        return "0"
    if rate == 1:
        return "1"
    return "(0, 0.5)" if rate < 0.5 else "[0.5, 1)"


def _length_bucket(tokens: int, limit: int) -> str:
    q = min(3, int(4 * tokens / limit)) if limit > 0 else 3
    lo, hi = q * limit // 4, (q + 1) * limit // 4
    return f"{lo}-{hi}"


def _table(rows: Sequence[Mapping[str, Any]], key) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        e = out.setdefault(key(r), {"n": 0, **dict.fromkeys(VERDICTS, 0)})
        e["n"] += 1
        e[verdict_of(r)] += 1
    for e in out.values():
        e["accuracy"] = e["correct"] / e["n"]
    return out


def _example(r: Mapping[str, Any], rate: float | None) -> dict[str, Any]:
    return {"problem_id": r["problem_id"], "prompt": str(r.get("prompt", ""))[:200], "reference": r.get("reference"),
            "answer": str(r.get("answer", ""))[:120], "verdict": verdict_of(r), "teacher_pass_rate": rate}


def failure_modes(rows: Sequence[Mapping[str, Any]], max_new_tokens: int,
                  teacher_rows: Sequence[Mapping[str, Any]] | None = None,
                  ood_rows: Sequence[Mapping[str, Any]] | None = None,
                  teacher_ood_rows: Sequence[Mapping[str, Any]] | None = None,
                  teacher_samples: Sequence[Mapping[str, Any]] | None = None,
                  classify: bool = True) -> dict[str, Any]:
    """Everything in the module docstring for one model's greedy rows (in distribution) and, when
    given, its OOD rows; ``classify`` (students) adds the failure classes with examples."""
    rates = teacher_pass_rates(teacher_rows, teacher_samples)
    ood_rates = teacher_pass_rates(teacher_ood_rows, None)
    splits = {"in_distribution": (list(rows), rates)}
    if ood_rows:
        splits["ood"] = (list(ood_rows), ood_rates)
    out: dict[str, Any] = {"pass_rate_source": "teacher samples" if teacher_samples else
                           "teacher greedy verdict" if teacher_rows else None, "splits": {}}
    for split, (rs, rr) in splits.items():
        out["splits"][split] = {
            "n": len(rs), "by_verdict": _table(rs, lambda r: "all")["all"] if rs else {},
            "by_teacher_pass_rate": _table(rs, lambda r, rr=rr: bucket(rr.get(r["problem_id"]))),
            "by_length": _table(rs, lambda r: _length_bucket(int(r.get("completion_tokens", 0)), max_new_tokens))}
    if classify:
        classes: dict[str, dict[str, Any]] = {c: {"count": 0, "examples": []} for c in CLASSES}
        for split, (rs, rr) in splits.items():
            for r in rs:
                if r.get("verdict") == "correct":
                    continue
                rate = rr.get(r["problem_id"])
                if split == "ood":
                    c = "distribution_mismatch"
                elif rate is None:
                    continue  # no teacher to tell capacity from a problem nobody solves
                else:
                    c = "capacity" if rate >= 0.5 else "teacher_fails_too"
                classes[c]["count"] += 1
                if len(classes[c]["examples"]) < EXAMPLES:
                    classes[c]["examples"].append(_example(r, rate))
        out["classes"] = classes
        out["classes_rule"] = ("capacity: in distribution and the teacher solves it (pass rate >= 0.5); "
                               "distribution_mismatch: out of distribution (evaluate.ood); teacher_fails_too: "
                               "in distribution, teacher pass rate < 0.5")
    return out


def render_markdown(modes: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The report's failure-mode section: one verdict table, the buckets, the classes with examples."""
    if not modes:
        return []
    out = ["## Failure modes (any task)", "", "| model | split | n | " + " | ".join(VERDICTS) + " |",
           "|---|---|---:|" + "---:|" * len(VERDICTS)]
    for m, fm in modes.items():
        for split, s in fm["splits"].items():
            v = s["by_verdict"]
            out.append(f"| {m} | {split} | {s['n']} | " + " | ".join(str(v.get(k, 0)) for k in VERDICTS) + " |")
    out += ["", f"Accuracy by the teacher's pass rate on the problem ({_source(modes)}) and by completion length:", "",
            "| model | split | by teacher pass rate | by length (tokens) |", "|---|---|---|---|"]
    for m, fm in modes.items():
        for split, s in fm["splits"].items():
            out.append(f"| {m} | {split} | {_cells(s['by_teacher_pass_rate'], BUCKETS)} | {_cells(s['by_length'])} |")
    classified = {m: fm for m, fm in modes.items() if fm.get("classes")}
    if classified:
        out += ["", "Student failures: " + next(iter(classified.values()))["classes_rule"] + ".", "",
                "| student | " + " | ".join(CLASSES) + " |", "|---|" + "---:|" * len(CLASSES)]
        out += [f"| {m} | " + " | ".join(str(fm["classes"][c]["count"]) for c in CLASSES) + " |"
                for m, fm in classified.items()]
        out.append("")
        for m, fm in classified.items():
            for c in CLASSES:
                for e in fm["classes"][c]["examples"]:
                    out.append(f"- {m}, {c}: `{e['problem_id']}` answered `{e['answer'].strip()[:60]}` "
                               f"({e['verdict']}; reference `{e['reference']}`, teacher pass rate "
                               f"{'–' if e['teacher_pass_rate'] is None else format(e['teacher_pass_rate'], '.2f')})")
    out.append("")
    return out


def _source(modes: Mapping[str, Mapping[str, Any]]) -> str:
    return next((fm["pass_rate_source"] for fm in modes.values() if fm.get("pass_rate_source")), "no teacher")


def _cells(table: Mapping[str, Mapping[str, Any]], order: Sequence[str] | None = None) -> str:
    keys = [k for k in order if k in table] if order else sorted(table, key=lambda k: int(k.split("-")[0]))
    return ", ".join(f"{k}: {table[k]['correct']}/{table[k]['n']}" for k in keys)
