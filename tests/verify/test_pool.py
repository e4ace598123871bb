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
