"""A sandbox for model-written Python: a fresh, isolated, limited interpreter per run.

Why: model-written code is hostile until proven otherwise. It must not run in our process or
with our rights, must not see our secrets or files, and must not be able to fake a pass. Each
run is built from nothing (see docs/sandbox.md for what is and is not contained):

* **Namespaces** (``unshare``): new user, mount, PID, network, IPC and UTS namespaces. The
  root is a read-only tmpfs holding only /usr, /lib*, /bin, the interpreter's installation
  (read-only binds), /dev/null, zero, random, urandom, and /sandbox: a size-capped tmpfs that is
  the working directory, HOME and /tmp. The host's root is pivoted away and detached, so the run
  directory, $HOME, the gold tests, /proc and /etc do not exist in there; no other process is
  visible (so none can be signalled); the network has only a down loopback. The code then runs
  in a further user namespace, without any capability.
* **Inside the child** (:mod:`reasondistill.verify.sandbox_child`): rlimits (address space,
  CPU, file size, open files, no core dumps), a seccomp filter (x86_64: no fork, threads, exec,
  ptrace, pidfd, timers, sockets but AF_UNIX, signals to others, mount/unshare/setns), and an
  audit hook that names what was refused and refuses what the kernel cannot see (ctypes, heap
  inspection, tracing, swapping code, new audit hooks).
* **The verdict is decided here**, from one line on a private pipe that must start with a
  one-time nonce. The nonce lives in the child only inside the audit hook's closure, and the
  hook writes the line only when asked by the harness's own frame, once. Printing "PASSED",
  exiting before the tests, calling the harness's functions, replacing ``json.dumps`` or
  builtins, or writing lines to every fd gives no pass. A "started" line (same nonce, written
  before model code) tells a failure of the sandbox from a failure of the program.
* **Environment**: only PATH, HOME, TMPDIR, LANG and thread counts (plus ``Limits.env``); no
  variable of ours (no API keys). Wall clock: the whole process group is SIGKILLed at
  ``wall_seconds`` (coreutils ``timeout`` as a backstop). stdout/stderr are files capped by
  RLIMIT_FSIZE; we keep their last 4,000 characters.

Hosts where the namespaces cannot be built (``sandbox_mode() == "rlimits"``) are refused: every
run returns status "sandbox error" with the reason, so code tasks are "unparseable" there rather
than run under rlimits alone, which contain nothing (no filesystem or network isolation).

    from reasondistill.verify.sandbox import Limits, run_sandboxed
    run_sandboxed("def f():\\n    return 1\\n", "assert f() == 1\\n", Limits(wall_seconds=5))
    # -> RunResult(status="passed", ...)
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# Runs as root of a new user namespace with new mount, PID, network, IPC and UTS namespaces:
# builds a read-only root (a tmpfs with /usr, /lib*, /bin, the interpreter's installation and
# four /dev nodes bound in, plus a size-capped tmpfs at /sandbox), pivots into it, detaches the
# old root, and runs the child in a further user namespace where it has no capabilities at all.
# Any failure before the child starts exits 97 (the EXIT trap); the child never sees this shell.
_SETUP = r'''
set -e
trap 'exit 97' EXIT
root=$1 py=$2 child=$3 work_kb=$4
shift 4
ro() {
  mounts=$(awk -v p="$1" '$2 == p || index($2, p "/") == 1 {print $2}' /proc/self/mounts)
  [ -n "$mounts" ] || { echo "sandbox: $1 is not a mount point" >&2; exit 97; }
  for m in $mounts; do
    mount -o remount,bind,ro "$m" 2>/dev/null || mount -o remount,bind,ro,nosuid,nodev "$m" 2>/dev/null ||
      mount -o remount,bind,ro,nosuid,nodev,noexec "$m" || { echo "sandbox: cannot make $m read-only" >&2; exit 97; }
  done
}
mount -t tmpfs -o mode=755,size=1m rd-root "$root"
cd "$root"
mkdir sandbox dev proc .old
mount -t tmpfs -o "mode=777,size=${work_kb}k,nr_inodes=4096" rd-work sandbox
for n in null zero random urandom; do : > "dev/$n"; mount --bind "/dev/$n" "dev/$n"; done
for d in /bin /sbin /lib /lib32 /lib64 /libx32 /usr "$@"; do
  if [ -e ".$d" ] || [ -L ".$d" ]; then continue; fi
  if [ -L "$d" ]; then mkdir -p ".${d%/*}"; ln -s "$(readlink "$d")" ".$d"
  elif [ -d "$d" ]; then mkdir -p ".$d"; mount --rbind "$d" ".$d"; ro "$root$d"
  fi
done
# /tmp is /sandbox, unless a bound path runs through /tmp (a venv in a clone under /tmp): then it is
# the read-only folder holding that path, and TMPDIR (/sandbox) is where temporary files go
[ -e tmp ] || ln -s sandbox tmp
mount -t proc proc proc  # umount needs it; gone again before the child starts
mount -o remount,bind,ro "$root"
pivot_root . .old
umount -l /.old
umount /proc
cd /sandbox
unset OLDPWD
trap - EXIT
unshare --user "$py" -I -B -c "$child" --seccomp-then-exec "$child"
'''
_UNSHARE = ["unshare", "--user", "--map-root-user", "--net", "--mount", "--pid", "--ipc", "--uts", "--fork",
            "--kill-child", "sh", "-c", _SETUP, "sh"]
log = logging.getLogger(__name__)
_REFUSAL = ("refusing to run model-written code: this host cannot build the sandbox's namespaces ({}). "
            "Enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1; on Ubuntu 24.04 "
            "also kernel.apparmor_restrict_unprivileged_userns=0) or run where they exist; see docs/sandbox.md")


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed run."""

    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_mb: int = 1024
    file_mb: int = 16  # largest file (and stdout/stderr) the code may write; /sandbox holds 2x (8 MB at least)
    processes: int = 64  # RLIMIT_NPROC (the kernel exempts root; seccomp refuses fork anyway)
    env: dict[str, str] = field(default_factory=dict)  # extra environment variables


@dataclass(frozen=True)
class RunResult:
    status: str  # "passed", "test failed", "error", "syntax error", "timeout", "cpu time limit",
    # "memory limit", "output limit", "blocked: <what>", "crashed", "exited early" or "sandbox error"
    detail: str
    stdout: str
    stderr: str
    seconds: float
    violations: tuple[str, ...] = ()


def sandbox_mode() -> str:
    """"namespaces" if the sandbox can be built on this host, else "rlimits" (then every run is
    refused with a "sandbox error" that says why: rlimits alone do not contain hostile code)."""
    return _probe()[0]


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[str, str]:
    """("namespaces", "") or ("rlimits", why): runs one trivial job through the whole sandbox."""
    if shutil.which("unshare") is None or shutil.which("sh") is None:
        return "rlimits", "no unshare or sh on PATH"
    run = _execute("x = 1\n", "assert x == 1\n", Limits(wall_seconds=30))
    if run.status == "passed":
        return "namespaces", ""
    why = run.detail or run.stderr.strip()[-300:] or run.status
    log.warning(_REFUSAL.format(why))  # once per process (cached): code checks will say "sandbox error"
    return "rlimits", why


def _rlimits(limits: Limits) -> dict[str, int]:
    mb = 1024 * 1024
    return {"RLIMIT_AS": limits.memory_mb * mb, "RLIMIT_CPU": int(limits.cpu_seconds),
            "RLIMIT_FSIZE": limits.file_mb * mb, "RLIMIT_NPROC": limits.processes, "RLIMIT_CORE": 0,
            "RLIMIT_NOFILE": 256}


def _child_source() -> str:
    return (Path(__file__).parent / "sandbox_child.py").read_text()


def _interpreter_dirs() -> list[str]:
    """The interpreter's installation (venv and base), as given and resolved, to mount read-only."""
    dirs = []
    for d in (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix):
        for path in (os.path.abspath(d), os.path.realpath(d)):
            if path not in dirs and path != "/":
                dirs.append(path)
    return dirs


def _command(root: str, source: str, work_kb: int) -> list[str]:
    """argv that builds the sandbox on the empty directory ``root`` and runs ``python -c source``
    there (as the child, with a ``work_kb`` KiB /sandbox), reading stdin and inheriting fds."""
    return _UNSHARE + [root, sys.executable, source, str(work_kb)] + _interpreter_dirs()


def run_sandboxed(solution: str, tests: str, limits: Limits | None = None) -> RunResult:
    """Run ``solution`` then ``tests`` (same globals) in a fresh sandboxed interpreter.

    Refused (status "sandbox error", with the reason) on hosts where the sandbox cannot be built.
    """
    mode, why = _probe()
    if mode != "namespaces":
        return RunResult("sandbox error", _REFUSAL.format(why), "", "", 0.0)
    return _execute(solution, tests, limits or Limits())


def _execute(solution: str, tests: str, limits: Limits) -> RunResult:
    # an empty mount point (resolved: the setup finds its mounts by path); nothing is written here
    root = os.path.realpath(tempfile.mkdtemp(prefix="rd-sandbox-"))
    read_fd, write_fd = os.pipe()
    nonce = secrets.token_hex(16)
    job = {"nonce": nonce, "result_fd": write_fd, "limits": _rlimits(limits), "solution": solution, "tests": tests}
    cmd = _command(root, _child_source(), max(2 * limits.file_mb * 1024, 8 * 1024))
    # outer guard: coreutils timeout kills the lot even if this process dies first
    cmd = ["timeout", "-s", "KILL", f"{limits.wall_seconds + 5:g}"] + cmd if shutil.which("timeout") else cmd
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/sandbox", "TMPDIR": "/sandbox", "LANG": "C.UTF-8",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **limits.env}
    start = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=root, env=env,
                                    pass_fds=(write_fd,), start_new_session=True)
        except OSError as exc:
            for fd in (read_fd, write_fd):
                os.close(fd)
            os.rmdir(root)
            return RunResult("sandbox error", f"cannot start the sandbox: {exc}", "", "", 0.0)
        os.close(write_fd)
        timed_out = _wait(proc, (json.dumps(job) + "\n").encode(), limits.wall_seconds)
        seconds = time.monotonic() - start
        with os.fdopen(read_fd, "rb") as fh:
            reply = fh.read(1 << 16).decode(errors="replace")
        stdout, stderr = _tail(out), _tail(err)
    shutil.rmtree(root, ignore_errors=True)
    return _classify(proc.returncode, timed_out, reply, nonce, stdout, stderr, seconds, limits)


def _wait(proc: subprocess.Popen, job: bytes, wall_seconds: float) -> bool:
    """Send the job, wait up to ``wall_seconds``, then kill the whole group; True if timed out."""
    try:
        proc.communicate(job, timeout=wall_seconds)
        return False
    except subprocess.TimeoutExpired:
        return True
    finally:
        _kill_group(proc)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the sandbox's whole process group (its session) and reap the leader."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _tail(fh, limit: int = 4000) -> str:
    fh.seek(0, os.SEEK_END)
    fh.seek(max(0, fh.tell() - limit))
    return fh.read().decode(errors="replace")


def _parse_reply(reply: str, nonce: str) -> tuple[bool, tuple[str, str, tuple[str, ...]] | None]:
    """(whether the child started, (status, detail, violations) or None) from the child's lines.

    The child writes "<nonce>\tstarted" before any model code runs, then at most one result line
    "<nonce>\t<status>\t<detail as hex>\t<violations>". Two result lines cannot come from its
    harness (it reports once), so they mean a forgery: no result.
    """
    lines = [ln.split("\t") for ln in reply.splitlines() if ln.startswith(nonce + "\t")]
    started = [nonce, "started"] in lines
    results = [fields for fields in lines if len(fields) == 4]
    if len(results) != 1:
        return started, None
    _, status, detail_hex, violations = results[0]
    try:
        detail = bytes.fromhex(detail_hex).decode(errors="replace")
    except ValueError:
        return started, None
    return started, (status, detail, tuple(v for v in violations.split(",") if v))


def _classify(rc: int, timed_out: bool, reply: str, nonce: str, stdout: str, stderr: str,
              seconds: float, limits: Limits) -> RunResult:
    started, result = _parse_reply(reply, nonce)
    if not started:  # the sandbox itself failed (the model's code never ran)
        why = stderr.strip()[-300:] or (f"no start within {limits.wall_seconds:g} s" if timed_out else f"exit {rc}")
        return RunResult("sandbox error", why, stdout, stderr, seconds)
    if result is not None:
        status, detail, violations = result
        if violations:
            status, detail = "blocked: " + ", ".join(violations), detail or "see violations"
        return RunResult(status, detail, stdout, stderr, seconds, violations)
    sig = -rc if rc < 0 else rc - 128 if rc > 128 else 0
    if timed_out or rc == 124 or (sig == signal.SIGKILL and seconds >= limits.wall_seconds):
        return RunResult("timeout", f"still running after {limits.wall_seconds:g} s; killed",
                         stdout, stderr, seconds)
    if sig in (signal.SIGXCPU, signal.SIGKILL):  # the child's RLIMIT_CPU kills with SIGKILL; nothing else does
        return RunResult("cpu time limit", f"used more than {limits.cpu_seconds} s of CPU", stdout, stderr, seconds)
    if sig:
        return RunResult("crashed", f"killed by {signal.Signals(sig).name}", stdout, stderr, seconds)
    return RunResult("exited early", f"exit code {rc} before the tests finished", stdout, stderr, seconds)
