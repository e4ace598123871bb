"""Greedy, batched evaluation of a model on held-out problems, verified by the task.

Why: the number a user compares is accuracy on problems training never saw, decoded the same way
for every model (teacher and students alike), with every completion and verdict saved so that a
number can always be traced back to the outputs behind it.

    result = evaluate_model("runs/demo/train/student_traces/final", problems, task, out_dir="...")
    result["accuracy"], result["n"], result["mean_output_tokens"], result["truncation_rate"]
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from reasondistill.curate.verdicts import judge_many, verdict_counts
from reasondistill.layout import EvalFiles
from reasondistill.records import Problem, write_json, write_records
from reasondistill.checks import Task
from reasondistill.teachers.sampling import SamplingParams
from reasondistill.thinking import split_thinking


def evaluate_model(model: Any, problems: list[Problem], task: Task, *, batch_size: int = 128,
                   max_new_tokens: int = 256, out_dir: str | Path | None = None, tokenizer=None,
                   name: str = "model") -> dict[str, Any]:
    """Greedy-decode every problem, judge it, and return (and optionally save) the metrics.

    ``model`` is a path/hub id (loaded with its tokenizer), a loaded model plus ``tokenizer``, or
    an evaluation :class:`~reasondistill.evaluate.backends.Backend` (vLLM, an OpenAI-compatible server).
    """
    from reasondistill.evaluate.backends import Backend, collect, hf_backend

    backend = model if isinstance(model, Backend) else hf_backend(model, tokenizer)
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens, batch_size=batch_size)
    outputs = collect(backend, problems, params)
    verdicts = judge_many(task, [(problems[c.index], c.text, c.finish_reason, 0) for c in outputs])
    done = []
    for c, v in zip(outputs, verdicts, strict=True):
        p = problems[c.index]
        thinking, answer, _ = split_thinking(c.text)
        done.append({"problem_id": p.id, "difficulty": p.difficulty, "prompt": p.prompt,
                     "reference": p.answer, "text": c.text, "answer": answer,
                     "thinking_chars": len(thinking), "prompt_tokens": c.prompt_tokens,
                     "completion_tokens": c.completion_tokens,
                     "finish_reason": c.finish_reason, "verdict": v.verdict, "reason": c.error or v.reason,
                     "predicted": v.predicted})
    metrics = summarize(done)
    metrics.update({"name": name, "decoding": "greedy", "max_new_tokens": max_new_tokens})
    if backend.kind != "hf":
        metrics["backend"] = backend.describe()
        if backend.usage() is not None:
            metrics["api_usage"] = backend.usage()  # requests, retries and tokens this evaluation cost
    if out_dir is not None:
        out = EvalFiles(out_dir)
        write_records(out.completions, done)
        write_json(out.metrics, metrics)
    return metrics


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    counts = Counter(r["verdict"] for r in rows)
    detail = verdict_counts(rows)  # unparseable reasons; time-outs apart from wrong answers
    by_diff: dict[int, list[int]] = {}
    for r in rows:
        by_diff.setdefault(r["difficulty"], []).append(r["verdict"] == "correct")
    return {
        "n": n,
        "accuracy": counts["correct"] / n if n else float("nan"),
        "correct": counts["correct"],
        "verdicts": dict(counts),
        "unparseable_reasons": detail["unparseable_reasons"],
        "timeouts": detail["timeouts"],
        "mean_output_tokens": sum(r["completion_tokens"] for r in rows) / n if n else float("nan"),
        "truncation_rate": counts["truncated"] / n if n else float("nan"),
        "accuracy_by_difficulty": {str(k): sum(v) / len(v) for k, v in sorted(by_diff.items())},
    }
