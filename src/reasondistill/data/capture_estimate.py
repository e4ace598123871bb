"""``reasondistill capture --estimate``: the disk a top-k capture will need, before it starts.

Why: a capture of a large trace set can fill a disk hours into the run. The estimate is
examples × mean answer tokens × bytes per token, from files that exist before the capture:
the built dataset (exact answer-token counts) or, before the build, the curated traces
(a sample tokenised with the student's tokenizer). For a cross-tokenizer cache the answers are
counted in the TEACHER's tokens (a sample re-tokenised) and the teacher's copy of the data
(4 bytes per token) and its token strings (once) are added.

Bytes per token: fp16 ``k · 6 + 2`` exactly; compact at most ``5 + k · (low_bits + 1 +
value_bits) / 8 + H / 8`` (every entry kept; LM-like rows keep about half, bench/kd_memory.py).

    est = estimate_capture(examples=15996, answer_tokens=595648, k=128, cache="compact", vocab_size=32000)
    print(format_estimate(est))
"""

from __future__ import annotations

import math


def bytes_per_token_bound(k: int, cache: str, vocab_size: int) -> float:
    """fp16: exact payload; compact: the all-entries-kept upper bound."""
    if cache == "fp16":
        return float(k * 6 + 2)
    from reasondistill.data.compact_topk import CompactCodec

    c = CompactCodec(k=k, vocab_size=vocab_size)
    return 5 + k * (c.low_bits + 1 + c.value_bits) / 8 + c.high_span / 8


def estimate_capture(examples: int, answer_tokens: int, k: int, cache: str, vocab_size: int,
                     teacher_tokens_per_answer_token: float | None = None, prompt_tokens: int = 0,
                     teacher_vocab_bytes: int = 0) -> dict:
    """The estimate as a dict; ``teacher_tokens_per_answer_token`` set for a cross-tokenizer cache."""
    ratio = teacher_tokens_per_answer_token or 1.0
    rows = int(math.ceil(answer_tokens * ratio))
    per_token = bytes_per_token_bound(k, cache, vocab_size)
    payload = rows * per_token + examples * (16 if cache == "compact" else 8)  # offsets per example
    extra = 0
    if teacher_tokens_per_answer_token is not None:  # teacher view (int32 ids) + its token strings, once
        extra = int(4 * (rows + prompt_tokens * ratio) + 12 * examples + teacher_vocab_bytes)
    return {"examples": examples, "answer_tokens": answer_tokens, "rows": rows, "k": k, "cache": cache,
            "bytes_per_token": round(per_token, 1), "bound": "exact" if cache == "fp16" else "upper bound",
            "teacher_tokens_per_answer_token": teacher_tokens_per_answer_token,
            "bytes": int(payload + extra), "mean_answer_tokens": round(answer_tokens / max(1, examples), 1)}


def format_estimate(est: dict, name: str = "") -> str:
    mb = est["bytes"] / 2 ** 20
    cross = (f" x {est['teacher_tokens_per_answer_token']:.2f} teacher tokens each"
             if est["teacher_tokens_per_answer_token"] is not None else "")
    return (f"{name + ': ' if name else ''}{est['examples']} examples x {est['mean_answer_tokens']} answer tokens"
            f"{cross} x {est['bytes_per_token']} bytes/token ({est['cache']}, k={est['k']}, {est['bound']}) "
            f"= {mb:.1f} MB")


def measure(student_tok, built: list, completions: list[str] | None = None, teacher_tok=None,
            sample: int = 200) -> dict:
    """Examples, answer tokens and prompt tokens from built splits (exact), or from curated
    completions (``completions``: their texts; a sample tokenised); with ``teacher_tok`` the
    teacher-tokens-per-answer-token ratio of a sample."""
    from reasondistill.data.dataset import TokenizedDataset

    texts: list[str] = []
    if built:
        examples = answer = prompt = 0
        for path in built:
            ds = TokenizedDataset(path)
            examples += len(ds)
            answer += int((ds.lengths - ds.prompt_lens).sum())
            prompt += int(ds.prompt_lens.sum())
            if teacher_tok is not None and len(texts) < sample:
                texts += [student_tok.decode(ds[i][0][ds[i][1]:], skip_special_tokens=True)
                          for i in range(min(len(ds), sample - len(texts)))]
    else:
        examples = len(completions or [])
        part = (completions or [])[:sample]
        mean = sum(len(x) + 1 for x in student_tok(part, add_special_tokens=False)["input_ids"]) / max(1, len(part))
        answer, prompt, texts = int(round(mean * examples)), 0, part
    out = {"examples": examples, "answer_tokens": answer, "prompt_tokens": prompt}
    if teacher_tok is not None:
        s = sum(len(x) + 1 for x in student_tok(texts, add_special_tokens=False)["input_ids"]) if texts else 1
        t = sum(len(x) + 1 for x in teacher_tok(texts, add_special_tokens=False)["input_ids"]) if texts else 1
        out["ratio"] = t / max(1, s)
    return out
