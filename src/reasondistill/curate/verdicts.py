"""One verdict per completion: correct, wrong, unparseable or truncated, with the reason.

Why: curation and evaluation must judge a completion identically. A completion cut off by the
token limit is "truncated" whatever it says; a broken ``<think>`` block or an answer the task
cannot read is "unparseable" (cannot verify), which is kept apart from "wrong".
"""

from __future__ import annotations

from reasondistill.records import Problem, Verdict
from reasondistill.tasks.base import Check, Task
from reasondistill.thinking import split_thinking

MATH_TASKS = ("math", "gsm8k")  # free-form math answers, checked with verify/math.py (math-verify)


def judge(task: Task, problem: Problem, text: str, finish_reason: str, sample: int = 0) -> Verdict:
    if finish_reason == "length":
        return Verdict(problem.id, sample, "truncated", "hit the token limit before the end")
    _, answer, well_formed = split_thinking(text)
    if not well_formed:
        return Verdict(problem.id, sample, "unparseable", "malformed <think> block")
    check = check_answer(task, problem, answer)
    return Verdict(problem.id, sample, check.verdict, check.reason, check.predicted)


def check_answer(task: Task, problem: Problem, answer: str) -> Check:
    """The run's task judges its own problems (a mixture: those of its sources); a math problem
    recorded under another task (e.g. ingested into a run whose configured task is another) is
    judged by verify/math.py, as the ``math`` and ``gsm8k`` tasks judge theirs."""
    known = problem.task == getattr(task, "name", problem.task) or problem.task in getattr(task, "by_label", {})
    if not known and problem.task in MATH_TASKS:
        from reasondistill.verify.math import verify_math

        return verify_math(problem.answer, answer)
    return task.check(problem, answer)
