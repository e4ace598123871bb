"""A sandbox for model-written Python: a fresh, limited, isolated interpreter per run.

Why: model-written code must never run in our process or with our rights. Each run is a new
``python -I -B`` (isolated mode, no bytecode writes) in its own session, reading its job from
stdin, reporting on a private pipe, and enforced in layers:

* always: a wall-clock limit after which the whole process group is SIGKILLed (plus coreutils
  ``timeout`` as a backstop if we die first); ``setrlimit`` on address space (RLIMIT_AS), CPU
  seconds (RLIMIT_CPU), file size (RLIMIT_FSIZE, which also caps stdout/stderr), processes
  (RLIMIT_NPROC) and core dumps; a fresh temporary working directory (also HOME and TMPDIR);
  a minimal environment; and an audit hook that refuses process creation (fork, exec, system,
  posix_spawn, subprocess and so ``import subprocess``), every socket operation, cffi and
  ctypes calls (ctypes may be imported only with namespaces, as numpy does), signals to other
  processes, and writes, renames, deletes, chmods outside the working directory. A
  refusal is recorded even if the code catches the exception.
* when ``unshare`` works here (``sandbox_mode() == "namespaces"``): new user, network, mount and
  PID namespaces. The network namespace has only a down loopback; every mount is remounted
  read-only except the working directory, and the code then runs in a second user namespace
  without privileges, so it cannot remount anything writable; killing the sandbox kills every
  process in its PID namespace.

Not enforced: reading files (the code can read anything our user can; it just cannot send it
anywhere), RLIMIT_NPROC for root (the kernel exempts uid 0, namespaced or not; process creation
is stopped by the audit hook and the PID namespace instead), and a determined forger of its own
result: in-process Python can find the runner's nonce in memory. Without namespaces the network
and filesystem rules rest on the audit hook alone, which native code could bypass (ctypes and
``_posixsubprocess`` are refused for that reason, but a C extension already installed is not).
With namespaces, ``ctypes.memmove``/``string_at`` on raw addresses are not refused (no audit
event): they can crash the sandbox or disable its hook, but not leave the namespaces.

    from reasondistill.verify.sandbox import Limits, run_sandboxed
    run_sandboxed("def f():\\n    return 1\\n", "assert f() == 1\\n", Limits(wall_seconds=5))
    # -> RunResult(status="passed", ...)
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

# Executed as ``python -I -B -c _RUNNER``; reads its job as one JSON line on stdin.
_RUNNER = r'''
import json, os, resource, signal, sys
job = json.loads(sys.stdin.readline()); os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
out, work, lim = os.fdopen(job["result_fd"], "w"), os.path.realpath(job["dir"]), job["limits"]
for name, value in lim.items():  # CPU: SIGXCPU at the soft limit, SIGKILL a second later
    resource.setrlimit(getattr(resource, name), (value, value + (name == "RLIMIT_CPU")))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
sys.dont_write_bytecode = True
seen = []
class SandboxViolation(PermissionError):
    pass
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
PATHS = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.chmod": (0,), "os.chown": (0,),
         "os.rename": (0, 1), "os.link": (1,), "os.symlink": (1,), "os.truncate": (0,), "os.utime": (0,),
         "os.chflags": (0,), "os.lchown": (0,), "os.mkfifo": (0,), "os.mknod": (0,), "shutil.rmtree": (0,)}
SPAWN = {"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen",
         "pty.spawn", "os.startfile"}
MODULES = {"cffi": "foreign-function access", "_cffi_backend": "foreign-function access",
           "_posixsubprocess": "process creation"}
# with namespaces, ctypes may be imported (numpy does) but not used to look up C functions or build
# objects at raw addresses; without them the audit hook is the only barrier, so no ctypes at all
FOREIGN = {"ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.call_function", "ctypes.cdata", "ctypes.set_errno"}
if not job["namespaces"]:
    MODULES.update({"ctypes": "foreign-function access", "_ctypes": "foreign-function access"})
def inside(p):
    if p is None or isinstance(p, int):
        return True
    real = os.path.realpath(os.fsdecode(p))
    return real == work or real.startswith(work + os.sep)
def deny(what, detail):
    seen.append(what)
    raise SandboxViolation(f"sandbox: {what} is not allowed ({detail})")
def hook(event, args):
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE)
        if writing and not inside(path):
            deny("write outside the sandbox", path)
    elif event in PATHS:
        for i in PATHS[event]:
            if i < len(args) and not inside(args[i]):
                deny("write outside the sandbox", f"{event} {args[i]}")
    elif event.startswith("socket."):
        deny("network", event)
    elif event in SPAWN:
        deny("process creation", event)
    elif event in ("os.kill", "os.killpg") and args[0] != os.getpid():
        deny("signalling other processes", event)
    elif event == "import" and args[0].split(".")[0] in MODULES:
        deny(MODULES[args[0].split(".")[0]], "import " + args[0])
    elif event in FOREIGN or (event == "ctypes.dlopen" and args[0] is not None):
        deny("foreign-function access", event)
def report(status, detail=""):
    out.write(json.dumps({"nonce": job["nonce"], "status": status, "detail": str(detail)[-800:],
                          "violations": sorted(set(seen))}) + "\n")
    out.flush()
def describe(exc):
    import traceback
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename in ("solution.py", "tests.py")]
    where = f" at {frames[-1].filename}:{frames[-1].lineno}: {frames[-1].line}" if frames else ""
    return f"{type(exc).__name__}: {exc}"[:300] + where
sys.addaudithook(hook)
scope = {"__name__": "solution", "__builtins__": __builtins__}  # skip `if __name__ == "__main__":` demos
phase = "syntax"
try:
    solution, tests = compile(job["solution"], "solution.py", "exec"), compile(job["tests"], "tests.py", "exec")
    phase = "solution"
    exec(solution, scope)
    phase = "tests"
    exec(tests, scope)
    report("passed")
except SyntaxError as exc:
    report("syntax error" if phase == "syntax" else "error", f"{exc.msg} (line {exc.lineno})")
except MemoryError as exc:
    report("memory limit", describe(exc))
except AssertionError as exc:
    report("test failed" if phase == "tests" else "error", describe(exc))
except SystemExit as exc:
    report("exited early", f"{phase} called exit({exc.code!r})")
except BaseException as exc:
    report("error", describe(exc))
for stream in (sys.stdout, sys.stderr):
    try:
        stream.flush()
    except Exception:
        pass
os._exit(0)  # do not wait for threads the code may have left running
'''

_MOUNTS = r'''
mount --bind "$1" "$1" || exit 97
for m in $(awk '{print $2}' /proc/self/mounts); do [ "$m" = "$1" ] || mount -o remount,bind,ro "$m" 2>/dev/null; done
cd "$1" && unshare --user "$2" -I -B -c "$3"
'''
_UNSHARE = ["unshare", "--user", "--map-root-user", "--net", "--mount", "--pid", "--fork",
            "--kill-child", "--mount-proc", "sh", "-c", _MOUNTS, "sh"]



@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed run."""

    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_mb: int = 1024
    file_mb: int = 16  # largest file (and stdout/stderr) the code may write
    processes: int = 64  # RLIMIT_NPROC; only enforced for a non-root user (see sandbox_mode)
    env: dict[str, str] = field(default_factory=dict)  # extra environment variables


@dataclass(frozen=True)
class RunResult:
    status: str  # "passed", "test failed", "error", "syntax error", "timeout", "cpu time limit",
    # "memory limit", "blocked: <what>", "crashed", "exited early" or "sandbox error"
    detail: str
    stdout: str
    stderr: str
    seconds: float
    violations: tuple[str, ...] = ()


@functools.lru_cache(maxsize=1)
def sandbox_mode() -> str:
    """"namespaces" if ``unshare`` gives us user+net+mount+pid namespaces here, else "rlimits"."""
    if shutil.which("unshare") is None or shutil.which("sh") is None:
        return "rlimits"
    with tempfile.TemporaryDirectory() as tmp:
        probe = ("import socket\ntry: socket.create_connection(('127.0.0.1', 9), 1)\n"
                 "except OSError: print('network-blocked')")
        try:
            run = subprocess.run(_UNSHARE + [tmp, sys.executable, probe], capture_output=True,
                                 text=True, timeout=30, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return "rlimits"
    ok = run.returncode == 0 and run.stdout.strip() == "network-blocked"
    return "namespaces" if ok else "rlimits"


def _rlimits(limits: Limits) -> dict[str, int]:
    mb = 1024 * 1024
    return {"RLIMIT_AS": limits.memory_mb * mb, "RLIMIT_CPU": int(limits.cpu_seconds),
            "RLIMIT_FSIZE": limits.file_mb * mb, "RLIMIT_NPROC": limits.processes, "RLIMIT_CORE": 0}


def run_sandboxed(solution: str, tests: str, limits: Limits | None = None) -> RunResult:
    """Run ``solution`` then ``tests`` (same globals) in a fresh sandboxed interpreter."""
    limits = limits or Limits()
    work = tempfile.mkdtemp(prefix="rd-sandbox-")
    read_fd, write_fd = os.pipe()
    nonce = secrets.token_hex(16)
    namespaces = sandbox_mode() == "namespaces"
    job = {"nonce": nonce, "dir": work, "result_fd": write_fd, "limits": _rlimits(limits),
           "solution": solution, "tests": tests, "namespaces": namespaces}
    if namespaces:
        cmd = _UNSHARE + [work, sys.executable, _RUNNER]
    else:
        cmd = [sys.executable, "-I", "-B", "-c", _RUNNER]
    # outer guard: coreutils timeout kills the lot even if this process dies first
    cmd = ["timeout", "-s", "KILL", f"{limits.wall_seconds + 5:g}"] + cmd if shutil.which("timeout") else cmd
    env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **limits.env}
    start = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=work, env=env,
                                    pass_fds=(write_fd,), start_new_session=True)
        except OSError as exc:
            for fd in (read_fd, write_fd):
                os.close(fd)
            shutil.rmtree(work, ignore_errors=True)
            return RunResult("sandbox error", f"cannot start the sandbox: {exc}", "", "", 0.0)
        os.close(write_fd)
        timed_out = False
        try:
            proc.communicate((json.dumps(job) + "\n").encode(), timeout=limits.wall_seconds)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(proc)
        seconds = time.monotonic() - start
        with os.fdopen(read_fd, "rb") as fh:
            reply = fh.read(1 << 20).decode(errors="replace")
        stdout, stderr = _tail(out), _tail(err)
    shutil.rmtree(work, ignore_errors=True)
    return _classify(proc.returncode, timed_out, reply, nonce, stdout, stderr, seconds, limits)


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


def _classify(rc: int, timed_out: bool, reply: str, nonce: str, stdout: str, stderr: str,
              seconds: float, limits: Limits) -> RunResult:
    result = None
    for line in reply.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("nonce") == nonce:
            result = obj
    if result is not None:
        violations = tuple(result["violations"])
        status, detail = result["status"], result["detail"]
        if violations:
            status, detail = "blocked: " + ", ".join(violations), detail or "see violations"
        return RunResult(status, detail, stdout, stderr, seconds, violations)
    sig = -rc if rc < 0 else rc - 128 if rc > 128 else 0
    if timed_out or rc == 124 or (sig == signal.SIGKILL and seconds >= limits.wall_seconds):
        return RunResult("timeout", f"still running after {limits.wall_seconds:g} s; killed",
                         stdout, stderr, seconds)
    if sig == signal.SIGXCPU:
        return RunResult("cpu time limit", f"used more than {limits.cpu_seconds} s of CPU", stdout, stderr, seconds)
    if rc == 97 or "unshare:" in stderr:
        return RunResult("sandbox error", stderr.strip()[-300:], stdout, stderr, seconds)
    if sig:
        return RunResult("crashed", f"killed by {signal.Signals(sig).name}", stdout, stderr, seconds)
    return RunResult("exited early", f"exit code {rc} before the tests finished", stdout, stderr, seconds)
