import re
from pathlib import Path

import pytest

from reasondistill.cli import demo_config_path
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
    ("generate.tempreature=1", "generate.tempreature: Extra inputs are not permitted (got 1); did you mean 'temperature'?"),
    ("students.student_kd.distill.alhpa=0.3", "did you mean 'alpha'?"),
    ("students.0.trian.lr=1", "students.0.trian: Extra inputs are not permitted; did you mean 'train'?"),
    ("seeed=3", "did you mean 'seed'?"),
    ("task={name: gsm8k, path: x.jsonl, fields: {questoin: q}}", "task.fields.questoin"),
])
def test_misspelled_key_in_an_override_gets_a_hint(override, hint):
    with pytest.raises(ConfigError) as err:
        load_config(demo_config_path(), [override])
    assert hint in str(err.value)
    if override.startswith("task"):
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


def test_every_config_field_has_a_description():
    from reasondistill.config import RunConfig
    from reasondistill.config_fields import sections

    missing = [f"{heading}: {key}" for heading, model in sections(RunConfig, "")
               for key, field in model.model_fields.items() if not field.description]
    assert missing == []

