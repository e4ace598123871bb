"""The code sandbox against hostile programs: contained, never a pass, no secret read.

Why: every attack in tests/faults/hostile_programs.py is run through ``run_sandboxed`` as
``verify_code`` would run it, with things to protect set up around it: a secret in the
environment, in a file in $HOME and in the working directory (the run directory with its gold
tests), a directory whose contents must not change, a process to kill, this process (which
counts the SIGUSR1s it gets), a TCP and a UDP listener on 127.0.0.1 and the interpreter's stdlib.

Two modes: "namespaces" (the sandbox; skipped where it cannot be built) and "rlimits" (forced:
a host without namespaces, where every run must be refused). Against the module before its
hardening (commit bf2018e) the suite fails: see docs/sandbox.md.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import live_sandbox_processes
from hostile_programs import PROGRAMS, Hostile, Targets, render
from reasondistill.verify import sandbox
from reasondistill.verify.sandbox import Limits, run_sandboxed

SECRET = "sk-rd-canary-5f2b9e0c7a1d"
LIMITS = Limits(wall_seconds=2.0, cpu_seconds=1, memory_mb=256, file_mb=1)


@pytest.fixture(params=["namespaces", "rlimits"])
def mode(request, monkeypatch):
    if request.param == "namespaces" and sandbox.sandbox_mode() != "namespaces":
        pytest.skip("this host cannot build the sandbox's namespaces")
    if request.param == "rlimits":
        if hasattr(sandbox, "_probe"):
            monkeypatch.setattr(sandbox, "_probe", lambda: ("rlimits", "forced by the test"))
        else:  # the module before its hardening, to show that this suite fails there
            monkeypatch.setattr(sandbox, "sandbox_mode", lambda: "rlimits")
    return request.param


class Listener:
    """A TCP and a UDP socket on one 127.0.0.1 port, and an abstract unix socket. No thread: the kernel completes a TCP
    connection into the backlog on its own, so a non-blocking accept afterwards sees it."""

    def __init__(self):
        self.tcp = socket.create_server(("127.0.0.1", 0), backlog=8)
        self.port = self.tcp.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", self.port))
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(f"\0rd-hostile-{self.port}")  # an abstract socket: no file, per network namespace
        self.unix.listen(8)
        for s in (self.tcp, self.udp, self.unix):
            s.setblocking(False)

    def heard(self) -> list:
        got = []
        for kind, receive in (("tcp", lambda: self.tcp.accept()[0].close()), ("udp", lambda: self.udp.recv(100)),
                              ("unix", lambda: self.unix.accept()[0].close())):
            try:
                got.append((kind, receive()))
            except OSError:
                pass
        return got

    def close(self):
        for s in (self.tcp, self.udp, self.unix):
            s.close()


@pytest.fixture
def world(tmp_path, monkeypatch):
    """Things outside the sandbox that hostile code must not touch or read."""
    home, run_dir, outside = tmp_path / "home", tmp_path / "run", tmp_path / "outside"
    for d in (home, run_dir, outside):
        d.mkdir()
    (home / "credentials").write_text(f"OPENAI_API_KEY={SECRET}\n")
    (run_dir / "gold_tests.jsonl").write_text(f'{{"test": "assert secret == \'{SECRET}\'"}}\n')
    (outside / "outside.txt").write_text("original\n")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(run_dir)
    signals = []
    previous = signal.signal(signal.SIGUSR1, lambda *a: signals.append(a[0]))
    victim = subprocess.Popen(["sleep", "60"], env={"OPENAI_API_KEY": SECRET, "PATH": os.environ["PATH"]})
    listener = Listener()
    stdlib = os.path.dirname(os.__file__)
    targets = Targets(str(outside), str(home / "credentials"), str(run_dir / "gold_tests.jsonl"), victim.pid,
                      os.getpid(), listener.port, stdlib)
    yield targets, signals, listener, victim
    listener.close()
    victim.kill()
    victim.wait()
    signal.signal(signal.SIGUSR1, previous)
    Path(stdlib, "rd_pwned.py").unlink(missing_ok=True)


def _snapshot(root: str) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def _stdlib_state(stdlib: str) -> tuple:
    json_init = Path(stdlib, "json", "__init__.py")
    return Path(stdlib, "rd_pwned.py").exists(), json_init.stat().st_size, json_init.stat().st_mtime_ns


@pytest.mark.parametrize("program", PROGRAMS, ids=[p.name for p in PROGRAMS])
def test_hostile_program_is_contained(program: Hostile, mode, world, sandbox_marker):
    targets, signals, listener, victim = world
    before, stdlib_before = _snapshot(targets.outside), _stdlib_state(targets.stdlib)
    run = run_sandboxed(*render(program, targets), LIMITS)
    # messages name the status only: the output may hold whatever the program read
    verdict = f"{run.status}: {run.detail[:160]}"
    assert run.status != "passed", verdict
    assert SECRET not in run.stdout + run.stderr + run.detail, f"secret read ({verdict})"
    assert "ESCAPED" not in run.stdout, f"the program says it got through ({verdict})"
    assert _snapshot(targets.outside) == before, "a file outside the sandbox changed"
    assert _stdlib_state(targets.stdlib) == stdlib_before, "the interpreter's installation changed"
    assert not Path("/etc/rd-pwned").exists(), "a file was written to the host's /etc"
    assert victim.poll() is None, "a process outside the sandbox was killed"
    assert signals == [], "the parent was signalled"
    assert listener.heard() == [], "a connection reached the host"
    assert live_sandbox_processes(sandbox_marker) == 0, "a sandboxed process outlived its run"
    if mode == "rlimits":
        assert run.status == "sandbox error" and "refusing" in run.detail, verdict
    elif program.expect:
        assert run.status.startswith(program.expect), verdict


def test_enough_hostile_programs():
    assert len(PROGRAMS) >= 40 and len({p.name for p in PROGRAMS}) == len(PROGRAMS)


def test_right_code_still_passes(mode):
    run = run_sandboxed("def add(a, b):\n    return a + b\n", "assert add(1, 2) == 3\n", LIMITS)
    assert run.status == ("passed" if mode == "namespaces" else "sandbox error"), run


@pytest.mark.xfail(strict=True, reason="residual risk (docs/sandbox.md): the tests run in the same "
                   "interpreter as the code, so an object equal to everything passes them")
def test_residual_an_object_equal_to_everything_passes():
    if sandbox.sandbox_mode() != "namespaces":
        pytest.skip("this host cannot build the sandbox's namespaces")
    code = "class Any:\n    def __eq__(self, other):\n        return True\n\ndef add(a, b):\n    return Any()\n"
    assert run_sandboxed(code, "assert add(1, 2) == 3\n", LIMITS).status != "passed"
