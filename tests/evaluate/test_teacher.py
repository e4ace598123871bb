"""The bundled demo teacher is what the README says it is: accurate on held-out problems."""

import json

from reasondistill.evaluate.accuracy import evaluate_model
from reasondistill.models import resolve
from reasondistill.tasks.arith import ChainedArithmetic


def test_bundled_teacher_accuracy_on_heldout_problems(tmp_path):
    path = resolve("bundled:tiny-arith-teacher")
    task = ChainedArithmetic(min_ops=3, max_ops=5)  # the demo's difficulty range
    problems = task.problems("test", 300, seed=12345)  # held out by construction, unseen seed
    m = evaluate_model(path, problems, task, batch_size=300, max_new_tokens=96, out_dir=tmp_path)
    assert m["n"] == 300
    assert m["accuracy"] >= 0.95, m
    assert m["truncation_rate"] == 0
    rows = [json.loads(line) for line in (tmp_path / "completions.jsonl").read_text().splitlines()]
    assert all(r["text"].startswith("<think>") for r in rows)
    info = json.loads(open(f"{path}/TRAINING.json").read())
    assert info["script"] == "scripts/train_tiny_teacher.py" and info["heldout_accuracy_500"] >= 0.95
