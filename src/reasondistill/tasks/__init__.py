"""Reasoning tasks: problems with checkable answers (see :mod:`reasondistill.tasks.base`)."""

from reasondistill.checks import Check, Task
from reasondistill.tasks.base import load_task

__all__ = ["Check", "Task", "load_task"]
