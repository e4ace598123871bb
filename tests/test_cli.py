import subprocess
import sys

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


def test_parser_lists_all_verbs():
    text = build_parser().format_help()
    for verb in [*STAGE_HELP, "run", "demo", *DELEGATED]:
        assert verb in text


def test_overrides_may_follow_options(tmp_path, capsys):
    """`reasondistill problems CONFIG --quiet key=value` applies the override (argparse alone rejects it)."""
    from reasondistill.cli import demo_config_path

    run = tmp_path / "run"
    assert main(["build", str(demo_config_path()), "--quiet", f"run_dir={run}", "task.n_train=3"]) == 2
    assert (run / "config.yaml").exists() and "n_train: 3" in (run / "config.yaml").read_text()
    assert "curate" in capsys.readouterr().err  # build needs curate first: a clear error, not a usage error
    with pytest.raises(SystemExit):
        main(["build", str(demo_config_path()), "--quiet", "--bogus"])
    with pytest.raises(SystemExit):
        main(["build", str(demo_config_path()), "--quiet", "notanoverride"])
