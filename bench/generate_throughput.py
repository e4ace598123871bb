"""Teacher trace generation: our batched ``generate_completions`` vs the textbook per-problem loop.

    python bench/generate_throughput.py            # 256 problems, n=2, 96 new tokens; one JSON object
    python bench/generate_throughput.py --quick    # 64 problems
    python bench/generate_throughput.py --problems 512 --batch-size 256 --threads 2 --skip-bf16

Model: the bundled teacher ``bundled:tiny-arith-teacher`` when it is shipped under
``src/reasondistill/assets/``; otherwise a locally built, randomly initialised Llama of the same
size class (hidden 128, 4 layers, MLP 384: ~0.8M parameters) with the character tokenizer. A
random model almost never emits EOS, so every row then runs to ``max_new_tokens``: a
worst case for the baseline's per-problem early stop and for ours' padding alike.

Prompts: chained-arithmetic problems rendered with the chat template, the same list for both.

  * ours: ``teachers.sampling.generate_completions`` (prompts sorted by length, left padding,
    ``--batch-size`` rows per ``generate`` call, KV cache, counter-based seeded sampling; a bf16
    model on CPU decodes through ``reasondistill/attention.py``).
  * ours_generate (fp32): the same with transformers' ``generate`` in place of the lean decoder of
    ``reasondistill/decoder.py`` (``decoder_speedup_vs_generate``; the tokens are the same).
  * per_problem: for each problem, ``model.generate(prompt, do_sample=True, temperature,
    top_p=1, num_return_sequences=n, max_new_tokens)`` (one prompt per call; its n samples in
    one batch, the most favourable textbook form).

Both run with the teacher's weights in fp32 (the seed's loop) and in bf16 (``teacher.dtype:
bfloat16`` or ``auto``); ``speedup_vs_per_problem`` is ours' faster dtype over the seed's fp32
loop (goal: >= 8), ``speedup_vs_per_problem_same_dtype`` compares within each dtype. Generated
tokens count every completion token up to and including EOS (not the padding after it). Each
runs once untimed on two prompts first (warm-up). Same thread count for all (``--threads``,
default 1: the machine is shared).

Where the time goes (bundled teacher, 1 thread): in fp32 the GEMMs already run near this CPU's
fp32 peak, and the rest is transformers' DynamicCache appending with ``torch.cat`` (~30%) and
sdpa's flash kernel, which is slow for one query against the cache. In bf16 the GEMMs run on
AMX (2.3x faster) and decoding through reasondistill/attention.py (two GEMMs per layer instead
of sdpa) makes bf16 1.6x fp32. Tokens/s of ours at 64 / 128 / 256 rows (2026-11-23): fp32
11.6k / 11.8k / 10.9k, bf16 15.5k / 18.9k / 18.9k; hence 128. A preallocated cache (views instead
of ``torch.cat``) was tried: no gain in fp32, and in bf16 the GEMMs on its strided views copy.
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


def ours(model, tok, prompts, keys, n, max_new_tokens, temperature, batch_size, decoder="auto"):
    from reasondistill.teachers.sampling import SamplingParams, generate_completions

    params = SamplingParams(n=n, temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=0)
    tokens = 0
    stops = 0
    for batch in generate_completions(model, tok, prompts, keys, params, decoder=decoder):
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
    ap.add_argument("--batch-size", type=int, default=128, help="ours: rows per generate call (128 is fastest here, see above)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-bf16", action="store_true", help="fp32 only (the default where bf16 is not native)")
    args = ap.parse_args()

    import torch
    import transformers

    from reasondistill.models import n_params
    from reasondistill.prompts import render_prompts
    from reasondistill.tasks.arith import ChainedArithmetic

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    n_problems = args.problems or (64 if args.quick else 256)
    model, tok, source = load_teacher()
    model.eval()
    problems = ChainedArithmetic(min_ops=3, max_ops=5).problems("train", n_problems, seed=0)
    prompts = render_prompts(tok, [p.prompt for p in problems])
    keys = [p.id for p in problems]

    def timed(fn, *a):
        torch.manual_seed(0)
        t = time.perf_counter()
        out = fn(*a)
        return out, time.perf_counter() - t

    from reasondistill.models import bf16_is_native

    # emulated bf16 (no AVX512-BF16/AMX) runs ~100x slower: measured only where it is native
    dtypes = ["float32"] + ([] if args.skip_bf16 or not bf16_is_native() else ["bfloat16"])
    runs = {}
    for dtype in dtypes:
        m = model.to(getattr(torch, dtype))
        per_problem(m, tok, prompts[:2], args.n, 8, args.temperature)  # warm-up
        ours(m, tok, prompts[:2], keys[:2], args.n, 8, args.temperature, args.batch_size)
        (tokens, stops), s = timed(ours, m, tok, prompts, keys, args.n, args.max_new_tokens, args.temperature,
                                   args.batch_size)
        runs[f"ours_{dtype}"] = {"tokens": tokens, "seconds": s, "rows_stopped_at_eos": stops}
        tokens, s = timed(per_problem, m, tok, prompts, args.n, args.max_new_tokens, args.temperature)
        runs[f"per_problem_{dtype}"] = {"tokens": tokens, "seconds": s}
        if dtype == "float32":  # ours with transformers' generate in place of the lean decoder (decoder.py)
            (tokens, stops), s = timed(ours, m, tok, prompts, keys, args.n, args.max_new_tokens, args.temperature,
                                       args.batch_size, "generate")
            runs["ours_generate_float32"] = {"tokens": tokens, "seconds": s, "rows_stopped_at_eos": stops}
    tps = {k: r["tokens"] / r["seconds"] for k, r in runs.items()}
    ours_key = max((k for k in tps if k.startswith("ours") and "generate" not in k), key=tps.get)
    base_key = "per_problem_float32"  # the seed's loop: fp32
    print(json.dumps({
        "bench": "generate_throughput", "model": source, "params": n_params(model),
        "problems": n_problems, "n": args.n, "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature, "threads": args.threads, "ours_batch_size": args.batch_size,
        "ours_best": ours_key,
        "tokens_per_s": {k: round(v, 1) for k, v in tps.items()},
        "generated_tokens": {k: r["tokens"] for k, r in runs.items()},
        "seconds": {k: round(r["seconds"], 2) for k, r in runs.items()},
        "rows_stopped_at_eos_ours": runs[ours_key]["rows_stopped_at_eos"],
        "tokens_per_s_ours": round(tps[ours_key], 1), "tokens_per_s_per_problem": round(tps[base_key], 1),
        "speedup_vs_per_problem": round(tps[ours_key] / tps[base_key], 2), "goal": ">= 8",
        "speedup_vs_per_problem_same_dtype": {
            d: round(tps[f"ours_{d}"] / tps[f"per_problem_{d}"], 2) for d in dtypes},
        "bf16_over_fp32_ours": round(tps["ours_bfloat16"] / tps["ours_float32"], 2) if len(dtypes) > 1 else None,
        "decoder_speedup_vs_generate": round(tps["ours_float32"] / tps["ours_generate_float32"], 2),
        "same_token_count_either_decoder": runs["ours_float32"]["tokens"] == runs["ours_generate_float32"]["tokens"],
        "per_problem_baseline": "model.generate per prompt, do_sample, num_return_sequences=n (fp32, as the seed)",
        "note": "shared 2-core machine: compare ratios within one run only",
    }, indent=1))


if __name__ == "__main__":
    main()
