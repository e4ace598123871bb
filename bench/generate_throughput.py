"""Teacher trace generation: our batched ``generate_completions`` vs the textbook per-problem loop.

    python bench/generate_throughput.py            # 256 problems, n=2, 96 new tokens; one JSON object
    python bench/generate_throughput.py --quick    # 64 problems
    python bench/generate_throughput.py --problems 512 --batch-size 256 --threads 2

Model: the bundled teacher ``bundled:tiny-arith-teacher`` when it is shipped under
``src/reasondistill/assets/``; otherwise a locally built, randomly initialised Llama of the same
size class (hidden 128, 4 layers, MLP 384: ~0.8M parameters) with the character tokenizer. A
random model almost never emits EOS, so every row then runs to ``max_new_tokens``: a
worst case for the baseline's per-problem early stop and for ours' padding alike.

Prompts: chained-arithmetic problems rendered with the chat template, the same list for both.

  * ours: ``teachers.sampling.generate_completions`` (prompts sorted by length, left padding,
    ``--batch-size`` rows per ``generate`` call, KV cache, counter-based seeded sampling).
  * per_problem: for each problem, ``model.generate(prompt, do_sample=True, temperature,
    top_p=1, num_return_sequences=n, max_new_tokens)`` (one prompt per call; its n samples in
    one batch, the most favourable textbook form).

Generated tokens count every completion token up to and including EOS (not the padding after
it). Both run once untimed on two prompts first (warm-up). Same thread count for both
(``--threads``, default 1: the machine is shared). ``speedup_vs_per_problem`` is the ratio of
generated tokens/s (goal: >= 8).

Batch size: on this CPU, with a sub-1M-parameter model, decoding is bound by memory traffic, not
FLOPs: transformers' DynamicCache appends with ``torch.cat`` (the whole cache is copied every
step, ~35% of the time) and sdpa reads it again. Tokens/s of ours at 32/64/128/256/512 rows:
bundled teacher (stops at EOS after ~38 tokens) 6200 / 8400 / 7650 / 7650 / 6250; random model
(runs to 96 tokens) 2400 / 2900-3600 / 2300 / 2050 / 1560. ``cache_implementation="static"`` was
slower (it attends over the full preallocated length). So the default here is 64 rows; bigger
models (compute bound) want bigger batches.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ASSET = Path(__file__).resolve().parents[1] / "src/reasondistill/assets/tiny-arith-teacher"
LOCAL_MODEL = {"architecture": "llama", "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
               "intermediate_size": 384, "max_position_embeddings": 512}


def load_teacher():
    from reasondistill.models import build_char_tokenizer, init_model, load_model, load_tokenizer

    if (ASSET / "config.json").exists():
        return load_model("bundled:tiny-arith-teacher"), load_tokenizer("bundled:tiny-arith-teacher"), \
            "bundled:tiny-arith-teacher"
    tok = build_char_tokenizer()
    return init_model(LOCAL_MODEL, tok, seed=0), tok, "local random llama (bundled teacher not shipped)"


def per_problem(model, tok, prompts, n, max_new_tokens, temperature):
    import torch

    eos = tok.eos_token_id
    tokens = 0
    for p in prompts:
        ids = tok(p, add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**ids, do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
                                 num_return_sequences=n, max_new_tokens=max_new_tokens, eos_token_id=eos,
                                 pad_token_id=tok.pad_token_id)
        for row in out[:, ids["input_ids"].shape[1]:].tolist():
            tokens += next((j + 1 for j, t in enumerate(row) if t == eos), len(row))
    return tokens


def ours(model, tok, prompts, keys, n, max_new_tokens, temperature, batch_size):
    from reasondistill.teachers.sampling import SamplingParams, generate_completions

    params = SamplingParams(n=n, temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=0)
    tokens = 0
    stops = 0
    for batch in generate_completions(model, tok, prompts, keys, params):
        tokens += sum(c.completion_tokens for c in batch)
        stops += sum(c.finish_reason == "stop" for c in batch)
    return tokens, stops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="64 problems instead of 256")
    ap.add_argument("--problems", type=int, default=None)
    ap.add_argument("--n", type=int, default=2, help="samples per problem")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--batch-size", type=int, default=64, help="ours: rows per generate call (64 is fastest here, see below)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch
    import transformers

    from reasondistill.data.build import render_prompts
    from reasondistill.models import n_params
    from reasondistill.tasks.arith import ChainedArithmetic

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    n_problems = args.problems or (64 if args.quick else 256)
    model, tok, source = load_teacher()
    model.eval()
    problems = ChainedArithmetic(min_ops=3, max_ops=5).problems("train", n_problems, seed=0)
    prompts = render_prompts(tok, [p.prompt for p in problems])
    keys = [p.id for p in problems]

    torch.manual_seed(0)
    per_problem(model, tok, prompts[:2], args.n, 8, args.temperature)  # warm-up
    ours(model, tok, prompts[:2], keys[:2], args.n, 8, args.temperature, args.batch_size)

    t = time.perf_counter()
    ours_tokens, ours_stops = ours(model, tok, prompts, keys, args.n, args.max_new_tokens, args.temperature,
                                   args.batch_size)
    ours_s = time.perf_counter() - t
    torch.manual_seed(0)
    t = time.perf_counter()
    base_tokens = per_problem(model, tok, prompts, args.n, args.max_new_tokens, args.temperature)
    base_s = time.perf_counter() - t

    ours_tps, base_tps = ours_tokens / ours_s, base_tokens / base_s
    print(json.dumps({
        "bench": "generate_throughput", "model": source, "params": n_params(model),
        "problems": n_problems, "n": args.n, "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature, "threads": args.threads, "ours_batch_size": args.batch_size,
        "generated_tokens_ours": ours_tokens, "generated_tokens_per_problem": base_tokens,
        "rows_stopped_at_eos_ours": ours_stops,
        "seconds_ours": round(ours_s, 2), "seconds_per_problem": round(base_s, 2),
        "tokens_per_s_ours": round(ours_tps, 1), "tokens_per_s_per_problem": round(base_tps, 1),
        "speedup_vs_per_problem": round(ours_tps / base_tps, 2), "goal": ">= 8",
        "per_problem_baseline": "model.generate per prompt, do_sample, num_return_sequences=n",
        "note": "shared 2-core machine: compare ratios within one run only",
    }, indent=1))


if __name__ == "__main__":
    main()
