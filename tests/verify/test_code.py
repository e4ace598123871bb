"""Sandboxed code verification: right code passes, wrong code fails, hostile code is contained.

Hostile programs run in both sandbox modes: "namespaces" (when ``unshare`` works here) and
"rlimits" (audit hook + resource limits only, forced by patching ``sandbox_mode``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from reasondistill.verify import sandbox
from reasondistill.verify.code import CodeProblem, build_program, extract_code, verify_code
from reasondistill.verify.sandbox import Limits, run_sandboxed

ADD = CodeProblem(prompt='from typing import List\n\n\ndef add(a: int, b: int) -> int:\n    """Sum."""\n',
                  tests="def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n",
                  entry_point="add")
FAST = Limits(wall_seconds=2.5, cpu_seconds=2)
MODES = ["namespaces", "rlimits"]


def fenced(src: str) -> str:
    return f"Here is my solution:\n```python\n{src}\n```\nDone."


@pytest.fixture(params=MODES)
def mode(request, monkeypatch):
    if request.param == "namespaces" and sandbox.sandbox_mode() != "namespaces":
        pytest.skip("unshare cannot create user/net/mount/pid namespaces on this machine")
    monkeypatch.setattr(sandbox, "sandbox_mode", lambda: request.param)
    return request.param


def test_extract_code_prefers_the_last_python_fence():
    text = "```\nnot this\n```\n```python\nx = 1\n```\n```py\nx = 2\n```\ntrailing"
    assert extract_code(text) == "x = 2\n"
    assert extract_code("```bash\nls\n```\nthen\n```python\nx = 1\n```\n```text\nout\n```") == "x = 1\n"
    assert extract_code("```\ny = 3\n```") == "y = 3\n"
    assert extract_code("```python\ncut = 'mid-") == "cut = 'mid-\n"  # truncated completion
    assert extract_code("no fences here") is None


def test_build_program_continues_the_prompt_or_keeps_its_imports():
    solution, tests = build_program(ADD, "    return a + b\n")
    assert solution.startswith(ADD.prompt) and tests.rstrip().endswith("check(add)")
    solution, _ = build_program(ADD, "def add(a, b):\n    return a + b\n")
    assert solution.startswith(ADD.prompt.rstrip()) and solution.endswith("return a + b\n")
    broken = CodeProblem(prompt="import math\ndef add(a,", tests="", entry_point="add")
    solution, _ = build_program(broken, "def add(a, b):\n    return a + b\n")
    assert solution == "import math\ndef add(a, b):\n    return a + b\n"


def test_right_code_passes_and_wrong_code_fails(mode):
    assert verify_code(ADD, fenced("def add(a, b):\n    return a + b")).reason == "passed"
    assert verify_code(ADD, fenced("    return a + b")).verdict == "correct"  # continuation of the prompt
    wrong = verify_code(ADD, fenced("def add(a, b):\n    return a - b"))
    assert (wrong.verdict, wrong.reason) == ("wrong", "test failed")
    mbpp = CodeProblem(tests="assert is_even(4)\nassert not is_even(3)", entry_point="is_even")
    assert verify_code(mbpp, fenced("def is_even(n):\n    return n % 2 == 0")).verdict == "correct"
    run = run_sandboxed("def add(a, b):\n    return a * b\n", "assert add(2, 2) == 4\nassert add(1, 2) == 3\n")
    assert run.status == "test failed" and "tests.py:2" in run.detail


@pytest.mark.parametrize("src, reason", [
    ("def add(a, b) return", "syntax error"),
    ("def add(a, b):\n    return undefined_name", "error"),
    ("import os\nos._exit(0)", "exited early"),  # skipping the tests is not passing them
    ("import sys\nsys.exit(0)", "exited early"),
])
def test_broken_code_is_wrong_with_a_reason(src, reason):
    check = verify_code(ADD, fenced(src), FAST)
    assert (check.verdict, check.reason) == ("wrong", reason), check


def test_no_code_is_unparseable():
    assert (verify_code(ADD, "I would add them.").verdict, verify_code(ADD, "").reason) == (
        "unparseable", "no code found")


def _runner_processes() -> int:
    """Sandboxed interpreters still alive anywhere on the machine (their -c names the runner)."""
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"job = json.loads(sys.stdin.readline())" in Path(f"/proc/{pid}/cmdline").read_bytes():
                count += 1
        except OSError:
            pass
    return count


def test_infinite_loop_is_killed_with_its_process_group(mode):
    start = time.monotonic()
    check = verify_code(ADD, fenced("def add(a, b):\n    while True:\n        pass"), FAST)
    assert check.verdict == "wrong" and check.reason in ("timeout", "cpu time limit")
    sleeper = verify_code(ADD, fenced("import time\ntime.sleep(60)"), FAST)
    assert sleeper.reason == "timeout"
    assert time.monotonic() - start < 15
    assert _runner_processes() == 0


@pytest.mark.parametrize("src, reason", [
    ("import os\nwhile True:\n    os.fork()", "blocked: process creation"),
    ("import subprocess\nsubprocess.run(['sh', '-c', ':(){ :|:& };:'])", "blocked: process creation"),
    ("import os\nos.system('echo hi')", "blocked: process creation"),
    ("import ctypes\nctypes.CDLL(None).fork()", "blocked: foreign-function access"),
    ("import socket\nsocket.socket().connect(('127.0.0.1', 80))", "blocked: network"),
    ("import urllib.request\nurllib.request.urlopen('http://pypi.org')", "blocked: network"),
    ("import ctypes\nctypes.c_int.from_address(8)", "blocked: foreign-function access"),
    ("x = bytearray(10 * 1024 ** 3)", "memory limit"),
    ("import os, signal\nos.kill(1, signal.SIGKILL)", "blocked: signalling other processes"),
    ("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", "error"),  # RLIMIT_FSIZE: EFBIG
])
def test_hostile_code_is_contained_and_named(mode, src, reason):
    check = verify_code(ADD, fenced(src), FAST)
    assert (check.verdict, check.reason) == ("wrong", reason), check


def test_writes_outside_the_sandbox_are_refused_even_if_the_error_is_caught(mode, tmp_path):
    target = tmp_path / "escaped.txt"
    for src in (f"open({str(target)!r}, 'w').write('x')",
                f"try:\n    open({str(target)!r}, 'a').write('x')\nexcept Exception:\n    pass",
                f"import os\nos.rename(__file__ if '__file__' in dir() else 'a', {str(target)!r})",
                f"import shutil\nshutil.rmtree({str(tmp_path)!r})"):
        check = verify_code(ADD, fenced(src + "\ndef add(a, b):\n    return a + b"), FAST)
        assert check.reason == "blocked: write outside the sandbox", (src, check)
    assert tmp_path.exists() and not target.exists()
    inside = "open('scratch.txt', 'w').write('ok')\nimport tempfile\ntempfile.TemporaryFile().write(b'x')\n"
    assert verify_code(ADD, fenced(inside + "def add(a, b):\n    return a + b"), FAST).verdict == "correct"


@pytest.mark.skipif(sandbox.sandbox_mode() != "namespaces", reason="namespaces unavailable: rlimits mode only")
def test_namespaces_hold_without_the_audit_hook(tmp_path):
    """The kernel layer alone (no audit hook): read-only filesystem, no network, no remount."""
    probe = (f"import socket, subprocess\n"
             f"try: open({str(tmp_path / 'x')!r}, 'w')\nexcept OSError as e: print('write', e.errno)\n"
             f"try: socket.create_connection(('1.1.1.1', 80), 2)\nexcept OSError as e: print('net', e.errno)\n"
             f"r = subprocess.run(['mount', '-o', 'remount,rw', '/'], capture_output=True)\n"
             f"print('remount', r.returncode)\nopen('inside.txt', 'w').write('ok'); print('inside ok')")
    workdir = Path(tempfile.mkdtemp(prefix="rd-probe-"))
    try:
        out = subprocess.run(sandbox._UNSHARE + [str(workdir), sys.executable, probe], capture_output=True,
                             text=True, timeout=60).stdout.split("\n")
    finally:
        (workdir / "inside.txt").unlink(missing_ok=True)
        workdir.rmdir()
    assert out[:2] == ["write 30", "net 101"]  # EROFS, ENETUNREACH
    assert out[2] != "remount 0" and out[3] == "inside ok"
    assert not (tmp_path / "x").exists()


def test_numpy_works_with_namespaces_and_demo_blocks_do_not_run():
    if sandbox.sandbox_mode() != "namespaces":
        pytest.skip("numpy imports ctypes, which rlimits mode refuses")
    pytest.importorskip("numpy")
    src = "import numpy as np\ndef add(a, b):\n    return int(np.add(a, b))\nif __name__ == '__main__':\n    input()"
    assert verify_code(ADD, fenced(src), FAST).reason == "passed"


def test_many_completions_in_the_worker_pool():
    from reasondistill.verify.code import check_item
    from reasondistill.verify.pool import run_pool

    items = [(ADD, fenced("def add(a, b):\n    return a + b"), FAST),
             (ADD, fenced("import time\ntime.sleep(60)"), FAST),
             (ADD, "no code", FAST)]
    checks = run_pool(check_item, items, workers=2, chunk_size=1, timeout=30, progress=False)
    assert [c.reason for c in checks] == ["passed", "timeout", "no code found"]
