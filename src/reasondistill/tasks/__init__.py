"""Reasoning tasks: problems with checkable answers (see :mod:`reasondistill.tasks.base`)."""

from reasondistill.tasks.base import Check, Task, load_task

__all__ = ["Check", "Task", "load_task"]
