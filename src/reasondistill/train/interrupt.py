"""Ctrl-C during training: finish the step in progress, save a checkpoint, then stop.

Why: a SIGINT between two ``save_every`` checkpoints lost every step since the last one. Here it
is deferred to the end of the step, where the weights, optimizer, scheduler, RNG and data position
agree, so the checkpoint saved there resumes exactly (the same final weights as a run never
stopped). A second Ctrl-C stops at once, as before. Only in the main thread of a single process:
under torchrun the ranks would see it at different steps and wait for each other's collectives.

    with DeferredInterrupt(enabled=world == 1) as stop:
        while step < total:
            train_one_step()
            if stop.requested:
                save_checkpoint(); raise KeyboardInterrupt

Tests: tests/train/test_sft.py (a Ctrl-C mid-run saves its step; resumed, the same final weights).
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class DeferredInterrupt:
    """While active, the first SIGINT sets :attr:`requested` instead of raising; the second raises
    :class:`KeyboardInterrupt`. Inactive (a no-op) when not enabled, off the main thread, or when the
    process ignores SIGINT (started in the background by a shell)."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.requested, self._old = enabled, False, None

    def __enter__(self) -> "DeferredInterrupt":
        if self.enabled and threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None
