"""Every malformed input in ``malformed_inputs.CASES`` ends in one clear error naming the file or
field (exit 2, no traceback), and nothing is silently accepted. ``bench/faults.py`` runs the same
cases in subprocesses with a time limit and prints the counts."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from malformed_inputs import CASES, cleanup, judge, make_base_run  # noqa: E402

from reasondistill.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    return make_base_run(tmp_path_factory.mktemp("malformed-base"))


def test_the_catalogue_has_eighty_nine_cases():
    assert len(CASES) == 89 and len({c.name for c in CASES}) == 89


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_input_is_one_clear_error(case, tmp_path, capsys, monkeypatch, request):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    run = None
    if case.needs_run:
        run = tmp_path / "run"
        shutil.copytree(request.getfixturevalue("base_run"), run)
    try:
        try:
            argv, expected = case.make(tmp_path, run)
        except (subprocess.CalledProcessError, FileNotFoundError) as exc:  # no chattr/mount here
            pytest.skip(f"cannot set this case up on this machine: {exc}")
        code = main([*argv, "--quiet"] if argv[0] not in ("ingest", "score") else argv)
        err = capsys.readouterr().err
    finally:
        cleanup(run)
    assert judge(code, err, expected) == "clear", f"exit {code}; expected {expected!r} in:\n{err[-2000:]}"
