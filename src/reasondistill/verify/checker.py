"""The one verification path every stage uses: a task's check, with a time and memory limit where
the check can hang.

Why: curate, evaluate (greedy and sampled), majority voting, the router, budget forcing and
``reasondistill score`` must judge an answer the same way and must all survive the same hostile
answers. A check that runs untrusted text through sympy or a backtracking regex (math-verify for
``math``/``gsm8k``/``file`` tasks, the multiple-choice patterns) can run for ever on, say,
``\\boxed{2^{2^{2^{30}}}}``; those checks run in worker processes
(:class:`reasondistill.verify.pool.WorkerPool`) with a per-answer time limit and a memory cap per
worker, and an answer that hits the limit gets the verdict ``unparseable`` with reason
``timeout`` (never ``wrong``). A worker that dies is replaced. Checks that cannot hang (the
built-in arithmetic task: two linear regexes and an integer comparison; code, which runs in the
sandbox under its own limits) run in this process, so small runs pay no pool start-up.

A task says which kind its check is with an optional ``check_job(problem, answer)`` method: a
``(function, args)`` pair whose call gives the same Check as ``task.check`` (the function must be
importable, the arguments plain data), or None for "check it here".

    from reasondistill.verify.checker import check_answers, verifier_scope
    with verifier_scope(timeout=10, workers=2, memory_mb=2048):   # one pool for the whole stage
        checks = check_answers(task, [(problem, answer_text), ...])  # Check per pair, in order

Outside a scope a process-wide verifier with the default limits is used (started on first need,
stopped at exit).
"""

from __future__ import annotations

import atexit
import functools
import importlib
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from reasondistill.records import Problem
from reasondistill.checks import Check, Task, failure_check

DEFAULT_TIMEOUT = 10.0  # seconds per answer
DEFAULT_MEMORY_MB = 2048  # address space per worker
DEFAULT_WORKERS = max(1, min(2, os.cpu_count() or 1))
MATH_TASKS = ("math", "gsm8k")  # free-form math answers, checked with verify/math.py (math-verify)

Job = tuple[Callable[..., Check], tuple]


def run_job(job: Job) -> Check:
    """Worker entry point: call the job's function on its arguments."""
    func, args = job
    return func(*args)


def warm_worker(modules: tuple[str, ...]) -> None:
    """Worker initializer: import the jobs' modules and run their ``warm_up`` (before the clock starts)."""
    for name in modules:
        warm = getattr(importlib.import_module(name), "warm_up", None)
        if warm is not None:
            warm()


def check_job(task: Task, problem: Problem, answer: str) -> Job | None:
    """How ``problem``'s answer is checked out of process, or None to check it here.

    A math problem recorded under another task (ingested into a run whose configured task is
    another) is judged by verify/math.py, as the ``math`` and ``gsm8k`` tasks judge theirs.
    """
    known = problem.task == getattr(task, "name", problem.task) or problem.task in getattr(task, "by_label", {})
    if not known and problem.task in MATH_TASKS:
        from reasondistill.verify.math import verify_math

        return verify_math, (problem.answer, answer)
    job = getattr(task, "check_job", None)
    return job(problem, answer) if job is not None else None


class Verifier:
    """Checks answers; keeps one worker pool (started when a check first needs it) until :meth:`close`."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, workers: int = DEFAULT_WORKERS,
                 memory_mb: int | None = DEFAULT_MEMORY_MB):
        if timeout <= 0 or workers < 1:
            raise ValueError("verify: need timeout > 0 and workers >= 1")
        self.timeout, self.workers, self.memory_mb = timeout, workers, memory_mb
        self.pool: Any = None

    def _pool(self, jobs: Sequence[Job]):
        if self.pool is None:
            from reasondistill.verify.pool import WorkerPool

            modules = tuple(sorted({func.__module__ for func, _ in jobs}))
            self.pool = WorkerPool(run_job, workers=self.workers, timeout=self.timeout,
                                   initializer=functools.partial(warm_worker, modules), memory_mb=self.memory_mb)
        return self.pool

    def check_jobs(self, jobs: Sequence[Job], progress: bool | None = False,
                   description: str = "verifying") -> list[Check]:
        """Run ``jobs`` in the pool; a job past the time limit, or whose worker dies, is unparseable."""
        if not jobs:
            return []
        chunk = max(1, min(16, len(jobs) // (4 * self.workers)))  # small batches: spread over every worker
        return self._pool(jobs).map(jobs, on_failure=failure_check, progress=progress, description=description,
                                    chunk_size=chunk)

    def check_many(self, task: Task, pairs: Sequence[tuple[Problem, str]]) -> list[Check]:
        """``task.check(problem, answer)`` for every pair, in order, within the limits."""
        jobs = [check_job(task, p, a) for p, a in pairs]
        out: list[Check | None] = [None if j is not None else task.check(p, a) for j, (p, a) in zip(jobs, pairs)]
        pooled = [i for i, j in enumerate(jobs) if j is not None]
        for i, c in zip(pooled, self.check_jobs([jobs[i] for i in pooled])):
            out[i] = c
        return out  # type: ignore[return-value]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def __enter__(self) -> "Verifier":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_current: list[Verifier] = []  # the innermost verifier_scope's verifier is last
_default: list[Verifier] = []


def verifier() -> Verifier:
    """The verifier of the innermost :func:`verifier_scope`, else the process-wide default one."""
    if _current:
        return _current[-1]
    if not _default:
        _default.append(Verifier())
        atexit.register(_default[0].close)
    return _default[0]


@contextmanager
def verifier_scope(timeout: float = DEFAULT_TIMEOUT, workers: int = DEFAULT_WORKERS,
                   memory_mb: int | None = DEFAULT_MEMORY_MB) -> Iterator[Verifier]:
    """Check with these limits inside the block, through one pool that is stopped at its end."""
    with Verifier(timeout, workers, memory_mb) as v:
        _current.append(v)
        try:
            yield v
        finally:
            _current.remove(v)


def check_answers(task: Task, pairs: Sequence[tuple[Problem, str]]) -> list[Check]:
    """The verdicts of ``task`` on every (problem, answer text) pair: the call every stage makes."""
    return verifier().check_many(task, pairs)


def check_answer(task: Task, problem: Problem, answer: str) -> Check:
    """One answer through :func:`check_answers` (batch where you can: a batch fills every worker)."""
    return check_answers(task, [(problem, answer)])[0]


def verify_math_many(golds: list[str], completions: list[str], *, last_number: bool = True,
                     workers: int = 2, timeout: float = 10.0, progress: bool | None = None) -> list[Check]:
    """:func:`reasondistill.verify.math.verify_math` over many pairs in worker processes; a stuck
    item becomes "unparseable: timeout"."""
    from reasondistill.verify.math import check_item

    if len(golds) != len(completions):
        raise ValueError(f"verify_math_many: {len(golds)} golds but {len(completions)} completions")
    jobs = [(check_item, ((g, c, last_number),)) for g, c in zip(golds, completions, strict=True)]
    with Verifier(timeout=timeout, workers=workers) as verifier:
        return verifier.check_jobs(jobs, progress=progress, description="math")
