"""Size on disk and decode speed of a model directory: what quantization buys on this machine.

Why: a quantized student is only worth deploying if it is smaller or faster where it runs. Size is
the bytes of the weight files (``*.safetensors``) as saved; speed is greedy decode tokens per second
at batch size 1 over the same prompts, the full-precision and the quantized model measured in
turns in one process (best of ``repeats`` each, so a busy shared CPU penalises both alike).

    weight_bytes("train/s/final"), decode_speed({"fp32": fp, "int4": q}, tok, prompts, 96)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence


def weight_bytes(model_dir: str | Path) -> int:
    """Bytes of the weight files in a saved model directory."""
    return sum(f.stat().st_size for f in Path(model_dir).glob("*.safetensors"))


def decode_speed(models: Mapping[str, Any], tokenizer, prompts: Sequence[str], max_new_tokens: int,
                 repeats: int = 2) -> dict[str, dict[str, float]]:
    """``{name: {"tokens_per_s", "tokens", "seconds"}}``: greedy decoding of ``prompts`` one at a time
    with each model, models taking turns, best of ``repeats`` passes per model."""
    from reasondistill.teachers.sampling import SamplingParams, generate_completions

    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens, batch_size=1)
    best: dict[str, dict[str, float]] = {}
    for _ in range(repeats):
        for name, model in models.items():
            t0 = time.perf_counter()
            tokens = sum(c.completion_tokens for batch in generate_completions(
                model, tokenizer, prompts, [str(i) for i in range(len(prompts))], params) for c in batch)
            seconds = time.perf_counter() - t0
            rate = tokens / seconds if seconds > 0 else float("nan")
            if name not in best or rate > best[name]["tokens_per_s"]:
                best[name] = {"tokens_per_s": round(rate, 1), "tokens": tokens, "seconds": round(seconds, 3)}
    return best
