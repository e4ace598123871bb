"""students[].quantize: one mapping or a list, names unique, qad-only keys refused elsewhere, errors
name the field; the section never enters the student's training fingerprint."""

from __future__ import annotations

import pytest

from reasondistill.config import ConfigError, StudentConfig, load_config
from reasondistill.quantize.config import QuantizeConfig

INIT = {"hidden_size": 32}


def student(**kw):
    return StudentConfig(name="s", init=INIT, **kw)


def test_one_mapping_is_one_variant_and_names_default_to_method_and_bits():
    s = student(quantize={"method": "qad", "bits": 4})
    assert [q.label for q in s.quantize] == ["qad-int4"]
    assert s.quantize[0].defaulted("teacher") == "self" and s.quantize[0].defaulted("alpha") == 1.0
    assert student().quantize == []
    both = student(quantize=[{"method": "ptq", "bits": 8, "group_size": None}, {"method": "qat", "name": "q4"}])
    assert [q.label for q in both.quantize] == ["ptq-int8", "q4"]


@pytest.mark.parametrize("section, message", [
    ([{"method": "ptq"}, {"method": "ptq"}], "repeated: ['ptq-int4']"),
    ({"method": "qat", "teacher": "logit"}, "teacher applies to method 'qad' only"),
    ({"method": "ptq", "alpha": 0.5}, "alpha applies to method 'qad' only"),
    ({"method": "ptq", "train": {"max_steps": 3, "epochs": None}}, "train applies to methods 'qat' and 'qad'"),
    ({"bits": 1}, "greater than or equal to 2"),
    ({"method": "gptq"}, "'ptq', 'qat' or 'qad'"),
])
def test_bad_sections_are_refused_with_the_reason(section, message):
    with pytest.raises(ValueError, match=None) as err:
        student(quantize=section)
    assert message in str(err.value)


def test_a_config_file_error_names_the_field_path(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("students:\n  - name: s\n    init: {hidden_size: 32}\n    quantize: {method: qad, bitz: 4}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "students.0.quantize.0.bitz" in str(err.value) and "bits" in str(err.value)  # did you mean


def test_the_quantize_section_never_changes_the_training_fingerprint():
    from reasondistill.pipeline import _fingerprinted

    plain, quantized = student(), student(quantize=[{"method": "qad", "bits": 3}])
    assert _fingerprinted(plain) == _fingerprinted(quantized) and "quantize" not in _fingerprinted(quantized)


def test_finetune_defaults_are_short_and_low_lr():
    q = QuantizeConfig(method="qad")
    assert q.train.lr <= 1e-4 and q.train.epochs == 1.0


def test_a_dumped_config_loads_back(tmp_path):
    from reasondistill.config import RunConfig, dump_config

    cfg = RunConfig(students=[{"name": "s", "init": INIT, "quantize": [{"method": "ptq"}, {"method": "qat"},
                                                                        {"method": "qad", "alpha": 0.5}]}])
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg
    dumped = cfg.model_dump(mode="json")["students"][0]["quantize"]
    assert "train" not in dumped[0] and "teacher" not in dumped[1] and dumped[2]["alpha"] == 0.5


def test_a_partial_train_section_keeps_the_finetune_defaults():
    q = QuantizeConfig(method="qat", train={"max_steps": 5, "batch_size": 8})
    assert q.train.max_steps == 5 and q.train.lr == 1e-4 and q.train.warmup_ratio == 0.0
    assert QuantizeConfig(method="qat", train={"lr": 3e-4}).train.lr == 3e-4
