"""A run directory with every evaluation output, written from scripted rows (no model, no training):
what the report and its browser test need, built in well under a second."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

from reasondistill.config import RunConfig
from reasondistill.evaluate.accuracy import summarize
from reasondistill.evaluate.compare_models import compare_to_teacher
from reasondistill.evaluate.router import route_student
from reasondistill.evaluate.sampled import summarize_sampled
from reasondistill.evaluate.metrics import plot_reliability
from reasondistill.records import write_json, write_records
from reasondistill.tasks.arith import ChainedArithmetic

_spec = importlib.util.spec_from_file_location("scripted", Path(__file__).parents[1] / "evaluate/scripted.py")
scripted = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scripted)


def make_fake_run(root: Path, n: int = 40) -> RunConfig:
    task = ChainedArithmetic(3, 5)
    problems = task.problems("test", n, seed=0)
    rng = random.Random(0)
    hard = {p.id for p in problems if p.difficulty == 5 and rng.random() < 0.7}
    slip = {p.id for p in problems if p.id not in hard and rng.random() < 0.1}
    cut = {problems[0].id} - hard - slip
    rows = {"teacher": scripted.solved_rows(problems, wrong={problems[1].id}),
            "student": scripted.solved_rows(problems, step_error=hard, wrong=slip, truncated=cut)}
    write_records(root / "problems/test.jsonl", problems)
    for name, rs in rows.items():
        d = root / "evaluate" / name
        write_records(d / "completions.jsonl", rs)
        write_json(d / "metrics.json", {**summarize(rs), "name": name, "decoding": "greedy", "max_new_tokens": 96})
        samples = []
        for r in rs:
            for s in range(4):
                flip = r["verdict"] == "correct" and rng.random() < (0.3 if name == "student" else 0.05)
                ok = r["verdict"] == "correct" and not flip
                ans = r["reference"] if ok else str((int(r["reference"]) + 1 + (s % 2)) % 100)
                samples.append({"problem_id": r["problem_id"], "sample": s, "difficulty": r["difficulty"],
                                "thinking_tokens": 20 + r["difficulty"] * 9 + s, "answer_tokens": 3,
                                "completion_tokens": 23 + r["difficulty"] * 9 + s, "finish_reason": "stop",
                                "verdict": "correct" if ok else "wrong", "predicted": ans})
        res = summarize_sampled(samples, problems, task, ks=[1, 4], n_boot=100)
        plot_reliability(res["calibration"]["bins"], d / "reliability.png", title=f"{name}: vote confidence")
        res["provenance"] = {"model": f"scripted:{name}", "model_sha256": None}
        write_records(d / "samples.jsonl", samples)
        write_json(d / "sampled.json", res)
        write_json(d / "budget.json", {"name": name, "points": [
            {"budget": b, "accuracy": {"value": v, "ci_low": max(0, v - 0.1), "ci_high": min(1, v + 0.1), "n": n},
             "mean_thinking_tokens": b, "forced_share": 1.0, "truncation_rate": 0.0}
            for b, v in zip([8, 16, 32, 64], [0.1, 0.4, 0.7, 0.8] if name == "student" else [0.2, 0.6, 0.9, 0.97])]})
    compare_to_teacher(rows["student"], rows["teacher"], problems, task,
                       student_samples=[obj for obj in _read(root / "evaluate/student/samples.jsonl")],
                       out_dir=root / "evaluate/student", name="student", n_boot=100)
    route_student(_read(root / "evaluate/student/samples.jsonl"), rows["teacher"], problems, task, k=4,
                  out_dir=root / "evaluate/student", name="student")
    t = root / "train/student"
    t.mkdir(parents=True, exist_ok=True)
    (t / "metrics.csv").write_text("step,train_loss,val_loss\n" + "".join(
        f"{s},{2.0 / s:.4f},{(2.2 / s + 0.05):.4f}\n" for s in range(1, 21)))
    write_json(t / "summary.json", {"final_val_loss": 0.16, "steps": 20, "epochs": 1, "wall_time_s": 3.0,
                                    "params": 4288, "train_examples": 36})
    return RunConfig.model_validate({"run_dir": str(root), "task": {"min_ops": 3, "max_ops": 5},
                                     "students": [{"name": "student", "init": {}}]})


def _read(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
