import re
from pathlib import Path

import pytest

from reasondistill.config import demo_config_path
from reasondistill.config import ConfigError, load_config


def test_demo_config_loads_and_overrides_apply():
    cfg = load_config(demo_config_path(), ["run_dir=/tmp/x", "students.0.train.lr=0.5",
                                           "students.student_answers_only.train.epochs=2", "task.n_test=7"])
    assert cfg.run_dir == "/tmp/x" and cfg.task.n_test == 7
    assert cfg.students[0].train.lr == 0.5
    assert cfg.student("student_answers_only").train.epochs == 2
    assert cfg.student("student_traces").train.epochs == 12  # YAML anchors do not alias after loading


@pytest.mark.parametrize("override, field", [
    ("students.0.train.lr=-1", "students.0.train.lr"),
    ("task.n_train=lots", "task.n_train"),
    ("generate.tempreature=1", "generate.tempreature"),
    ("build.val_fraction=1.5", "build.val_fraction"),
    ("evaluate.k=[4]", "applies to sampled evaluation: set samples"),  # samples 0: k would be ignored
])
def test_bad_field_is_named(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(demo_config_path(), [override])
    assert field in str(err.value) and "demo.yaml" in str(err.value)


def test_bad_yaml_and_bad_override(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("task: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(demo_config_path(), ["novalue"])


def test_student_needs_exactly_one_model(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("students:\n  - name: s\n    target: traces\n")
    with pytest.raises(ConfigError, match=r"students\.0.*exactly one of 'model'"):
        load_config(f)


def test_packing_only_for_hard_distillation():
    cfg = load_config(demo_config_path(), ["students.student_traces.train.packing=true"])
    assert cfg.student("student_traces").train.packing and cfg.student("student_traces").train.pack_tokens is None
    with pytest.raises(ConfigError, match=r"students\.\d.*hard distillation only") as err:
        load_config(demo_config_path(), ["students.student_kd.train.packing=true"])
    assert "demo.yaml" in str(err.value)


@pytest.mark.parametrize("override, hint", [
    ("generate.tempreature=1",
     "generate.tempreature: Extra inputs are not permitted (got 1); did you mean 'temperature'?"),
    ("students.student_kd.distill.alhpa=0.3", "did you mean 'alpha'?"),
    ("students.0.trian.lr=1", "students.0.trian: Extra inputs are not permitted; did you mean 'train'?"),
    ("seeed=3", "did you mean 'seed'?"),
    ("task={name: gsm8k, path: x.jsonl, fields: {questoin: q}}", "task.fields.questoin"),
    ("teacher.kind=opnai", "teacher.kind: Input should be 'hf', 'openai', 'ingested' or 'vllm' (got 'opnai'); "
                           "did you mean 'openai'?"),
    ("task.name=gsm8", "did you mean 'gsm8k'?"),
])
def test_misspelled_key_or_name_in_an_override_gets_a_hint(override, hint):
    with pytest.raises(ConfigError) as err:
        load_config(demo_config_path(), [override])
    assert hint in str(err.value)
    if "questoin" in override:
        assert "did you mean 'question'?" in str(err.value)


def test_misspelled_key_in_a_file_gets_a_hint_and_a_stranger_none(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("teacher:\n  concurency: 4\ncurate:\n  max_per_problme: 2\n  zzzz: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    text = str(err.value)
    assert str(f) in text
    assert "teacher.concurency: Extra inputs are not permitted (got 4); did you mean 'concurrency'?" in text
    assert "curate.max_per_problme: Extra inputs are not permitted (got 2); did you mean 'max_per_problem'?" in text
    assert "curate.zzzz: Extra inputs are not permitted (got 1)\n" in text + "\n"  # nothing close: no guess


def show(capsys, *argv: str) -> str:
    from reasondistill.cli import main

    assert main(["config", "show", *argv]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    [],
    ["task.n_train=7", "teacher.system_prompt=\"two\\nlines: # not a comment\""],
    [str(demo_config_path()), "students.student_kd.distill.alpha=0.25"],
    ["MIXTURE", "generate.n=3"],
    [str(Path(__file__).parents[1] / "configs" / "gsm8k_openai.yaml")],
], ids=["defaults", "overrides only", "demo", "mixture", "gsm8k_openai"])
def test_config_show_is_the_resolved_config_with_descriptions(argv, tmp_path, capsys):
    import yaml

    from reasondistill.config import dump_config

    if argv and argv[0] == "MIXTURE":  # a mixture's sources dump flat: task keys beside label, ratio, cap
        argv = [str(tmp_path / "mixture.yaml"), *argv[1:]]
        Path(argv[0]).write_text("task:\n  name: mixture\n  n_train: 10\n  sources:\n"
                                 "  - {name: gsm8k, path: g.jsonl, ratio: 0.7, cap: 5}\n"
                                 "  - {name: math, label: hard, path: m.jsonl, strategy: think}\n")
    text = show(capsys, *argv)
    path, overrides = (argv[0], argv[1:]) if argv and "=" not in argv[0] else (None, argv)
    expected = load_config(path, overrides)
    assert yaml.safe_load(text) == yaml.safe_load(dump_config(expected))  # parses; defaults filled in
    (tmp_path / "shown.yaml").write_text(text)
    assert load_config(tmp_path / "shown.yaml") == expected  # round trip
    for section in ("task", "teacher", "generate", "curate", "build", "students", "evaluate", "verify"):
        assert re.search(rf"^{section}:( \S+)?  # \S", text, re.M), section  # every section with its description
    assert re.search(r"^  n_test: \S+  # \S", text, re.M)
    assert re.search(r"^  timeout: 10\.0  # seconds per answer before it is 'unparseable: timeout'$", text, re.M)


def test_config_show_of_a_run_directory(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 5\n")
    text = show(capsys, str(run))
    assert f"run_dir: {run}  # " in text and "seed: 5  # " in text


def test_every_config_field_has_a_description():
    from reasondistill.config import RunConfig
    from reasondistill.config_fields import sections

    missing = [f"{heading}: {key}" for heading, model in sections(RunConfig, "")
               for key, field in model.model_fields.items() if not field.description]
    assert missing == []


def test_docs_config_md_is_current(capsys):
    """docs/config.md is `reasondistill config docs`; after changing a config model, regenerate it:
    reasondistill config docs > docs/config.md"""
    from reasondistill.cli import main

    assert main(["config", "docs"]) == 0
    current = capsys.readouterr().out
    assert "| `max_per_problem` | int or null | `1` | keep at most K distinct correct traces per problem |" in current
    stored = (Path(__file__).parents[1] / "docs" / "config.md").read_text(encoding="utf-8")
    assert stored == current, "docs/config.md is stale: run `reasondistill config docs > docs/config.md`"


@pytest.mark.parametrize("teacher", ["{api_key: sk-live-REALSECRET}", "{my_token: sk-live-REALSECRET}",
                                     "{api_key_env: sk-live-REALSECRET}", "{api_key_env: [sk-live-REALSECRET]}"])
def test_a_pasted_secret_is_never_echoed(tmp_path, teacher):
    """A value under a key named like a secret (api_key, token, password...) is not shown in the error."""
    f = tmp_path / "c.yaml"
    f.write_text(f"teacher: {{kind: openai, base_url: 'http://127.0.0.1:9/v1', model: m, "
                 f"{teacher.strip('{}')}}}\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    text = str(err.value)
    assert "REALSECRET" not in text and "teacher." in text and str(f) in text
    if "api_key:" in teacher:
        assert "did you mean 'api_key_env'?" in text


def test_api_key_env_must_be_a_variable_name():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["teacher.kind=openai", "teacher.base_url=http://127.0.0.1:9/v1",
                           "teacher.api_key_env=sk-live-REALSECRET"])
    text = str(err.value)
    assert "teacher.api_key_env" in text and "looks like a key" in text and "REALSECRET" not in text
    with pytest.raises(ConfigError, match="evaluate.openai.api_key_env.*looks like a key"):
        load_config(None, ["evaluate.backend=openai", "evaluate.openai.base_url=http://127.0.0.1:9/v1",
                           "evaluate.openai.api_key_env=abc def"])
    cfg = load_config(None, ["teacher.kind=openai", "teacher.base_url=http://127.0.0.1:9/v1",
                             "teacher.api_key_env=OPENAI_API_KEY_2"])
    assert cfg.teacher.api_key_env == "OPENAI_API_KEY_2"


def test_errors_in_a_config_file_name_its_line_and_overrides_are_not_given_one(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("""run_dir: runs/x
task:
  name: gsm8k
  path: data.jsonl
  fields: {questoin: q}
teacher: {model: "bundled:tiny-arith-teacher"}
students:
  - name: s1
    init: {hidden_size: 16}
    train:
      lr: -3
""")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "line 11: students.0.train.lr: Input should be greater than 0" in text
    assert "line 5: task.fields.questoin:" in text  # through the task union's tag
    with pytest.raises(ConfigError) as err:
        load_config(path, ["students.0.train.lr=-1"])
    assert "\n  students.0.train.lr: Input should be greater than 0 (got -1)" in str(err.value)  # no line: an override


def test_an_override_fills_a_section_the_config_left_empty(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("evaluate: {backend: openai, openai: null}\n")
    cfg = load_config(path, ["evaluate.openai.base_url=http://127.0.0.1:1/v1"])
    assert cfg.evaluate.openai.base_url == "http://127.0.0.1:1/v1"
