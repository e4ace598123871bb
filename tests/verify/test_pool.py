"""The worker pool: input order, per-item timeouts without signals, crashes and errors contained.

Builtins (``int``, ``time.sleep``, ``os._exit``) are the work functions: they pickle by name,
so spawned workers need not import this test module.
"""

from __future__ import annotations

import os
import time

import pytest

from reasondistill.verify.pool import ItemFailure, run_pool


def test_results_come_back_in_input_order():
    items = [str(i) for i in range(60)]
    assert run_pool(int, items, workers=2, chunk_size=7, progress=False) == list(range(60))


def test_a_stuck_item_is_killed_and_the_rest_still_run():
    start = time.monotonic()
    out = run_pool(time.sleep, [0, 60, 0, 0], workers=1, chunk_size=4, timeout=1.0, progress=False)
    assert out[0] is None and out[2] is None and out[3] is None
    assert isinstance(out[1], ItemFailure) and out[1].kind == "timeout" and out[1].index == 1
    assert time.monotonic() - start < 20


def test_exceptions_and_dead_workers_are_reported_per_item():
    out = run_pool(int, ["1", "x", "3"], workers=1, progress=False)
    assert out[0] == 1 and out[2] == 3
    assert out[1].kind == "error" and "ValueError" in out[1].detail
    dead = run_pool(os._exit, [3, 4], workers=1, progress=False,
                    on_failure=lambda item, failure: (item, failure.kind, failure.detail))
    assert dead == [(3, "crash", "worker died (exit code 3)"), (4, "crash", "worker died (exit code 4)")]


def test_bad_arguments_and_empty_input():
    assert run_pool(int, [], progress=False) == []
    with pytest.raises(ValueError):
        run_pool(int, ["1"], timeout=0, progress=False)


def test_a_pool_keeps_its_workers_across_batches_and_replaces_one_that_died_idle():
    import signal

    from reasondistill.verify.pool import WorkerPool

    with WorkerPool(int, workers=2, chunk_size=1, timeout=5.0) as pool:
        assert pool.map(["1", "2", "3"], progress=False) == [1, 2, 3]
        pids = [w.proc.pid for w in pool.pool]
        assert pool.map(["4", "5"], progress=False) == [4, 5]
        assert [w.proc.pid for w in pool.pool] == pids  # reused, not started again
        os.kill(pids[0], signal.SIGKILL)  # dies between batches: never waited on
        pool.pool[0].proc.join(5)
        start = time.monotonic()
        assert pool.map(["6", "7"], progress=False) == [6, 7]
        assert time.monotonic() - start < 30 and pool.replaced == 1
    assert pool.pool == []


def test_the_memory_cap_fails_the_item_not_the_caller():
    out = run_pool(bytearray, [8 << 30, 16], workers=1, memory_mb=1024, progress=False)
    assert out[0].kind == "error" and out[0].detail.startswith("MemoryError")
    assert out[1] == bytearray(16)
