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
                   name: str = "model", resume_key: str | None = None, show_progress: bool = False
                   ) -> dict[str, Any]:
    """Greedy-decode every problem, judge it, and return (and optionally save) the metrics.

    ``model`` is a path/hub id (loaded with its tokenizer), a loaded model plus ``tokenizer``, or
    an evaluation :class:`~reasondistill.evaluate.backends.Backend` (vLLM, an OpenAI-compatible server).
    With ``out_dir`` and ``resume_key`` (the stage's fingerprint) each completion is appended to
    ``partial.jsonl`` as its batch returns, so a run stopped part way (Ctrl-C, a server that died)
    decodes only the rest next time under the same key (greedy decoding: the same completions).
    """
    from reasondistill.evaluate.backends import Backend, collect, hf_backend

    backend = model if isinstance(model, Backend) else hf_backend(model, tokenizer)
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens, batch_size=batch_size)
    if out_dir is not None and resume_key is not None:
        outputs = _resumable(backend, problems, params, EvalFiles(out_dir).partial, resume_key, name, show_progress)
    else:
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
        out.partial.unlink(missing_ok=True)
    return metrics


def _resumable(backend, problems: list[Problem], params: SamplingParams, partial: Path, key: str, name: str,
               show_progress: bool) -> list:
    """:func:`~reasondistill.evaluate.backends.collect` through ``partial`` (a first line naming ``key``,
    then one completion per line): the completions already there under ``key`` are kept, the rest
    decoded and appended batch by batch; failed ones are not kept (the next run asks again)."""
    import json

    from reasondistill.evaluate.backends import EvaluationFailed
    from reasondistill.progress import progress_bar
    from reasondistill.records import JsonlWriter, iter_jsonl, repair_tail
    from reasondistill.teachers.sampling import Completion

    index = {p.id: i for i, p in enumerate(problems)}
    have: dict[str, dict[str, Any]] = {}
    if partial.exists():
        repair_tail(partial)
        rows = [r for _, r in iter_jsonl(partial)]
        if rows and rows[0].get("resume_key") == key:
            have = {r["problem_id"]: r for r in rows[1:] if r.get("problem_id") in index}
        else:
            partial.unlink()
    if not partial.exists():
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({"resume_key": key}) + "\n")
    todo = [p for p in problems if p.id not in have]
    failed = []
    fields = ("text", "prompt_tokens", "completion_tokens", "finish_reason", "error")
    writer = JsonlWriter(partial)
    try:
        with progress_bar(f"evaluate {name}", len(problems), show_progress, len(problems) - len(todo)) as advance:
            for batch in (backend.generate(todo, params) if todo else []):
                for c in batch:
                    if c.finish_reason == "error":
                        failed.append(c)
                    else:
                        row = {"problem_id": todo[c.index].id, **{f: getattr(c, f) for f in fields}}
                        writer.write(row)
                        have[row["problem_id"]] = row
                advance(len(batch))
    finally:
        writer.close()
    if failed:
        raise EvaluationFailed(f"{len(failed)} of {len(todo)} completions failed at {backend.label} ({backend.kind}); "
                               f"first error: {failed[0].error}. The {len(problems) - len(failed)} others are kept "
                               f"in {partial}; re-run evaluate when it answers")
    return [Completion(index=index[pid], sample=0, **{f: have[pid][f] for f in fields})
            for pid in sorted(have, key=index.__getitem__)]


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
