"""The pipeline's problems stage with a file task: composition written, re-run when the data changes."""

import json

from reasondistill.config import RunConfig
from reasondistill.pipeline import Pipeline
from reasondistill.records import Problem, read_records


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

    pipe.problems()
    assert any("[skip] problems" in m for m in logs)
    data.write_text(rows(5))  # same questions' ids change with the text: the stage must re-run
    again = Pipeline(cfg, log=logs.append, show_progress=False)
    again.problems()
    second = read_records(tmp_path / "run/problems/train.jsonl", Problem)
    assert all(p.answer == str(int(p.prompt.split()[2]) + 5) for p in second)
