"""Train several students at once, each in its own process, on one machine.

Why: a small student uses CPU threads poorly (tiny matrices; measured here on the demo student,
two 1-thread processes train ~1.5x as many examples per second as one 2-thread process). When a
run has several students (the demo has three), ``train_workers: 2`` in the config trains two at a
time, each with its own ``train.threads``. Every child is the ordinary CLI
(``reasondistill train RUN --student NAME``), so each keeps its own resumable checkpoints and stage
record; the parent only launches, shows progress and collects results. A child that fails does
not stop the others: they finish (nothing is lost), then the failure is raised with its log. The
children write under the parent's run-directory lock (``rundir.WRITER_ENV``) and die with it
(Linux ``PR_SET_PDEATHSIG``; elsewhere the parent stops them when it exits on an error), so a
killed parent never leaves students training behind it.

    Pipeline(cfg).train()            # uses cfg.train_workers
    reasondistill train runs/demo train_workers=2
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from reasondistill.train.plan import StepPlan

STOP_GRACE_S = 60  # after Ctrl-C: how long the students get to finish their step and save it


def _last_step(metrics: Path) -> int:
    try:
        with metrics.open() as fh:
            rows = list(csv.DictReader(fh))
        return int(rows[-1]["step"]) if rows else 0
    except (OSError, ValueError, KeyError):
        return 0


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def die_with_parent() -> None:
    """``preexec_fn`` for a child that must not outlive its parent: SIGTERM when the parent dies."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG = 1


def train_in_processes(pipeline, students: list, workers: int, force: bool = False) -> dict[str, Any]:
    """Train ``students`` with up to ``workers`` child processes; returns {name: train summary}."""
    with pipeline.rd.writer() as lock:
        return _train_children(pipeline, students, workers, force, lock.token)


def _train_children(pipeline, students: list, workers: int, force: bool, token: str | None) -> dict[str, Any]:
    from reasondistill.data.dataset import TokenizedDataset
    from reasondistill.rundir import WRITER_ENV

    rd = pipeline.rd
    for s in students:  # captures (offline top-k) and input checks happen here, once, before the children
        rd.need(rd.build(s.name).train, stage="build")
        pipeline.soft_inputs_of(s, force)
    totals = {}
    for s in students:
        try:
            n = len(TokenizedDataset(rd / "build" / s.name / "train.safetensors"))
        except Exception:  # noqa: BLE001 - the child reports an unreadable dataset with its own error
            n = 0
        totals[s.name] = StepPlan.for_dataset(n, s.train).total_steps
    rd.train_root.mkdir(parents=True, exist_ok=True)
    queue, running, failed = list(students), {}, []
    bars = _Bars(pipeline.show_progress)
    with bars:
        try:
            while queue or running:
                while queue and len(running) < workers:
                    s = queue.pop(0)
                    log_path = rd.train_log(s.name)
                    cmd = [sys.executable, "-m", "reasondistill.cli", "train", str(rd.root), "--student", s.name,
                           "--quiet", *(["--force"] if force else [])]
                    env = {**os.environ, "OMP_NUM_THREADS": str(s.train.threads or 1), WRITER_ENV: token or ""}
                    fh = log_path.open("a")  # a resumed student's log goes on after the earlier session's
                    running[s.name] = (subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                                        preexec_fn=die_with_parent), fh, log_path)
                    bars.add(s.name, totals[s.name])
                    pipeline.log(f"       {s.name}: training in its own process (log: {log_path})")
                time.sleep(0.5)
                for name, (proc, fh, log_path) in list(running.items()):
                    bars.update(name, _last_step(rd.train(name).metrics_csv))
                    if proc.poll() is None:
                        continue
                    fh.close()
                    del running[name]
                    if proc.returncode != 0:
                        failed.append((name, proc.returncode, log_path))
                        pipeline.log(f"       {name}: FAILED (exit {proc.returncode}); see {log_path}")
                    else:
                        bars.update(name, totals[name])
                        for line in _tail(log_path, 50).splitlines():  # the child's stage lines ([run ]/[skip])
                            if line.startswith("[") or line.startswith("       "):
                                pipeline.log(line)
        except KeyboardInterrupt:  # Ctrl-C reached the children too: each ends its step and saves it
            if running:
                pipeline.log(f"       waiting up to {STOP_GRACE_S} s for the students to save the step they are on "
                             "(Ctrl-C again stops them at once)")
                deadline = time.monotonic() + STOP_GRACE_S
                for proc, _fh, _log in running.values():
                    try:
                        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        pass
            raise
        finally:  # an error or Ctrl-C in the parent: no child keeps training behind it
            for proc, _fh, _log in running.values():
                if proc.poll() is None:
                    proc.terminate()
    if failed:
        name, code, log_path = failed[0]
        raise RuntimeError(f"training {name} failed (exit {code}), the other students finished; "
                           f"last lines of {log_path}:\n{_tail(log_path)}")
    return {s.name: (rd.stage_state(f"train:{s.name}") or {}).get("result") for s in students}


class _Bars:
    """One rich progress bar per running student (silent when progress is off)."""

    def __init__(self, enabled: bool):
        self.enabled, self.tasks, self.progress = enabled, {}, None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            console = Console(file=sys.stderr)
            self.progress = Progress(TextColumn("{task.description:>24}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                                     transient=not console.is_terminal)
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def add(self, name: str, total: int) -> None:
        if self.progress is not None:
            self.tasks[name] = self.progress.add_task(f"train {name}", total=total)

    def update(self, name: str, step: int) -> None:
        if self.progress is not None and name in self.tasks:
            self.progress.update(self.tasks[name], completed=step)
