"""Preference pairs for DPO, built by the pipeline: chosen = a verified teacher trace, rejected = the
student's own wrong, unparseable or truncated answer to the same problem (DistiLLM-2 style).

Why: a pair says exactly what the student gets wrong where the teacher is right. Pairs are built once
from the START student (its samples are seeded per problem, teachers/sampling.py) and written to
``pairs.jsonl`` in the student's training directory; a resumed run reads them back, so it trains on
the same pairs whatever the weights it resumed.

    pairs = build_pairs(model, tokenizer, task, problems, traces, n_problems=256, samples=4, ...)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from reasondistill.curate.verdicts import judge_many
from reasondistill.prompts import render_prompts
from reasondistill.records import Problem, Trace
from reasondistill.thinking import format_target


def build_pairs(model, tokenizer, task, problems: dict[str, Problem], traces: Sequence[Trace], *, n_problems: int,
                samples: int, temperature: float, max_new_tokens: int, seed: int, engine=None,
                think_tags: bool = True) -> list[dict[str, Any]]:
    """One pair per problem (at most ``n_problems``, in trace order) where one of the student's
    ``samples`` rollouts is not correct; the first such rollout is the rejected completion."""
    from reasondistill.teachers.sampling import row_key
    from reasondistill.train.rollout import HFRollout

    engine = engine or HFRollout(model, tokenizer)
    chosen: dict[str, Trace] = {}
    for tr in traces:
        if tr.problem_id in problems and tr.problem_id not in chosen:
            chosen[tr.problem_id] = tr
        if len(chosen) >= n_problems:
            break
    ids = list(chosen)
    prompt_ids = tokenizer(render_prompts(tokenizer, [problems[i].prompt for i in ids]),
                           add_special_tokens=False)["input_ids"]
    rows = [(j, s) for j in range(len(ids)) for s in range(samples)]
    rolls = engine.generate([prompt_ids[j] for j, _ in rows], [row_key(seed, f"dpo:{ids[j]}", s) for j, s in rows],
                            temperature, max_new_tokens)
    verdicts = judge_many(task, [(problems[ids[j]], r.text, r.finish_reason, s) for (j, s), r in zip(rows, rolls)])
    eos = tokenizer.eos_token_id
    pairs, done = [], set()
    for (j, _), r, v in zip(rows, rolls, verdicts):
        if j in done or v.verdict == "correct":
            continue
        done.add(j)
        tr = chosen[ids[j]]
        target = format_target(tr.thinking, tr.answer, think_tags)
        pairs.append({"problem_id": ids[j], "prompt_ids": prompt_ids[j],
                      "chosen_ids": tokenizer(target, add_special_tokens=False)["input_ids"] + [eos],
                      "rejected_ids": r.completion, "rejected_verdict": v.verdict})
    return pairs


def write_pairs(path: Path, pairs: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    tmp.replace(path)


def read_pairs(path: Path) -> list[dict[str, Any]]:
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            out.append(json.loads(line))
        except ValueError as exc:
            raise ValueError(f"{path}:{n}: not a JSON pair ({exc}); delete the file to rebuild the pairs") from None
    return out
