"""Progress bars for long stages (rich), silent when disabled or not on a terminal.

    with progress_bar("generate", total=len(problems)) as advance:
        advance(16)
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def progress_bar(label: str, total: int, enabled: bool = True, completed: int = 0) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    console = Console(file=sys.stderr)
    bar = Progress(TextColumn(f"{label:>10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=console, transient=not console.is_terminal)
    task = bar.add_task(label, total=total, completed=completed)
    with bar:
        yield lambda n=1: bar.advance(task, n)
