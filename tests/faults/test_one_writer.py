"""One writer per run directory: a second process is refused with a clear message, a killed
writer never leaves the lock stuck, processes the writer starts share its lock, and
``train_workers`` children die with their parent."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from reasondistill.cli import main
from reasondistill.config import demo_config_path
from reasondistill.rundir import WRITER_ENV, RunDir, RunDirBusy

HOLD = textwrap.dedent("""
    import sys, time
    from reasondistill.rundir import RunDir
    with RunDir(sys.argv[1]).writer() as lock:
        print(lock.token, flush=True)
        time.sleep(120)
""")


@pytest.fixture
def holder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(demo_config_path(), run / "config.yaml")
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    token = proc.stdout.readline().strip()
    yield run, proc, token
    proc.kill()
    proc.wait()


def test_second_writer_is_refused_and_a_killed_writer_frees_the_lock(holder, capsys):
    run, proc, _token = holder
    assert main(["generate", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "in use by another reasondistill process" in err and f"pid {proc.pid}" in err
    assert not (run / "problems").exists()  # refused before writing anything
    config = (run / "config.yaml").read_text()
    assert main(["curate", str(run), "--quiet", "generate.temperature=0.123"]) == 2
    assert (run / "config.yaml").read_text() == config  # not even the config of the run it is refused
    with pytest.raises(RunDirBusy):
        RunDir(run).writer().__enter__()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with RunDir(run).writer() as lock:  # the kernel dropped the dead writer's lock
        assert lock.token


def test_processes_started_by_the_writer_share_its_lock(holder, monkeypatch):
    run, _proc, token = holder
    monkeypatch.setenv(WRITER_ENV, "not-the-token")
    with pytest.raises(RunDirBusy):
        RunDir(run).writer().__enter__()
    monkeypatch.setenv(WRITER_ENV, token)
    with RunDir(run).writer() as lock:
        assert lock.token == token


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    rd = RunDir(tmp_path / "run")
    with rd.writer():
        with rd.writer():
            pass
        with pytest.raises(RunDirBusy):  # still held after the inner block
            RunDir(tmp_path / "run").writer().__enter__()  # another open file: flock refuses it
    with RunDir(tmp_path / "run").writer():
        pass


PARENT = textwrap.dedent("""
    import subprocess, sys
    from reasondistill.train.parallel import die_with_parent
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], preexec_fn=die_with_parent)
    print(child.pid, flush=True)
    child.wait()
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_children_die_with_their_parent():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        # a zombie is dead too: reaped by init, it may linger a moment
        with open(f"/proc/{child}/stat") as fh:
            if fh.read().split(") ", 1)[1].startswith("Z"):
                return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the child outlived its killed parent")

