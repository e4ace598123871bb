"""Build: chat template, think tags, tokenise once, answer-only loss mask, length filter, split.

Why: tokenising is done once, here, and saved; training only reads integer arrays. The loss mask
is implicit and exact: every example stores where its prompt ends, and only the tokens after it
(the completion and its EOS) are trained on. The validation split is by problem, so the same
problem never sits on both sides.

    stats = build_dataset(examples, tokenizer, out_dir, max_length=256, val_fraction=0.05, seed=0)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from reasondistill.layout import BuildFiles
from reasondistill.prompts import render_prompts
from reasondistill.records import Problem, Trace, write_json
from reasondistill.thinking import format_target

TARGETS = ("traces", "answers_only")


@dataclass
class Example:
    problem_id: str
    prompt: str
    completion: str


def make_examples(problems: dict[str, Problem], traces: Iterable[Trace], target: str,
                  think_tags: bool = True) -> list[Example]:
    """One example per distinct (problem, completion); ``target`` picks what the student sees."""
    if target not in TARGETS:
        raise ValueError(f"build target must be one of {TARGETS}, got {target!r}")
    seen: set[tuple[str, str]] = set()
    out = []
    for tr in traces:
        p = problems[tr.problem_id]
        completion = tr.answer if target == "answers_only" else format_target(tr.thinking, tr.answer, think_tags)
        key = (tr.problem_id, completion)
        if key not in seen:
            seen.add(key)
            out.append(Example(tr.problem_id, p.prompt, completion))
    return out


def tokenize_examples(tokenizer, examples: list[Example]) -> tuple[list[list[int]], list[int]]:
    """Token ids (prompt + completion + EOS) and prompt lengths, in batches through the fast path."""
    prompt_texts = render_prompts(tokenizer, [e.prompt for e in examples])
    p_ids = tokenizer(prompt_texts, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer([e.completion for e in examples], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    ids = [p + c + [eos] for p, c in zip(p_ids, c_ids)]
    return ids, [len(p) for p in p_ids]


def split_problems(problem_ids: Iterable[str], val_fraction: float, seed: int) -> set[str]:
    """The problems that go to validation: a seeded, order-independent choice."""
    unique = sorted(set(problem_ids))
    ranked = sorted(unique, key=lambda pid: hashlib.blake2b(f"{seed}:{pid}".encode(), digest_size=8).digest())
    n_val = round(len(unique) * val_fraction)
    if val_fraction > 0 and n_val == 0 and len(unique) > 1:
        n_val = 1
    return set(ranked[:n_val])


def save_split(path: Path, ids: list[list[int]], prompt_lens: list[int], problem_ids: list[str],
               order: str = "shuffle") -> None:
    from safetensors.numpy import save_file

    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(offsets[-1]))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"input_ids": flat, "offsets": offsets, "prompt_lens": np.array(prompt_lens, dtype=np.int32)},
              str(path), metadata={"problem_ids": json.dumps(problem_ids), "order": order})


def empty_build(out_dir: str | Path, max_length: int) -> dict:
    """The stats of a build with no examples at all; stale splits of an earlier build are removed
    so that nothing trains on them."""
    out = BuildFiles(out_dir)
    for split in ("train", "val"):
        out.split(split).unlink(missing_ok=True)
    stats: dict = {"examples_in": 0, "dropped_too_long": 0, "max_length": max_length,
                   **{split: {"examples": 0, "problems": 0, "tokens": 0, "target_tokens": 0} for split in ("train", "val")}}
    write_json(out.stats, stats)
    return stats


def build_dataset(examples: list[Example], tokenizer, out_dir: str | Path, *, max_length: int,
                  val_fraction: float, seed: int, order: str = "shuffle", curriculum_by: str = "pass_rate",
                  pass_rates: dict[str, float] | None = None) -> dict:
    """Tokenise, length-filter and split ``examples``; write train/val safetensors and stats.
    ``order="curriculum"`` writes them easy to hard by ``curriculum_by`` (data/curriculum.py)."""
    if not examples:
        return empty_build(out_dir, max_length)
    out = BuildFiles(out_dir)
    ids, prompt_lens = tokenize_examples(tokenizer, examples)
    keep = [i for i, x in enumerate(ids) if len(x) <= max_length]
    if order == "curriculum":
        from reasondistill.data.curriculum import curriculum_order

        rank = curriculum_order(examples, [len(x) - p for x, p in zip(ids, prompt_lens)], curriculum_by, seed,
                                pass_rates)
        position = {i: r for r, i in enumerate(rank)}
        keep.sort(key=position.__getitem__)
    too_long = len(ids) - len(keep)
    val_problems = split_problems((examples[i].problem_id for i in keep), val_fraction, seed)
    parts: dict[str, list[int]] = {"train": [], "val": []}
    for i in keep:
        parts["val" if examples[i].problem_id in val_problems else "train"].append(i)
    stats: dict = {"examples_in": len(examples), "dropped_too_long": too_long, "max_length": max_length}
    if order == "curriculum":
        stats["order"] = {"order": order, "by": curriculum_by}
    for split, idx in parts.items():
        save_split(out.split(split), [ids[i] for i in idx], [prompt_lens[i] for i in idx],
                   [examples[i].problem_id for i in idx], order)
        n_tok = sum(len(ids[i]) for i in idx)
        n_target = sum(len(ids[i]) - prompt_lens[i] for i in idx)
        stats[split] = {"examples": len(idx), "problems": len({examples[i].problem_id for i in idx}),
                        "tokens": n_tok, "target_tokens": n_target}
    write_json(out.stats, stats)
    return stats
