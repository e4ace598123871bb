"""Check many items in parallel worker processes, with a time limit per item that always works.

Why: verifiers run untrusted text through sympy (which can hang on ``2^{2^{2^{30}}}``) and
math-verify's own timeout relies on ``signal.alarm``, which only works in a main thread. Here the
limit is enforced from outside: each worker reports after every item, and a worker that takes
longer than ``timeout`` seconds on one item is killed (SIGKILL) and replaced; the item is reported
as failed and the rest of its chunk goes to the new worker. A worker that dies (a crash, the
memory limit) is replaced the same way, so a caller never waits on a dead worker. Results come
back in input order.

    from reasondistill.verify.pool import WorkerPool, run_pool
    from reasondistill.checks import failure_check
    from reasondistill.verify.math import check_item, warm_up
    checks = run_pool(check_item, [(gold, text), ...], workers=2, timeout=10,
                      on_failure=failure_check, initializer=warm_up)
    # a timed-out item -> Check("unparseable", "timeout"); or use checker.verify_math_many

    with WorkerPool(check_item, workers=2, timeout=10, initializer=warm_up, memory_mb=2048) as pool:
        first = pool.map(items_a)   # workers start on the first map and are reused by the next
        second = pool.map(items_b)

``func`` (and ``initializer``) must be importable top-level functions (or partials of them):
workers are started with the 'spawn' method, never forked from a parent that may hold threads or
a model. ``memory_mb`` caps each worker's address space (RLIMIT_AS): an item that needs more
fails with MemoryError (reported as an "error") or kills its worker (a "crash"), never the caller.
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


def limit_memory(memory_mb: int | None) -> None:
    """Cap this process's address space at ``memory_mb`` MiB (no-op for None or where unsupported)."""
    if not memory_mb:
        return
    try:
        import resource
    except ImportError:  # not on this platform
        return
    limit = memory_mb * 1024 * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _worker_main(func: Callable, initializer: Callable | None, memory_mb: int | None, conn: Connection) -> None:
    """Run in the worker process: answer ("ready"), then one message per item."""
    if initializer is not None:
        initializer()
    limit_memory(memory_mb)  # after the imports, so that the cap bounds the items, not start-up
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

    def __init__(self, ctx: Any, func: Callable, initializer: Callable | None, memory_mb: int | None):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(func, initializer, memory_mb, child), daemon=True)
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


class _Batch:
    """The bookkeeping of one :meth:`WorkerPool.map` call: results, how many are done, failures."""

    def __init__(self, items: list, on_failure: Callable | None, advance: Callable[[int], None]):
        self.items, self.results, self.done, self.advance = items, [None] * len(items), 0, advance
        self.fail = on_failure or (lambda item, failure: failure)

    def finish(self, index: int, value: Any) -> None:
        self.results[index] = value
        self.done += 1
        self.advance(1)

    def failed(self, failure: ItemFailure) -> None:
        self.finish(failure.index, self.fail(self.items[failure.index], failure))


class WorkerPool:
    """Worker processes that outlive one batch: start once, :meth:`map` many times, :meth:`close`."""

    def __init__(self, func: Callable[[Any], Any], *, workers: int = 2, timeout: float = 10.0,
                 chunk_size: int = 16, initializer: Callable[[], None] | None = None,
                 memory_mb: int | None = None):
        if timeout <= 0 or chunk_size < 1 or workers < 1:
            raise ValueError("run_pool: need timeout > 0, chunk_size >= 1 and workers >= 1")
        self.func, self.initializer, self.memory_mb = func, initializer, memory_mb
        self.workers, self.timeout, self.chunk_size = workers, timeout, chunk_size
        self.ctx = multiprocessing.get_context("spawn")
        self.pool: list[_Worker] = []
        self.replaced = 0  # workers killed or found dead and started afresh, over the pool's life

    def _start(self) -> _Worker:
        return _Worker(self.ctx, self.func, self.initializer, self.memory_mb)

    def map(self, items: Iterable[Any], *, on_failure: Callable[[Any, ItemFailure], Any] | None = None,
            progress: bool | None = None, description: str = "verifying", chunk_size: int | None = None) -> list[Any]:
        """``[func(item) for item in items]`` in the workers, in input order.

        An item that runs longer than ``timeout`` seconds, kills its worker, or raises, yields
        ``on_failure(item, ItemFailure)`` (default: the ItemFailure itself). ``chunk_size``
        overrides the pool's for this batch (items sent to a worker at once).
        """
        items = list(items)
        if not items:
            return []
        todo = _chunks(items, chunk_size or self.chunk_size)
        self.pool = [w if w.proc.is_alive() else self._restart(w) for w in self.pool]  # died while idle
        while len(self.pool) < min(self.workers, len(todo)):
            self.pool.append(self._start())
        enabled = sys.stderr.isatty() if progress is None else progress
        with progress_bar(description, total=len(items), enabled=enabled) as advance:
            batch = _Batch(items, on_failure, advance)
            try:
                while batch.done < len(items):
                    for w in self.pool:
                        if w.ready and not w.pending and todo:
                            w.give(todo.popleft(), self.timeout)
                    self._step(batch)
            except BaseException:
                self.close()  # workers may hold items of an abandoned batch
                raise
        return batch.results

    def _restart(self, w: _Worker) -> _Worker:
        w.kill()
        self.replaced += 1
        return self._start()

    def _step(self, batch: _Batch) -> None:
        """Wait for the next message, death or deadline, and deal with it."""
        busy = [w for w in self.pool if not w.ready or w.pending]
        if not busy:  # cannot happen while items remain; guard against a silent hang
            raise RuntimeError("run_pool: no worker busy but results missing")
        ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy],
                     timeout=max(0.0, min(w.deadline for w in busy) - time.monotonic()))
        for i, w in enumerate(self.pool):
            if w not in busy:
                continue
            if w.conn in ready:
                try:
                    self._receive(w, batch)
                    continue
                except (EOFError, OSError):
                    stuck = False  # the worker died
            elif w.proc.sentinel in ready:
                stuck = False
            elif time.monotonic() >= w.deadline:
                stuck = True
            else:
                continue
            self.pool[i] = self._replace(w, stuck, batch)

    def _receive(self, w: _Worker, batch: _Batch) -> None:
        """Take every message waiting on ``w``'s pipe."""
        while w.conn.poll():
            kind, index, value = w.conn.recv()
            if kind == "ready":
                w.ready = True
                if w.backlog:
                    w.give(w.backlog, self.timeout)
                    w.backlog = []
                continue
            w.pending.popleft()
            w.deadline = time.monotonic() + self.timeout
            if kind == "ok":
                batch.finish(index, value)
            else:
                batch.failed(ItemFailure(index, "error", value))

    def _replace(self, w: _Worker, stuck: bool, batch: _Batch) -> _Worker:
        """Kill a stuck (or reap a dead) worker, fail its current item, start a successor with the rest."""
        if not stuck:
            w.proc.join(5)  # let it finish dying so that its exit code is its own
        w.kill()
        if not w.ready:
            raise RuntimeError(f"run_pool: a worker failed to start (exit code {w.proc.exitcode}); "
                               f"is {getattr(self.func, '__module__', '?')} importable?")
        self.replaced += 1
        fresh = self._start()
        if not w.pending:
            return fresh
        index, _ = w.pending.popleft()
        fresh.backlog = list(w.pending)
        if stuck:
            batch.failed(ItemFailure(index, "timeout", f"no result after {self.timeout:g} s; worker killed"))
        else:
            batch.failed(ItemFailure(index, "crash", f"worker died (exit code {w.proc.exitcode})"))
        return fresh

    def close(self) -> None:
        """Stop every worker (politely, then by force)."""
        for w in self.pool:
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
        for w in self.pool:
            w.proc.join(2)
            w.kill()
        self.pool = []

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def run_pool(func: Callable[[Any], Any], items: Iterable[Any], *, workers: int = 2,
             timeout: float = 10.0, chunk_size: int = 16,
             on_failure: Callable[[Any, ItemFailure], Any] | None = None,
             initializer: Callable[[], None] | None = None, progress: bool | None = None,
             description: str = "verifying", memory_mb: int | None = None) -> list[Any]:
    """``[func(item) for item in items]``, computed in ``workers`` processes started for this call
    (see :class:`WorkerPool`, which keeps them for the next call). ``initializer`` runs once per
    worker before its clock starts (use it to import and warm up heavy libraries)."""
    items = list(items)
    if not items:
        return []
    with WorkerPool(func, workers=workers, timeout=timeout, chunk_size=chunk_size, initializer=initializer,
                    memory_mb=memory_mb) as pool:
        return pool.map(items, on_failure=on_failure, progress=progress, description=description)
