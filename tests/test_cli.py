import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from reasondistill.cli import DELEGATED, STAGE_HELP, build_parser, main


def test_help_does_not_import_heavy_libraries():
    code = ("import sys; from reasondistill.cli import build_parser; build_parser().format_help();"
            "print(sorted(m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("verb", [*STAGE_HELP, "run", "demo", *DELEGATED])
def test_every_verb_explains_itself(verb, capsys):
    with pytest.raises(SystemExit) as ex:
        main([verb, "--help"])
    assert ex.value.code == 0
    assert "usage: reasondistill " + verb in capsys.readouterr().out


def test_missing_target_is_a_clear_error(tmp_path, capsys):
    assert main(["curate", str(tmp_path / "nope")]) == 2
    assert "no such config file or run directory" in capsys.readouterr().err
    assert main(["curate", str(tmp_path)]) == 2
    assert "without config.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("verb", ["build", "train", "quantize"])
def test_a_verb_for_students_without_students_is_an_error(verb, tmp_path, capsys):
    """Not a silent exit 0: the config has nothing for the verb to do."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nteacher: {{model: 'bundled:tiny-arith-teacher'}}\n")
    assert main([verb, str(cfg), "--quiet"]) == 2
    assert f"the config has no students, so `{verb}` has nothing to do" in capsys.readouterr().err


def test_parser_lists_all_verbs():
    text = build_parser().format_help()
    for verb in [*STAGE_HELP, "run", "demo", *DELEGATED]:
        assert verb in text


def test_overrides_may_follow_options(tmp_path, capsys):
    """`reasondistill problems CONFIG --quiet key=value` applies the override (argparse alone rejects it)."""
    from reasondistill.config import demo_config_path

    run = tmp_path / "run"
    assert main(["build", str(demo_config_path()), "--quiet", f"run_dir={run}", "task.n_train=3"]) == 2
    assert (run / "config.yaml").exists() and "n_train: 3" in (run / "config.yaml").read_text()
    assert "curate" in capsys.readouterr().err  # build needs curate first: a clear error, not a usage error
    with pytest.raises(SystemExit):
        main(["build", str(demo_config_path()), "--quiet", "--bogus"])
    with pytest.raises(SystemExit):
        main(["build", str(demo_config_path()), "--quiet", "notanoverride"])


def test_an_override_on_a_run_directory_says_it_is_saved(tmp_path, capsys):
    """An override given to one verb stays in the run's config.yaml; the verb says so, naming the keys
    (students by name), and says nothing when nothing changes."""
    from reasondistill.config import config_changes, demo_config_path

    run = tmp_path / "run"
    main(["build", str(demo_config_path()), "--quiet", f"run_dir={run}", "task.n_train=3"])
    capsys.readouterr()
    main(["build", str(run), "--quiet", "evaluate.batch_size=7", "students.student_kd.train.lr=0.5"])
    out = capsys.readouterr().out
    assert "saving 2 changed key(s)" in out and "evaluate.batch_size: 400 -> 7" in out
    assert "students.student_kd.train.lr: 0.003 -> 0.5" in out and "batch_size: 7" in (run / "config.yaml").read_text()
    main(["build", str(run), "--quiet"])
    assert "changed key" not in capsys.readouterr().out
    assert config_changes({"students": [{"name": "a", "x": 1}]}, {"students": [{"name": "b", "x": 1}]}) == [
        'students.a: {"name": "a", "x": 1} -> null', 'students.b: null -> {"name": "b", "x": 1}']


@pytest.mark.parametrize("argv, usage, hint", [
    (["curate", "RUN", "--forse"], "usage: reasondistill curate ", "did you mean '--force'?"),
    (["train", "RUN", "--studnet", "s", "train.lr=1"], "usage: reasondistill train ", "did you mean '--student'?"),
    (["export", "RUN", "--formt", "messages"], "usage: reasondistill export ", "did you mean '--format'?"),
    (["serve", "m", "--prot", "8000"], "usage: reasondistill serve ", "did you mean '--port'?"),
    (["curat", "RUN"], "usage: reasondistill [-h] VERB", "did you mean 'curate'?"),
    (["config", "shwo"], "usage: reasondistill config ", "did you mean 'show'?"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_misspelled_option_or_verb_prints_the_verbs_usage_and_a_hint(argv, usage, hint, capsys):
    with pytest.raises(SystemExit) as ex:
        main(argv)
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage) and hint in err


def undocumented_options(help_text: str) -> list[str]:
    """Entries of the argument sections of a --help text that have no help text beside or below them."""
    lines, found, in_section = help_text.splitlines(), [], False
    for i, line in enumerate(lines):
        if line and not line.startswith(" "):
            in_section = line.endswith(":") and ("arguments" in line or line == "options:")
            continue
        entry = re.match(r"^  (\S(?:\S| (?! ))*)(  +\S.*)?$", line)
        if not in_section or not entry or entry.group(2):
            continue
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if len(nxt) - len(nxt.lstrip()) <= 2 and entry.group(1) not in ("VERB", "ACTION"):
            found.append(entry.group(1))
    return found


def test_undocumented_options_are_found():
    ap = argparse.ArgumentParser(prog="x")
    ap.add_argument("--bare")
    ap.add_argument("--with-a-long-name-and-no-help", metavar="VALUE")
    ap.add_argument("--fine", help="documented")
    ap.add_argument("thing")
    assert undocumented_options(ap.format_help()) == ["thing", "--bare BARE", "--with-a-long-name-and-no-help VALUE"]


@pytest.mark.parametrize("argv", [[v] for v in [*STAGE_HELP, "route", "run", "demo", "config", *DELEGATED]]
                         + [["config", "show"], ["config", "docs"], []], ids=" ".join)
def test_every_option_has_help_and_no_markup(argv, capsys):
    with pytest.raises(SystemExit) as ex:
        main([*argv, "--help"])
    assert ex.value.code == 0
    text = capsys.readouterr().out
    assert undocumented_options(text) == []
    assert "`" not in text and ":func:" not in text and ":mod:" not in text  # no RST or Markdown quoting
    assert "Why:" not in text  # no module docstring


def test_architecture_doc_names_files_that_exist():
    """docs/architecture.md says where to add things; the modules it names must still be there."""
    root = Path(__file__).parents[1]
    text = (root / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(?:src/reasondistill/)?((?:[a-z_]+/)?[a-z_]+\.py)`", text))
    assert len(named) > 10
    assert [p for p in sorted(named) if not (root / "src" / "reasondistill" / p).exists()] == []
