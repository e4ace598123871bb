"""Progress for long stages: a rich bar on a terminal; elsewhere (nohup, CI, a log file) one plain
line at most every ``LINE_EVERY_S`` seconds and one at the end, so a log shows how far a stage got
and how long it has left; silent when disabled (``--quiet``).

    with progress_bar("generate", total=len(problems)) as advance:
        advance(16)
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

LINE_EVERY_S = 60.0  # off a terminal: seconds between progress lines


@contextmanager
def progress_bar(label: str, total: int, enabled: bool = True, completed: int = 0,
                 every_s: float = LINE_EVERY_S) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda n=1: None
        return
    from rich.console import Console

    console = Console(file=sys.stderr)
    if not console.is_terminal:
        lines = _Lines(label, total, completed, every_s)
        yield lines.advance
        lines.end()
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    bar = Progress(TextColumn(f"{label:>10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=console)
    task = bar.add_task(label, total=total, completed=completed)
    with bar:
        yield lambda n=1: bar.advance(task, n)


class _Lines:
    """``label: done/total (p%), elapsed 1m05s, about 2m10s left`` to stderr, at most every ``every_s``."""

    def __init__(self, label: str, total: int, completed: int, every_s: float):
        self.label, self.total, self.done, self.start_done, self.every_s = label, total, completed, completed, every_s
        self.t0 = self.last = time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.done += n
        if time.monotonic() - self.last >= self.every_s:
            self._say()

    def end(self) -> None:
        if self.done > self.start_done:
            self._say()

    def _say(self) -> None:
        self.last = now = time.monotonic()
        elapsed, made = now - self.t0, self.done - self.start_done
        left = (self.total - self.done) * elapsed / made if made > 0 and self.total > self.done else 0.0
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        print(f"{self.label}: {self.done}/{self.total}{share}, elapsed {_clock(elapsed)}"
              + (f", about {_clock(left)} left" if left else ""), file=sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"
