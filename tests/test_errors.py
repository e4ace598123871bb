"""Every error a user can cause is one line naming the file (and line or field) with exit code 2;
a bug is a traceback, one line saying it is a bug, and the saved traceback; Ctrl-C is 130."""

import errno
import shutil

import pytest

from reasondistill.cli import main
from reasondistill.config import demo_config_path
from reasondistill.errors import run_verb, user_message

BOMB = "a: &a [1, 2]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefg", "bcdefgh"))


@pytest.mark.parametrize("name, text, overrides, expected", [
    ("bomb.yaml", BOMB, [], "aliases expand to more than 100,000 values"),
    ("self.yaml", "a: &a [*a]\n", [], "aliases expand to more than"),
    ("dup.yaml", "seed: 1\ntask: {}\nseed: 2\n", [], "key 'seed' appears twice in one mapping (first on line 1)"),
    ("latin1.yaml", b"seed: 1\n# caf\xe9\n", [], "not UTF-8 text"),
    ("demo", None, ["seed.x=1"], "override seed.x: seed is a value (0), not a section"),
    ("demo", None, ["seed=[1"], "override 'seed=[1': the value is not valid YAML"),
])
def test_bad_configs_and_overrides_are_one_line_naming_the_file(tmp_path, capsys, name, text, overrides, expected):
    path = tmp_path / name
    if text is None:
        shutil.copy(demo_config_path(), path)
    elif isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    assert main(["generate", str(path), f"run_dir={tmp_path / 'run'}", *overrides, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) <= 4
    assert not (tmp_path / "run" / "problems").exists()


def test_a_run_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["generate", str(demo_config_path()), f"run_dir={tmp_path / 'file'}", "--quiet"]) == 2
    assert "run_dir is a file, not a directory" in capsys.readouterr().err


def test_os_errors_say_what_to_do():
    full = OSError(errno.ENOSPC, "No space left on device", "/runs/x/train/final/model.safetensors")
    assert "no space left" in user_message(full) and "model.safetensors" in user_message(full)
    denied = PermissionError(errno.EACCES, "Permission denied", "/runs/x")
    assert "permission denied: /runs/x" in user_message(denied)
    assert user_message(RuntimeError("a bug")) is None


def test_a_full_disk_while_saving_safetensors_is_not_called_a_corrupt_file():
    """safetensors reports ENOSPC as its own error type when writing: not "delete the corrupt file"."""
    from safetensors import SafetensorError

    full = user_message(SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert full.startswith("no space left on the device") and "corrupt" not in full and "work done is kept" in full
    bad = user_message(SafetensorError("Error while deserializing header: HeaderTooLarge"))
    assert "corrupt or truncated" in bad


def test_a_bug_prints_its_traceback_says_so_and_saves_it(tmp_path, capsys):
    def body():
        raise RuntimeError("something we got wrong")
    assert run_verb("train", body, crash_dir=lambda: tmp_path) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: something we got wrong" in err
    assert "internal error: this is a bug in reasondistill" in err
    saved = list(tmp_path.glob("reasondistill-crash-*.log"))
    assert len(saved) == 1 and "something we got wrong" in saved[0].read_text() and str(saved[0]) in err


def test_ctrl_c_keeps_the_work_and_exits_130(capsys):
    def body():
        raise KeyboardInterrupt
    assert run_verb("generate", body) == 130
    assert "interrupted; what was done is kept" in capsys.readouterr().err
