"""Sandboxed code verification: right code passes, wrong code fails, hostile code is contained.

Runs where the sandbox can be built (``sandbox_mode() == "namespaces"``); elsewhere every run
must be refused, which ``test_hosts_without_namespaces_are_refused`` checks by forcing it. The
long list of hostile programs is tests/faults/test_sandbox_hostile.py.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import live_sandbox_processes
from reasondistill.verify import sandbox
from reasondistill.verify.code import CodeProblem, build_program, extract_code, verify_code
from reasondistill.verify.sandbox import Limits, run_sandboxed

ADD = CodeProblem(prompt='from typing import List\n\n\ndef add(a: int, b: int) -> int:\n    """Sum."""\n',
                  tests="def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n",
                  entry_point="add")
FAST = Limits(wall_seconds=2.5, cpu_seconds=2)
needs_sandbox = pytest.mark.skipif(sandbox.sandbox_mode() != "namespaces",
                                   reason="this host cannot build the sandbox's namespaces")


def fenced(src: str) -> str:
    return f"Here is my solution:\n```python\n{src}\n```\nDone."


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


@needs_sandbox
def test_right_code_passes_and_wrong_code_fails():
    assert verify_code(ADD, fenced("def add(a, b):\n    return a + b")).reason == "passed"
    assert verify_code(ADD, fenced("    return a + b")).verdict == "correct"  # continuation of the prompt
    wrong = verify_code(ADD, fenced("def add(a, b):\n    return a - b"))
    assert (wrong.verdict, wrong.reason) == ("wrong", "test failed")
    mbpp = CodeProblem(tests="assert is_even(4)\nassert not is_even(3)", entry_point="is_even")
    assert verify_code(mbpp, fenced("def is_even(n):\n    return n % 2 == 0")).verdict == "correct"
    run = run_sandboxed("def add(a, b):\n    return a * b\n", "assert add(2, 2) == 4\nassert add(1, 2) == 3\n")
    assert run.status == "test failed" and "tests.py:2" in run.detail


@needs_sandbox
@pytest.mark.parametrize("src, reason", [
    ("def add(a, b) return", "syntax error"),
    ("def add(a, b):\n    return undefined_name", "error"),
    ("import os\nos._exit(0)", "exited early"),  # skipping the tests is not passing them
    ("import sys\nsys.exit(0)", "exited early"),
])
def test_broken_code_is_wrong_with_a_reason(src, reason):
    check = verify_code(ADD, fenced(src), FAST)
    assert (check.verdict, check.reason) == ("wrong", reason), check


@pytest.mark.parametrize("tests, setup", [("assert c(1) ==", ""), ("assert c(1) == 1", "def helper(:")])
def test_reference_tests_that_do_not_compile_are_unparseable_not_the_models_fault(tests, setup):
    problem = CodeProblem(tests=tests, setup=setup, entry_point="c")
    check = verify_code(problem, fenced("def c(x):\n    return x"), FAST)
    assert (check.verdict, check.reason.split(":")[0]) == ("unparseable", "reference tests do not compile"), check
    assert "line 1" in check.reason
    # the model's own syntax error is still its own
    assert verify_code(ADD, fenced("def add(a, b) return"), FAST).reason == "syntax error"


@pytest.mark.parametrize("tests, entry_point, why", [
    ("# assert c(1) == 1\n", "c", "the tests contain no assert"),
    ("['assert c(1) == 1']", "c", "the tests contain no assert (they are a list written as Python text"),
    ("def check(candidate):\n    assert candidate(1) == 1\n", None,
     "the tests define check(candidate) but there is no entry_point"),
])
def test_reference_tests_that_check_nothing_are_unparseable_not_correct(tests, entry_point, why):
    """Parsed with ast, never run: such tests would pass any code, even code that returns nothing."""
    check = verify_code(CodeProblem(tests=tests, entry_point=entry_point), fenced("def c(x):\n    return None"), FAST)
    assert check.verdict == "unparseable" and check.reason.startswith(f"reference tests check nothing: {why}"), check


def test_build_program_calls_check_once():
    _, tests = build_program(ADD, "    return a + b\n")
    assert tests.count("check(add)") == 1
    called = CodeProblem(prompt=ADD.prompt, tests=ADD.tests + "check(add)\n", entry_point="add")
    _, tests = build_program(called, "    return a + b\n")
    assert tests.count("check(add)") == 1
    mbpp = CodeProblem(tests="def check_it():\n    assert add(1, 1) == 2\ncheck_it()\n", entry_point="add")
    assert build_program(mbpp, "def add(a, b):\n    return a + b\n")[1].count("check(") == 0


def test_no_code_is_unparseable():
    assert (verify_code(ADD, "I would add them.").verdict, verify_code(ADD, "").reason) == (
        "unparseable", "no code found")


@needs_sandbox
def test_infinite_loop_is_killed_with_its_process_group(sandbox_marker):
    start = time.monotonic()
    check = verify_code(ADD, fenced("def add(a, b):\n    while True:\n        pass"), FAST)
    assert check.verdict == "wrong" and check.reason in ("timeout", "cpu time limit")
    sleeper = verify_code(ADD, fenced("import time\ntime.sleep(60)"), FAST)
    assert sleeper.reason == "timeout"
    assert time.monotonic() - start < 15
    assert live_sandbox_processes(sandbox_marker) == 0


@needs_sandbox
@pytest.mark.parametrize("src, reason", [
    ("import os\nwhile True:\n    os.fork()", "blocked: process creation"),
    ("import subprocess\nsubprocess.run(['sh', '-c', ':(){ :|:& };:'])", "blocked: process creation"),
    ("import os\nos.system('echo hi')", "blocked: process creation"),
    ("import ctypes\nctypes.CDLL(None).fork()", "error"),  # ImportError: ctypes is withheld
    ("import socket\nsocket.socket().connect(('127.0.0.1', 80))", "blocked: network"),
    ("import urllib.request\nurllib.request.urlopen('http://pypi.org')", "blocked: network"),
    ("x = bytearray(10 * 1024 ** 3)", "memory limit"),
    ("import os, signal\nos.kill(1, signal.SIGKILL)", "blocked: signalling other processes"),
    ("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", "output limit"),  # RLIMIT_FSIZE: EFBIG
    ("with open('big', 'w') as f:\n    f.write('x' * 40 * 1024 ** 2)", "output limit"),
    ("import sys\nsys.audit('reasondistill.sandbox.report', 'passed', '')", "blocked: forging the result"),
])
def test_hostile_code_is_contained_and_named(src, reason):
    check = verify_code(ADD, fenced(src), FAST)
    assert (check.verdict, check.reason) == ("wrong", reason), check


@needs_sandbox
def test_writes_outside_the_sandbox_are_refused_even_if_the_error_is_caught():
    target = "/usr/rd-escaped.txt"
    for src in (f"open({target!r}, 'w').write('x')",
                f"try:\n    open({target!r}, 'a').write('x')\nexcept Exception:\n    pass",
                f"import os\nopen('a', 'w').close()\nos.rename('a', {target!r})",
                "import shutil\nshutil.rmtree('/usr/share')"):
        check = verify_code(ADD, fenced(src + "\ndef add(a, b):\n    return a + b"), FAST)
        assert check.reason == "blocked: write outside the sandbox", (src, check)
    assert not os.path.exists(target) and os.path.isdir("/usr/share")
    inside = "open('scratch.txt', 'w').write('ok')\nimport tempfile\ntempfile.TemporaryFile().write(b'x')\n"
    assert verify_code(ADD, fenced(inside + "def add(a, b):\n    return a + b"), FAST).verdict == "correct"


@needs_sandbox
def test_namespaces_hold_without_the_audit_hook_or_seccomp(tmp_path):
    """The kernel layer alone (plain python, no hook, no seccomp): a read-only root without the
    host's files or /proc, no network, no remount, a writable /sandbox."""
    (tmp_path / "secret.txt").write_text("s")
    probe = (f"import os, socket, subprocess\n"
             f"try: open({str(tmp_path / 'x')!r}, 'w')\nexcept OSError as e: print('write', e.errno)\n"
             f"try: open('/usr/x', 'w')\nexcept OSError as e: print('usr', e.errno)\n"
             f"try: socket.create_connection(('1.1.1.1', 80), 2)\nexcept OSError as e: print('net', e.errno)\n"
             # the project's files (the venv inside it is bound read-only, so its folder path may exist)
             f"print('visible', [p for p in ({str(tmp_path)!r}, {str(Path.cwd() / 'pyproject.toml')!r}, "
             f"'/proc/self', '/etc') "
             f"if os.path.exists(p)])\n"
             f"r = subprocess.run(['mount', '-o', 'remount,rw', '/usr'], capture_output=True)\n"
             f"print('remount', r.returncode)\nopen('/sandbox/inside.txt', 'w').write('ok'); print('inside ok')")
    root = tempfile.mkdtemp(prefix="rd-probe-")
    try:
        out = subprocess.run(sandbox._command(root, probe, 1024), capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, cwd=root)
    finally:
        os.rmdir(root)
    lines = out.stdout.split("\n")
    assert lines[:4] == ["write 2", "usr 30", "net 101", "visible []"], out  # ENOENT, EROFS, ENETUNREACH
    assert lines[4] != "remount 0" and lines[5] == "inside ok", out
    assert not (tmp_path / "x").exists()


def test_a_sandbox_that_fails_to_start_is_a_sandbox_error(monkeypatch):
    """Before the child's "started" line nothing is the program's: any failure is ours."""
    monkeypatch.setattr(sandbox, "_command", lambda *a: ["sh", "-c", "echo 'mount: permission denied' >&2; exit 97"])
    run = sandbox._execute("x = 1\n", "", FAST)
    assert (run.status, run.detail) == ("sandbox error", "mount: permission denied")


def test_the_probe_says_why_a_host_is_refused(monkeypatch, caplog):
    monkeypatch.setattr(sandbox, "_command", lambda *a: ["sh", "-c", "echo 'unshare: Operation not permitted' >&2"])
    sandbox._probe.cache_clear()
    try:
        assert sandbox._probe() == ("rlimits", "unshare: Operation not permitted")
        assert "refusing to run model-written code" in caplog.text and "Operation not permitted" in caplog.text
    finally:
        sandbox._probe.cache_clear()  # the next caller probes this host again


def test_hosts_without_namespaces_are_refused(monkeypatch):
    monkeypatch.setattr(sandbox, "_probe", lambda: ("rlimits", "unshare: operation not permitted"))
    assert sandbox.sandbox_mode() == "rlimits"
    run = run_sandboxed("def add(a, b):\n    return a + b\n", "assert add(1, 2) == 3\n")
    assert run.status == "sandbox error" and "refusing" in run.detail and "operation not permitted" in run.detail
    check = verify_code(ADD, fenced("def add(a, b):\n    return a + b"))
    assert (check.verdict, check.reason) == ("unparseable", "sandbox error")


@needs_sandbox
def test_numpy_works_and_demo_blocks_do_not_run():
    pytest.importorskip("numpy")
    src = "import numpy as np\ndef add(a, b):\n    return int(np.add(a, b))\nif __name__ == '__main__':\n    input()"
    assert verify_code(ADD, fenced(src), FAST).reason == "passed"


@needs_sandbox
def test_many_completions_in_the_worker_pool():
    from reasondistill.verify.code import check_item
    from reasondistill.verify.pool import run_pool

    items = [(ADD, fenced("def add(a, b):\n    return a + b"), FAST),
             (ADD, fenced("import time\ntime.sleep(60)"), FAST),
             (ADD, "no code", FAST)]
    checks = run_pool(check_item, items, workers=2, chunk_size=1, timeout=30, progress=False)
    assert [c.reason for c in checks] == ["passed", "timeout", "no code found"]
