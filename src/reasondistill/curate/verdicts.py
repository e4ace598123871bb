"""One verdict per completion: correct, wrong, unparseable or truncated, with the reason.

Why: curation and evaluation must judge a completion identically. A completion cut off by the
token limit is "truncated" whatever it says; a broken ``<think>`` block or an answer the task
cannot read is "unparseable" (cannot verify), which is kept apart from "wrong". So is an answer
whose check ran past the time limit (reason "timeout"): every answer goes through
:func:`reasondistill.verify.checker.check_answers`, the one path with limits.

    verdicts = judge_many(task, [(problem, text, finish_reason, sample), ...])
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from reasondistill.records import Problem, Verdict
from reasondistill.checks import Task
from reasondistill.thinking import split_thinking
from reasondistill.verify.checker import check_answers
from reasondistill.checks import TIMEOUT

MALFORMED = "malformed <think> block"
MAX_REASONS = 20  # unparseable reasons listed in a summary; the rest are counted as "other"


def judge_many(task: Task, items: Sequence[tuple[Problem, str, str, int]]) -> list[Verdict]:
    """Verdicts for ``(problem, completion text, finish_reason, sample)`` items, in order; the
    answers that need a check are checked in one batch."""
    out: list[Verdict | None] = []
    pending: list[tuple[int, Problem, str]] = []
    for i, (problem, text, finish_reason, sample) in enumerate(items):
        if finish_reason == "length":
            out.append(Verdict(problem.id, sample, "truncated", "hit the token limit before the end"))
            continue
        _, answer, well_formed = split_thinking(text)
        if not well_formed:
            out.append(Verdict(problem.id, sample, "unparseable", MALFORMED, malformed_think=True))
            continue
        out.append(None)
        pending.append((i, problem, answer))
    checks = check_answers(task, [(p, a) for _, p, a in pending])
    for (i, problem, _), check in zip(pending, checks, strict=True):
        out[i] = Verdict(problem.id, items[i][3], check.verdict, check.reason, check.predicted)
    return out  # type: ignore[return-value]


def judge(task: Task, problem: Problem, text: str, finish_reason: str, sample: int = 0) -> Verdict:
    return judge_many(task, [(problem, text, finish_reason, sample)])[0]


def verdict_counts(verdicts: Iterable[object]) -> dict[str, object]:
    """Counts for a summary: ``verdicts`` (correct / wrong / unparseable / truncated), the reasons
    behind ``unparseable`` and how many of those were time-outs (kept apart from ``wrong``).

    Takes Verdicts or row dicts with ``verdict``/``reason``."""
    pairs = [(v["verdict"], v["reason"]) if isinstance(v, dict) else (v.verdict, v.reason) for v in verdicts]
    reasons = Counter(r for verdict, r in pairs if verdict == "unparseable")
    top = dict(reasons.most_common(MAX_REASONS))
    if len(reasons) > MAX_REASONS:  # e.g. teacher errors, each with its own message
        top["other"] = sum(reasons.values()) - sum(top.values())
    return {"verdicts": dict(Counter(verdict for verdict, _ in pairs)), "unparseable_reasons": top,
            "timeouts": reasons[TIMEOUT]}
