"""The pipeline's problems stage with a file task: composition written, re-run when the data changes."""

import json

import pytest

from reasondistill.config import RunConfig
from reasondistill.pipeline import Pipeline
from reasondistill.records import Problem, RecordError, read_records


def rows(k):
    return "".join(json.dumps({"question": f"Sam has {i} pens and gets {k}. How many?",
                               "answer": f"{i}+{k}={i + k}\n#### {i + k}"}) + "\n" for i in range(40))


def test_file_task_problems_stage(tmp_path):
    data = tmp_path / "gsm.jsonl"
    data.write_text(rows(3))
    cfg = RunConfig.model_validate({"run_dir": str(tmp_path / "run"),
                                    "task": {"name": "gsm8k", "path": str(data), "n_train": 10, "test_fraction": 0.2}})
    logs = []
    pipe = Pipeline(cfg, log=logs.append, show_progress=False)
    stats = pipe.problems()
    test_n = len(pipe.task.problems("test", None, 0))
    assert stats["train"] == 10 and stats["test"] == test_n > 0
    comp = json.loads((tmp_path / "run/problems/composition.json").read_text())
    assert comp["train"] == {"split": "train", "requested": 10, "total": 10, "sources": {"gsm8k": 10}}
    assert comp["test"]["requested"] is None and comp["test"]["sources"] == {"gsm8k": test_n}
    first = read_records(tmp_path / "run/problems/train.jsonl", Problem)
    assert all(p.answer == str(int(p.prompt.split()[2]) + 3) for p in first)

    n = len(logs)
    Pipeline(cfg, log=logs.append, show_progress=False).problems()
    assert any("[skip] problems" in m for m in logs[n:])
    pipe.problems()  # the same pipeline again (as evaluate after generate): checked, not said twice
    assert not any("[skip] problems" in m for m in logs[n + 1:])
    data.write_text(rows(5))  # same questions' ids change with the text: the stage must re-run
    again = Pipeline(cfg, log=logs.append, show_progress=False)
    again.problems()
    second = read_records(tmp_path / "run/problems/train.jsonl", Problem)
    assert all(p.answer == str(int(p.prompt.split()[2]) + 5) for p in second)


def test_skipped_rows_and_repeats_are_recorded_and_printed_once(tmp_path):
    lines = rows(3).splitlines(keepends=True)
    lines[6] = lines[6].rstrip("\n")[:-1] + "\n"  # line 7: the closing brace is missing
    lines[9] = json.dumps({"question": "No answer here"}) + "\n"
    lines[12] = lines[11]  # a repeated question is kept once
    data, test = tmp_path / "badjson.jsonl", tmp_path / "test.jsonl"
    data.write_text("".join(lines))
    test.write_text(rows(4))
    cfg = RunConfig.model_validate({"run_dir": str(tmp_path / "run"), "task": {
        "name": "gsm8k", "train_path": str(data), "test_path": str(test), "skip_bad_rows": True}})
    logs = []
    stats = Pipeline(cfg, log=logs.append, show_progress=False).problems()
    assert stats["train"] == 37
    comp = json.loads((tmp_path / "run/problems/composition.json").read_text())
    skipped = comp["train"]["skipped"]["gsm8k"]
    assert skipped["bad_rows"] == 2 and skipped["repeated_questions"] == 1
    assert skipped["first_bad_rows"][0].startswith(f"{data}:7: not valid JSON")
    assert skipped["first_bad_rows"][1].startswith(f"{data}:10: field 'answer'")
    assert "skipped" not in comp["test"]
    said = [m for m in logs if "skipped 2 malformed rows" in m]
    assert len(said) == 1 and f"{data}:7" in said[0] and "1 repeated question" in said[0]
    Pipeline(cfg, log=logs.append, show_progress=False).problems()  # current: nothing new printed
    assert len([m for m in logs if "skipped 2 malformed rows" in m]) == 1


def test_a_mixture_source_short_of_its_share_is_warned_about(tmp_path):
    big, one = tmp_path / "big.jsonl", tmp_path / "one.jsonl"
    big.write_text(rows(3))
    one.write_text(rows(5).splitlines(keepends=True)[0])
    sources = [{"name": "gsm8k", "label": "big", "train_path": str(big), "test_path": str(big), "ratio": 0.5},
               {"name": "gsm8k", "label": "tiny", "train_path": str(one), "test_path": str(one), "ratio": 0.5}]
    cfg = RunConfig.model_validate({"run_dir": str(tmp_path / "run"), "task": {
        "name": "mixture", "sources": sources, "n_train": 10, "n_test": 4}})
    logs = []
    stats = Pipeline(cfg, log=logs.append, show_progress=False).problems()
    assert stats["test"] == 3
    warned = [m for m in logs if "warning" in m and "tiny" in m]
    assert len(warned) == 2 and any("test: 1 of the 2 wanted" in m for m in warned), logs


def test_an_empty_train_split_stops_the_problems_stage_with_its_reason(tmp_path):
    """Not a later "generate/traces.jsonl not found": the problems stage says the split is empty and why."""
    data = tmp_path / "gsm.jsonl"
    data.write_text("".join(rows(3).splitlines(keepends=True)[:8]))
    cfg = RunConfig.model_validate({"run_dir": str(tmp_path / "run"),
                                    "task": {"name": "gsm8k", "path": str(data), "test_fraction": 0.99}})
    with pytest.raises(RecordError, match=r"the train split is empty \(0 of 8 rows; task.test_fraction=0.99"):
        Pipeline(cfg, log=lambda m: None, show_progress=False).problems()
    assert not (tmp_path / "run/problems/train.jsonl").exists()
