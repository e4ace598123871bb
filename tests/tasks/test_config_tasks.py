"""The ``task:`` config section: one model per task kind, errors that name the field."""

from pathlib import Path

import pytest
import yaml

from reasondistill.config import demo_config_path
from reasondistill.config import ConfigError, RunConfig, dump_config, load_config
from reasondistill.tasks.base import load_task

REPO = Path(__file__).resolve().parents[2]


def load(tmp_path, data):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(data))
    return load_config(f)


def error(tmp_path, data) -> str:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, data)
    return str(err.value)


def test_demo_task_is_unchanged():
    cfg = load_config(demo_config_path())
    assert cfg.task.model_dump(mode="json") == {"name": "chained_arith", "min_ops": 3, "max_ops": 5,
                                                "n_train": 16000, "n_test": 400}  # no new keys: old fingerprints hold
    assert RunConfig.model_validate({"task": {"min_ops": 2, "max_ops": 3}}).task.name == "chained_arith"


def test_example_gsm8k_config_loads():
    cfg = load_config(REPO / "configs/gsm8k_openai.yaml")
    assert cfg.task.name == "gsm8k" and cfg.teacher.kind == "openai" and cfg.task.strategy
    task = load_task(cfg.task.task_spec())
    assert task.name == "gsm8k" and task.strategy == cfg.task.strategy
    assert load_config(None, []).task.name == "chained_arith"
    again = RunConfig.model_validate(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


@pytest.mark.parametrize("task, field, words", [
    ({"name": "gsm8k", "path": "x.jsonl", "fields": {"question": 3}}, "task.fields.question", "valid string"),
    ({"name": "math", "path": "x.jsonl", "fields": {"choices": "c"}}, "task.fields.choices", "Extra inputs"),
    ({"name": "choice", "path": "x", "n_train": 0}, "task.n_train", "greater than 0"),
    ({"name": "gsm8k"}, "task:", "exactly one of 'path'"),
    ({"name": "gsm8k", "path": "a", "train_path": "b"}, "task:", "exactly one of 'path'"),
    ({"name": "file", "path": "a", "template": "no slot"}, "task:", "{question}"),
    ({"name": "gsmk8", "path": "a"}, "task:", "unknown task"),
    ({"name": "mixture", "sources": [{"name": "math", "path": "a", "ratio": 0}]}, "task.sources.0.ratio",
     "greater than 0"),
    ({"name": "mixture", "sources": [{"name": "math", "path": "a", "fieldz": 1}]}, "task.sources.0.fieldz", "Extra"),
    ({"name": "mixture", "sources": [{"name": "math", "path": "a"}, {"name": "math", "path": "b"}]},
     "task:", "labels must be unique"),
    ({"name": "mixture", "sources": [{"name": "math", "path": "a", "n_train": 5}]}, "task.sources.0", "use 'cap'"),
    ({"name": "mixture", "sources": [{"name": "math", "path": "a"}, {"name": "chained_arith", "n_test": 2}]},
     "task.sources.1", "use 'cap'"),
    ({"name": "mixture", "sources": [{"name": "chained_arith", "n_train": 3}]}, "task.sources.0", "use 'cap'"),
    ({"name": "mixture", "sources": [{"name": "mixture", "sources": []}]}, "task.sources.0",
     "cannot contain a mixture"),
])
def test_bad_task_sections_name_the_field(tmp_path, task, field, words):
    msg = error(tmp_path, {"task": task})
    assert field in msg and words in msg, msg


def test_ood_needs_the_arithmetic_task(tmp_path):
    msg = error(tmp_path, {"task": {"name": "gsm8k", "path": "a"}, "evaluate": {"ood": {"min_ops": 6, "max_ops": 7}}})
    assert "evaluate.ood" in msg and "'chained_arith' only" in msg
    ok = load(tmp_path, {"task": {"name": "chained_arith", "max_ops": 5},
                         "evaluate": {"ood": {"min_ops": 6, "max_ops": 7}}})
    assert ok.evaluate.ood.min_ops == 6
    assert "must exceed task.max_ops" in error(
        tmp_path, {"task": {"max_ops": 5}, "evaluate": {"ood": {"min_ops": 5, "max_ops": 7}}})


def test_mixture_section_round_trips_flat(tmp_path):
    cfg = load(tmp_path, {"task": {"name": "mixture", "n_train": 10, "sources": [
        {"name": "gsm8k", "path": "g.jsonl", "ratio": 3, "cap": 5, "strategy": "Think."},
        {"name": "file", "label": "qa", "path": "q.csv", "fields": {"question": "q", "answer": "a"}}]}})
    dumped = yaml.safe_load(dump_config(cfg))["task"]["sources"]
    assert dumped[0]["name"] == "gsm8k" and dumped[0]["ratio"] == 3 and dumped[0]["cap"] == 5
    assert "task" not in dumped[0] and dumped[1]["label"] == "qa"
    assert RunConfig.model_validate({"task": yaml.safe_load(dump_config(cfg))["task"]}).task == cfg.task
    spec = cfg.task.task_spec()
    assert [s["label"] for s in spec["sources"]] == ["gsm8k", "qa"]
    mix = load_task(spec)
    assert [label for label, *_ in mix.sources] == ["gsm8k", "qa"] and mix.by_label["gsm8k"].strategy == "Think."


def test_a_mixture_with_the_generated_task_round_trips(tmp_path):
    """A saved config.yaml writes chained_arith's default n_train/n_test out: reading it back is no error."""
    cfg = load(tmp_path, {"task": {"name": "mixture", "sources": [{"name": "chained_arith", "min_ops": 2}]}})
    again = RunConfig.model_validate({"task": yaml.safe_load(dump_config(cfg))["task"]})
    assert again.task == cfg.task


def test_overrides_reach_task_fields(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"task": {"name": "file", "path": "a.jsonl"}}))
    cfg = load_config(f, ["task.fields.question=prompt", "task.n_test=3"])
    assert cfg.task.fields.question == "prompt" and cfg.task.n_test == 3
