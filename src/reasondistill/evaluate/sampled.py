"""Sampled evaluation: n samples per problem → pass@k, maj@k, avg@n (each with a 95% bootstrap CI),
lengths of thinking and answer, truncation and no-answer shares, calibration of the vote.

Why: greedy accuracy says what a model does once; n samples say how often it *can* solve a problem
(pass@k, unbiased estimator), how much self-consistency helps (maj@k, a vote over answers the task
verifies equal) and how reliable its own agreement is as a confidence (ECE). Every number is stored
with what determines it (prompt template, system prompt, sampling parameters, seeds, batch size,
sha256 of model.safetensors) so it can be reproduced or told apart from a run that differs.

    res = evaluate_sampled("runs/demo/train/s1/final", problems, task, samples=8, k=[1, 4, 8],
                           temperature=0.7, out_dir="runs/demo/evaluate/s1")
    res["pass@k"]["4"] == {"value", "ci_low", "ci_high", "n"}

Token counts: ``thinking_tokens`` is the length of the decoded text up to and including ``</think>``
re-encoded with the model's tokenizer; ``answer_tokens`` is the rest of ``completion_tokens`` (so
it includes the EOS token). A completion whose think block is never closed is all thinking.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from reasondistill.curate.verdicts import judge_many
from reasondistill.evaluate.metrics import (Judge, Same, correct_by_problem, expected_calibration_error,
                                            fraction_correct, judged_votes, pass_at_k_per_problem, plot_reliability,
                                            reliability_bins, vote_outcomes, with_ci)
from reasondistill.layout import EvalFiles
from reasondistill.prompts import render_prompts
from reasondistill.records import CheckVerdict, Problem, file_sha256, write_json, write_records
from reasondistill.checks import Task
from reasondistill.teachers.sampling import SamplingParams, generate_completions
from reasondistill.thinking import CLOSE, OPEN, split_thinking
from reasondistill.verify.checker import check_answers

READABLE: tuple[CheckVerdict, ...] = ("correct", "wrong")  # verdicts whose ``predicted`` answer takes part in a vote


def model_file_hash(path: str | Path | None) -> str | None:
    """sha256 of ``model.safetensors`` in a local model directory (None for a hub id or a model object)."""
    if path is None:
        return None
    from reasondistill.models import resolve

    f = Path(resolve(str(path))) / "model.safetensors"
    if not f.is_file():
        return None
    return file_sha256(f)


def provenance(model_path: str | Path | None, tokenizer, params: SamplingParams,
               system_prompt: str | None, **extra: Any) -> dict[str, Any]:
    """Everything that determines a result besides the problems themselves."""
    return {"model": None if model_path is None else str(model_path), "model_sha256": model_file_hash(model_path),
            "prompt_template": getattr(tokenizer, "chat_template", None), "system_prompt": system_prompt,
            "sampling": params.model_dump(), "max_new_tokens": params.max_new_tokens,
            "seed": params.seed, "batch_size": params.batch_size, **extra}


def split_tokens(tokenizer, text: str, completion_tokens: int) -> tuple[int, int]:
    """(thinking tokens, answer tokens) of one completion; see the module docstring. Without a
    tokenizer (a served model whose tokenizer is not local) the split is in proportion to characters."""
    stripped = text.lstrip()
    if CLOSE in stripped:
        head = stripped[: stripped.index(CLOSE) + len(CLOSE)]
        thinking = (len(tokenizer(head, add_special_tokens=False)["input_ids"]) if tokenizer is not None
                    else round(completion_tokens * len(head) / max(1, len(stripped))))
    elif OPEN in stripped:
        thinking = completion_tokens
    else:
        thinking = 0
    thinking = min(thinking, completion_tokens)
    return thinking, completion_tokens - thinking


def load(model: Any, tokenizer=None):
    """(model, tokenizer, path or None) from a path / hub id, or a loaded model plus its tokenizer
    (an evaluation Backend is passed through with its tokenizer)."""
    from reasondistill.evaluate.backends import Backend
    from reasondistill.models import load_model, load_tokenizer

    if isinstance(model, Backend):
        return model, model.tokenizer, (model.label if model.kind == "hf" else None)
    if isinstance(model, (str, Path)):
        return load_model(str(model)), tokenizer or load_tokenizer(str(model)), str(model)
    if tokenizer is None:
        raise ValueError("a loaded model needs its tokenizer")
    return model, tokenizer, None


def completion_rows(model, tokenizer, problems: Sequence[Problem], task: Task, params: SamplingParams,
                    system_prompt: str | None = None, generate: Callable | None = None) -> list[dict[str, Any]]:
    """Decode ``params.n`` completions per problem and judge each: one row per (problem, sample).
    ``model`` may be an evaluation Backend (evaluate/backends.py; then ``generate`` is not used)."""
    from reasondistill.evaluate.backends import Backend, collect

    if isinstance(model, Backend):
        outputs = collect(model, problems, params, system_prompt)
    else:
        prompts = render_prompts(tokenizer, [p.prompt for p in problems], system=system_prompt)
        outputs = [c for batch in (generate or generate_completions)(model, tokenizer, prompts,
                                                                     [p.id for p in problems], params) for c in batch]
    verdicts = judge_many(task, [(problems[c.index], c.text, c.finish_reason, c.sample) for c in outputs])
    rows: list[dict[str, Any]] = []
    for c, v in zip(outputs, verdicts, strict=True):
        p = problems[c.index]
        thinking, answer, _ = split_thinking(c.text)
        t_tok, a_tok = split_tokens(tokenizer, c.text, c.completion_tokens)
        rows.append({"problem_id": p.id, "sample": c.sample, "difficulty": p.difficulty, "text": c.text,
                     "thinking": thinking, "answer": answer, "thinking_tokens": t_tok, "answer_tokens": a_tok,
                     "completion_tokens": c.completion_tokens, "finish_reason": c.finish_reason,
                     "verdict": v.verdict, "reason": v.reason, "predicted": v.predicted})
    order = {p.id: i for i, p in enumerate(problems)}
    rows.sort(key=lambda r: (order[r["problem_id"]], r["sample"]))
    return rows


def verifier_checks(task: Task, problems: Mapping[str, Problem]) -> tuple[Judge, Same]:
    """The task's verifier as the batch checks votes take (:data:`~reasondistill.evaluate.metrics.Judge`,
    :data:`~reasondistill.evaluate.metrics.Same`): an answer is correct when the task accepts it
    against the problem's reference, and two answers are equal when the task accepts one as the
    reference for the other."""
    def judge(items: list[tuple[str, str]]) -> list[bool]:
        return [c.verdict == "correct" for c in check_answers(task, [(problems[pid], a) for pid, a in items])]

    def same(items: list[tuple[str, str, str]]) -> list[bool]:
        pairs = [(dataclasses.replace(problems[pid], answer=a), b) for pid, a, b in items]
        return [c.verdict == "correct" for c in check_answers(task, pairs)]
    return judge, same


def ballots(rows: Sequence[dict[str, Any]], problems: Sequence[Problem]) -> dict[str, list[str | None]]:
    """Per problem with samples, in the order of ``problems``: its answers in sample order (None
    for a sample whose verdict is not readable)."""
    by_pid: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_pid.setdefault(r["problem_id"], []).append(r)
    out = {}
    for p in problems:
        samples = sorted(by_pid.get(p.id, []), key=lambda r: r["sample"])
        if samples:
            out[p.id] = [r["predicted"] if r["verdict"] in READABLE else None for r in samples]
    return out


def vote_table(rows: Sequence[dict[str, Any]], problems: Sequence[Problem], task: Task,
               k: int | None = None) -> dict[str, dict[str, Any]]:
    """Per problem: the vote over its first ``k`` samples (answers only from readable verdicts),
    whether the voted answer is correct, and its share (the confidence used for calibration)."""
    by_id = {p.id: p for p in problems}
    judge, same = verifier_checks(task, by_id)
    judged = judged_votes(ballots(rows, problems), judge, k, same)
    return {pid: {"difficulty": by_id[pid].difficulty, "answer": vote.answer, "votes": vote.votes,
                  "share": vote.share, "n": vote.n, "correct": ok} for pid, (vote, ok) in judged.items()}


def _mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


def summarize_sampled(rows: Sequence[dict[str, Any]], problems: Sequence[Problem], task: Task,
                      ks: Sequence[int], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """pass@k, maj@k, avg@n (with CIs over problems), lengths, truncation/no-answer shares, calibration."""
    by_pid = correct_by_problem(rows)
    n_per = sorted({len(v) for v in by_pid.values()})
    if len(n_per) > 1:
        raise ValueError(f"sampled evaluation: problems have different sample counts {n_per}")
    n = n_per[0] if n_per else 0
    counts = [(len(v), sum(v)) for v in by_pid.values()]
    ci = dict(n_boot=n_boot, seed=seed)
    answers = ballots(rows, problems)
    judge, same = verifier_checks(task, {p.id: p for p in problems})
    out: dict[str, Any] = {"samples": n, "problems": len(by_pid), "pass@k": {}, "maj@k": {}}
    for k in ks:
        if not 1 <= k <= n:
            raise ValueError(f"k={k} needs 1 <= k <= samples={n}")
        out["pass@k"][str(k)] = with_ci(pass_at_k_per_problem(counts, k), **ci)
        out["maj@k"][str(k)] = with_ci(vote_outcomes(answers, judge, k, same)[0], **ci)
    out["avg@n"] = with_ci(fraction_correct(by_pid.values()), **ci)
    thinking = [r["thinking_tokens"] for r in rows]
    answer = [r["answer_tokens"] for r in rows]
    out["lengths"] = {"mean_thinking_tokens": _mean(thinking), "mean_answer_tokens": _mean(answer),
                      "median_thinking_tokens": float(np.median(thinking)) if thinking else float("nan"),
                      "median_answer_tokens": float(np.median(answer)) if answer else float("nan")}
    out["truncation_rate"] = _mean([r["finish_reason"] == "length" for r in rows])
    out["no_answer_rate"] = _mean([r["verdict"] not in READABLE for r in rows])
    correct, conf = vote_outcomes(answers, judge, None, same)
    bins = reliability_bins(conf, correct) if conf.size else []
    out["calibration"] = {"k": n, "confidence": "share of the samples agreeing with the vote",
                          "ece": expected_calibration_error(conf, correct) if conf.size else float("nan"), "bins": bins}
    difficulty = {p.id: p.difficulty for p in problems}
    by_diff: dict[int, list[float]] = {}
    for pid, v in by_pid.items():
        by_diff.setdefault(difficulty[pid], []).append(float(np.mean(v)))
    out["avg@n_by_difficulty"] = {str(d): _mean(v) for d, v in sorted(by_diff.items())}
    return out


def evaluate_sampled(model: Any, problems: Sequence[Problem], task: Task, *, samples: int, k: Sequence[int] = (1,),
                     temperature: float = 0.7, top_p: float = 1.0, max_new_tokens: int = 256, batch_size: int = 64,
                     seed: int = 0, system_prompt: str | None = None, tokenizer=None,
                     out_dir: str | Path | None = None, name: str = "model", n_boot: int = 1000) -> dict[str, Any]:
    """Sample every problem ``samples`` times, judge, summarise; optionally save ``samples.jsonl``,
    ``sampled.json`` and ``reliability.png`` in ``out_dir``. ``model``: as :func:`load` takes it."""
    from reasondistill.evaluate.backends import Backend

    model, tokenizer, path = load(model, tokenizer)
    params = SamplingParams(n=samples, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                            batch_size=batch_size, seed=seed)
    rows = completion_rows(model, tokenizer, problems, task, params, system_prompt)
    extra = {}
    if isinstance(model, Backend) and model.kind != "hf":  # vLLM or a server
        extra = {"backend": model.describe(), **({"api_usage": model.usage()} if model.usage() is not None else {})}
    result = {"name": name, "decoding": "sampled", **summarize_sampled(rows, problems, task, k, n_boot=n_boot, seed=seed),
              "provenance": provenance(path, tokenizer, params, system_prompt, bootstrap={"n_boot": n_boot, "seed": seed,
                                                                                           "level": 0.95}, **extra)}
    if out_dir is not None:
        out = EvalFiles(out_dir)
        write_records(out.samples, rows)
        if result["calibration"]["bins"]:
            plot_reliability(result["calibration"]["bins"], out.reliability, title=f"{name}: vote confidence")
            result["reliability_png"] = out.reliability.name
        write_json(out.sampled, result)
    return result
