"""One verdict per completion: correct, wrong, unparseable or truncated, with the reason.

Why: curation and evaluation must judge a completion identically. A completion cut off by the
token limit is "truncated" whatever it says; a broken ``<think>`` block or an answer the task
cannot read is "unparseable" (cannot verify), which is kept apart from "wrong".
"""

from __future__ import annotations

from reasondistill.records import Problem, Verdict
from reasondistill.tasks.base import Task
from reasondistill.thinking import split_thinking


def judge(task: Task, problem: Problem, text: str, finish_reason: str, sample: int = 0) -> Verdict:
    if finish_reason == "length":
        return Verdict(problem.id, sample, "truncated", "hit the token limit before the end")
    _, answer, well_formed = split_thinking(text)
    if not well_formed:
        return Verdict(problem.id, sample, "unparseable", "malformed <think> block")
    check = task.check(problem, answer)
    return Verdict(problem.id, sample, check.verdict, check.reason, check.predicted)
