"""Check many items in parallel worker processes, with a time limit per item that always works.

Why: verifiers run untrusted text through sympy (which can hang on ``2^{2^{2^{30}}}``) and
math-verify's own timeout relies on ``signal.alarm``, which only works in a main thread. Here the
limit is enforced from outside: each worker reports after every item, and a worker that takes
longer than ``timeout`` seconds on one item is killed (SIGKILL) and replaced; the item is reported
as failed and the rest of its chunk goes to the new worker. Results come back in input order.

    from reasondistill.verify.pool import run_pool
    from reasondistill.verify.math import check_item, failure_check, warm_up
    checks = run_pool(check_item, [(gold, text), ...], workers=2, timeout=10,
                      on_failure=failure_check, initializer=warm_up)
    # a timed-out item -> Check("unparseable", "timeout"); or use math.verify_math_many

``func`` (and ``initializer``) must be importable top-level functions: workers are started with
the 'spawn' method, never forked from a parent that may hold threads or a model.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from reasondistill.progress import progress_bar

STARTUP_TIMEOUT = 120.0  # seconds a new worker may take to import and run its initializer


@dataclass(frozen=True)
class ItemFailure:
    """Why an item produced no result: "timeout", "crash" (worker died) or "error" (exception)."""

    index: int
    kind: str
    detail: str


def _worker_main(func: Callable, initializer: Callable | None, conn: Connection) -> None:
    """Run in the worker process: answer ("ready"), then one message per item."""
    if initializer is not None:
        initializer()
    conn.send(("ready", None, None))
    while True:
        chunk = conn.recv()
        if chunk is None:
            return
        for index, item in chunk:
            try:
                conn.send(("ok", index, func(item)))
            except Exception as exc:  # the item's fault, not the worker's: keep going
                conn.send(("error", index, f"{type(exc).__name__}: {exc}"[:500]))


class _Worker:
    """One worker process, its pipe, the items it still owes and the deadline of the current one."""

    def __init__(self, ctx: Any, func: Callable, initializer: Callable | None):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(func, initializer, child), daemon=True)
        self.proc.start()
        child.close()
        self.ready = False
        self.pending: deque[tuple[int, Any]] = deque()  # sent, no result yet
        self.backlog: list[tuple[int, Any]] = []  # to send once ready
        self.deadline = time.monotonic() + STARTUP_TIMEOUT

    def give(self, chunk: list[tuple[int, Any]], timeout: float) -> None:
        self.pending.extend(chunk)
        self.deadline = time.monotonic() + timeout
        self.conn.send(chunk)

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


def _chunks(items: Sequence[Any], size: int) -> deque[list[tuple[int, Any]]]:
    indexed = list(enumerate(items))
    return deque(indexed[i:i + size] for i in range(0, len(indexed), size))


def run_pool(func: Callable[[Any], Any], items: Iterable[Any], *, workers: int = 2,
             timeout: float = 10.0, chunk_size: int = 16,
             on_failure: Callable[[Any, ItemFailure], Any] | None = None,
             initializer: Callable[[], None] | None = None, progress: bool | None = None,
             description: str = "verifying") -> list[Any]:
    """``[func(item) for item in items]``, computed in ``workers`` processes, in input order.

    An item that runs longer than ``timeout`` seconds, kills its worker, or raises, yields
    ``on_failure(item, ItemFailure)`` (default: the ItemFailure itself). ``initializer`` runs once
    per worker before its clock starts (use it to import and warm up heavy libraries).
    """
    items = list(items)
    results: list[Any] = [None] * len(items)
    if not items:
        return results
    if timeout <= 0 or chunk_size < 1 or workers < 1:
        raise ValueError("run_pool: need timeout > 0, chunk_size >= 1 and workers >= 1")
    fail = on_failure or (lambda item, failure: failure)
    todo = _chunks(items, chunk_size)
    ctx = multiprocessing.get_context("spawn")
    pool = [_Worker(ctx, func, initializer) for _ in range(min(workers, len(todo)))]
    done = 0
    enabled = sys.stderr.isatty() if progress is None else progress
    with progress_bar(description, total=len(items), enabled=enabled) as advance:

        def finish(index: int, value: Any) -> None:
            nonlocal done
            results[index] = value
            done += 1
            advance(1)

        try:
            while done < len(items):
                for w in pool:
                    if w.ready and not w.pending and todo:
                        w.give(todo.popleft(), timeout)
                _step(ctx, pool, func, initializer, timeout, finish, fail, items)
        finally:
            for w in pool:
                try:
                    w.conn.send(None)
                except (OSError, ValueError):
                    pass
            for w in pool:
                w.proc.join(2)
                w.kill()
    return results


def _step(ctx: Any, pool: list[_Worker], func: Callable, initializer: Callable | None, timeout: float,
          finish: Callable, fail: Callable, items: list) -> None:
    """Wait for the next message, death or deadline, and deal with it."""
    busy = [w for w in pool if not w.ready or w.pending]
    if not busy:  # cannot happen while items remain; guard against a silent hang
        raise RuntimeError("run_pool: no worker busy but results missing")
    ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy],
                 timeout=max(0.0, min(w.deadline for w in busy) - time.monotonic()))
    for i, w in enumerate(pool):
        if w not in busy:
            continue
        if w.conn in ready:
            try:
                _receive(w, timeout, finish, fail, items)
                continue
            except (EOFError, OSError):
                stuck = False  # the worker died
        elif w.proc.sentinel in ready:
            stuck = False
        elif time.monotonic() >= w.deadline:
            stuck = True
        else:
            continue
        pool[i] = _replace(ctx, w, stuck, func, initializer, timeout, finish, fail, items)


def _receive(w: _Worker, timeout: float, finish: Callable, fail: Callable, items: list) -> None:
    """Take every message waiting on ``w``'s pipe."""
    while w.conn.poll():
        kind, index, value = w.conn.recv()
        if kind == "ready":
            w.ready = True
            if w.backlog:
                w.give(w.backlog, timeout)
                w.backlog = []
            continue
        w.pending.popleft()
        w.deadline = time.monotonic() + timeout
        if kind == "ok":
            finish(index, value)
        else:
            finish(index, fail(items[index], ItemFailure(index, "error", value)))


def _replace(ctx: Any, w: _Worker, stuck: bool, func: Callable, initializer: Callable | None,
             timeout: float, finish: Callable, fail: Callable, items: list) -> _Worker:
    """Kill a stuck (or reap a dead) worker, fail its current item, start a successor with the rest."""
    if not stuck:
        w.proc.join(5)  # let it finish dying so that its exit code is its own
    w.kill()
    if not w.ready:
        raise RuntimeError(f"run_pool: a worker failed to start (exit code {w.proc.exitcode}); "
                           f"is {getattr(func, '__module__', '?')} importable?")
    fresh = _Worker(ctx, func, initializer)
    if not w.pending:
        return fresh
    index, item = w.pending.popleft()
    fresh.backlog = list(w.pending)
    if stuck:
        failure = ItemFailure(index, "timeout", f"no result after {timeout:g} s; worker killed")
    else:
        failure = ItemFailure(index, "crash", f"worker died (exit code {w.proc.exitcode})")
    finish(index, fail(item, failure))
    return fresh
