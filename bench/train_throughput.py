"""Training throughput: our ``train_model`` vs TRL's SFTTrainer vs the textbook per-example loop.

    python bench/train_throughput.py            # default run (~8 min, 1 thread); one JSON object
    python bench/train_throughput.py --quick    # smaller run (~2 min)
    python bench/train_throughput.py --threads 2 --examples 480 --ours-batch 8

Setup (the same for every variant):
  * model: Qwen2 architecture built locally (``reasondistill.models.init_model``), hidden 384,
    6 layers, 6 heads, MLP 1024, tied embeddings: 10.67M parameters; same init seed for all.
  * tokenizer: the local character tokenizer (``build_char_tokenizer``), passed as an object
    (never reloaded through AutoTokenizer, which would swap in Qwen2Tokenizer).
  * data: ``--examples`` prompt/completion pairs whose total lengths are drawn from a lognormal
    (median 256 tokens, sigma 0.6) clipped to [64, 1024]; prompts are chained-arithmetic problems
    rendered with the chat template, completions are step-by-step solutions concatenated to the
    drawn length. Tokenised once by ``data.build.build_dataset`` (answer-only loss mask); TRL gets
    the same text as a prompt/completion dataset and the script checks it tokenises to the same
    token count. A separate held-out set is used for the final loss.
  * optimisation: one epoch, effective batch 16 examples per optimizer step, AdamW(lr 1e-3,
    betas (0.9, 0.98), weight decay 0.01), clip 1.0, cosine to 0.1·lr (ours and per-example: one
    warmup step at full lr; TRL: no warmup, since HF's first warmup step has lr 0).

Variants (each in its own subprocess, one after the other, same thread count):
  * ``ours``: ``train_model`` (length-grouped padded micro-batches, loss = Σ answer-token CE /
    answer tokens of the whole step, ``attention: auto`` = reasondistill/attention.py's blocked causal
    attention on CPU, ``pad_to_multiple_of: auto`` = lengths rounded up geometrically in bf16, fused AdamW),
    fp32 and bf16 autocast (``mixed_precision="bf16"``); ``ours_dtype`` says
    which one the headline numbers use (the faster one); bf16 only where the CPU computes it natively
    (AVX512-BF16/AMX; emulated bf16 is ~100x slower). Ablations, in that dtype (``ablation_dtype``):
    ``ours_<dtype>_sdpa`` with the model's own sdpa attention (``attention_speedup``),
    ``ours_<dtype>_packed`` with ``train.packing`` (each step's examples packed into rows, no padding;
    ``packing_speedup``), ``ours_<dtype>_3_epochs`` three epochs timed each: ``mfu_steady_state`` is
    ours' MFU in the faster of epochs 2 and 3 (a long run's figure; the headline one-epoch MFU
    includes first-time costs).
  * ``trl``: ``trl.SFTTrainer`` with a prompt/completion dataset and ``completion_only_loss=True``,
    ``gradient_checkpointing=False`` (its default is True), ``padding_free=False``, ``packing=False``,
    ``train_sampling_strategy="group_by_length"`` (transformers 5 name for group_by_length),
    ``use_cache=False`` on the model config, sdpa attention; in fp32 and with ``bf16=True``
    (autocast, as ours): ``trl_best`` is the faster one and the headline ratio is against it.
    (Padding-free/packing are slowest on CPU: attention builds a dense mask; see NOTES.)
  * ``per_example``: batch size 1, fp32, ``model(input_ids, labels=labels).loss / 16`` accumulated
    over 16 examples, plain ``torch.optim.AdamW``, same schedule and clipping.

Reported: tokens/s (all non-pad tokens trained on per second of training-loop wall time: ours up
to its last optimizer step, not the final checkpoint write, as TRL's ``train_runtime`` with
``save_strategy="no"``), ``speedup_vs_trl``, ``speedup_vs_per_example``, ``mfu`` =
6·params·tokens/s ÷ the matmul peak this script measures (best of several GEMM shapes) in ours'
dtype with the same thread count (the attention's own QK^T and PV FLOPs are not counted, so it
understates; ``mfu_with_attention`` adds them, exactly for causal attention over this data:
6·layers·d·Σ T(T+1) over the examples, ~9% more here), and the final loss of each
variant: mean answer-token cross-entropy on the held-out set, computed by one function (fp32,
batch 1, no padding) for every variant. The machine is shared: only ratios from the same run mean
anything, and they move by 10-30% between runs as the load of the other workers changes
during a run. The ``*_cpu_time`` ratios (tokens per CPU-second of the training process, one
thread) are less sensitive to that; ours' CPU time includes Accelerator set-up and saving
``final/``, so it slightly understates ours.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL = {"architecture": "qwen2", "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 6,
         "num_key_value_heads": 6, "intermediate_size": 1024, "max_position_embeddings": 1024}
EFFECTIVE_BATCH = 16
LR, BETAS, WD, CLIP, MIN_RATIO, WARMUP = 1e-3, (0.9, 0.98), 0.01, 1.0, 0.1, 1
MAX_LEN = 1024


# ------------------------------------------------------------------------------------------ data
def make_texts(n: int, seed: int, tokenizer) -> list[tuple[str, str, str]]:
    """(problem_id, prompt, completion) with lognormal total token lengths in [64, 1024]."""
    import numpy as np

    from reasondistill.prompts import render_prompts
    from reasondistill.tasks.arith import ChainedArithmetic

    rng = np.random.default_rng(seed)
    task = ChainedArithmetic(min_ops=3, max_ops=5)
    pool = task.problems("train", n * 8, seed=seed)
    totals = np.clip(np.round(rng.lognormal(math.log(256), 0.6, n)), 64, MAX_LEN).astype(int)
    out = []
    for i, total in enumerate(totals):
        p = pool[i]
        prompt_len = len(tokenizer(render_prompts(tokenizer, [p.prompt])[0], add_special_tokens=False)["input_ids"])
        room = max(8, int(total) - prompt_len - 1)  # + EOS; char tokenizer: one completion char = one token
        parts, j = [], 0
        while sum(len(x) + 1 for x in parts) < room:
            q = pool[(i * 7 + j) % len(pool)]
            parts.append(f"{q.solution}\nso {q.prompt}={q.answer}")
            j += 1
        completion = "\n".join(parts)[:room]
        out.append((f"{p.id}#{i}", p.prompt, completion))
    return out


def prepare(work: Path, n_train: int, n_val: int, seed: int) -> dict:
    from reasondistill.data.build import Example, build_dataset
    from reasondistill.data.dataset import TokenizedDataset
    from reasondistill.models import build_char_tokenizer

    tok = build_char_tokenizer()
    stats = {}
    for split, n, s in (("train", n_train, seed), ("heldout", n_val, seed + 1)):
        texts = make_texts(n, s, tok)
        ex = [Example(pid, prompt, completion) for pid, prompt, completion in texts]
        st = build_dataset(ex, tok, work / split, max_length=MAX_LEN, val_fraction=0.0, seed=seed)
        (work / f"{split}.json").write_text(json.dumps(texts))
        ds = TokenizedDataset(work / split / "train.safetensors")
        stats[split] = {"examples": len(ds), "tokens": int(ds.lengths.sum()),
                        "target_tokens": int(ds.target_tokens(range(len(ds)))),
                        "length_min": int(ds.lengths.min()), "length_median": int(sorted(ds.lengths)[len(ds) // 2]),
                        "length_max": int(ds.lengths.max()), "dropped": st["dropped_too_long"],
                        # sum of T(T+1) over examples: the causal attention FLOPs are 6 * layers * d * this
                        "sum_t_t1": int((ds.lengths.astype("int64") * (ds.lengths.astype("int64") + 1)).sum())}
    return stats


# ------------------------------------------------------------------------------------ helpers
def build_model():
    from reasondistill.models import build_char_tokenizer, init_model

    tok = build_char_tokenizer()
    return init_model(MODEL, tok, seed=0), tok


def heldout_loss(model, work: Path) -> float:
    """Mean answer-token CE on the held-out set: fp32, batch 1, no padding (one code path for all)."""
    import torch

    from reasondistill.data.dataset import TokenizedDataset, collate
    from reasondistill.train.sft import cross_entropy_sum

    ds = TokenizedDataset(work / "heldout" / "train.safetensors")
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(len(ds)):
            total += float(cross_entropy_sum(model, collate(ds, [i], 0)))
    model.train()
    return total / ds.target_tokens(range(len(ds)))


def matmul_peak(dtype_name: str, threads: int) -> float:
    """Best GFLOP/s over a few GEMM shapes like the model's, in ``dtype``, with ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    best = 0.0
    for m, k, n in ((2048, 384, 1024), (2048, 1024, 384), (2048, 384, 384), (2048, 2048, 2048)):
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        for _ in range(2):
            a @ b
        for _ in range(5):
            t = time.perf_counter()
            a @ b
            best = max(best, 2 * m * k * n / (time.perf_counter() - t) / 1e9)
    return best


# ----------------------------------------------------------------------------------- variants
def run_ours(work: Path, threads: int, mixed: str, batch: int, attention: str = "auto", packing: bool = False,
             epochs: int = 1) -> dict:
    """One epoch (the comparison), or ``epochs`` > 1 passes over the same data timed per epoch (one
    log row per epoch; the steady state of a longer run)."""
    import csv

    import torch

    from reasondistill.train.config import TrainConfig
    from reasondistill.train.sft import train_model

    torch.set_num_threads(threads)
    model, tok = build_model()
    n = json.loads((work / "stats.json").read_text())["train"]["examples"]
    steps = math.ceil(n / EFFECTIVE_BATCH)
    total = epochs * steps
    cfg = TrainConfig(epochs=None, max_steps=total, batch_size=batch, grad_accum=EFFECTIVE_BATCH // batch, lr=LR,
                      betas=BETAS, weight_decay=WD, max_grad_norm=CLIP, min_lr_ratio=MIN_RATIO,
                      warmup_ratio=WARMUP / total if total > 1 else 0.0, group_by_length=True, mixed_precision=mixed,
                      threads=threads, attention=attention, packing=packing,
                      log_every=steps if epochs > 1 else max(1, steps // 4), eval_every=10**9, save_every=10**9,
                      resume=False)
    out = work / f"ours_{mixed}_b{batch}_{attention}{'_packed' if packing else ''}_e{epochs}"
    cpu = time.process_time()
    summary = train_model(model, tok, work / "train" / "train.safetensors", None, out, cfg, seed=0,
                          show_progress=False)
    cpu = time.process_time() - cpu
    with open(out / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["train_loss"]]
    if epochs > 1:
        elapsed = [float(r["elapsed_s"]) for r in rows]
        return {"epoch_s": [round(b - a, 2) for a, b in zip([0.0] + elapsed, elapsed)]}
    # the training loop up to its last optimizer step (as TRL's train_runtime with save_strategy "no" and
    # the per-example loop); wall_time_s also includes writing the final checkpoint (weights + AdamW state)
    return {"train_s": float(rows[-1]["elapsed_s"]), "train_s_with_final_save": summary["wall_time_s"],
            "cpu_s": round(cpu, 2), "steps": summary["steps"], "params": summary["params"],
            "last_train_loss": float(rows[-1]["train_loss"]), "final_loss": heldout_loss(model, work),
            "micro_batches": summary["micro_batches"], "pack_tokens": summary["pack_tokens"]}


def run_trl(work: Path, threads: int, batch: int, bf16: bool) -> dict:
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from reasondistill.prompts import render_prompts

    torch.set_num_threads(threads)
    model, tok = build_model()
    model.config.use_cache = False  # no KV cache in training forwards
    texts = json.loads((work / "train.json").read_text())
    prompts = render_prompts(tok, [p for _, p, _ in texts])
    ds = Dataset.from_dict({"prompt": prompts, "completion": [c for _, _, c in texts]})
    steps = math.ceil(len(texts) / EFFECTIVE_BATCH)
    args = SFTConfig(
        output_dir=str(work / f"trl_{'bf16' if bf16 else 'fp32'}"), per_device_train_batch_size=batch,
        gradient_accumulation_steps=EFFECTIVE_BATCH // batch, num_train_epochs=1, learning_rate=LR,
        adam_beta1=BETAS[0], adam_beta2=BETAS[1], weight_decay=WD, max_grad_norm=CLIP,
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": MIN_RATIO},
        warmup_steps=0,  # HF's warmup starts at lr 0 (a wasted step); ours starts at lr/warmup
        completion_only_loss=True, gradient_checkpointing=False, padding_free=False, packing=False,
        train_sampling_strategy="group_by_length", max_length=MAX_LEN, bf16=bf16, use_cpu=True,
        dataloader_pin_memory=False, logging_steps=max(1, steps // 4), save_strategy="no", report_to="none",
        seed=0, disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    tokens = sum(len(x) for x in trainer.train_dataset["input_ids"])
    targets = sum(sum(1 for t in x if t != -100) for x in trainer.train_dataset["labels"])
    t, cpu = time.perf_counter(), time.process_time()
    out = trainer.train()
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"train_s": out.metrics["train_runtime"], "train_s_outer": round(wall, 2), "cpu_s": round(cpu, 2),
            "steps": trainer.state.global_step,
            "tokens_seen_by_trl": tokens, "target_tokens_seen_by_trl": targets,
            "last_train_loss": losses[-1] if losses else None, "final_loss": heldout_loss(model, work)}


def run_per_example(work: Path, threads: int) -> dict:
    import numpy as np
    import torch

    from reasondistill.data.dataset import TokenizedDataset, collate
    from reasondistill.train.sft import lr_lambda

    torch.set_num_threads(threads)
    model, tok = build_model()
    model.train()
    ds = TokenizedDataset(work / "train" / "train.safetensors")
    order = np.random.default_rng(0).permutation(len(ds)).tolist()
    steps = math.ceil(len(ds) / EFFECTIVE_BATCH)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=WD)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(steps, WARMUP, MIN_RATIO))
    t, cpu = time.perf_counter(), time.process_time()
    last = 0.0
    for s in range(steps):
        idx = order[s * EFFECTIVE_BATCH:(s + 1) * EFFECTIVE_BATCH]
        last = 0.0
        for i in idx:
            b = collate(ds, [i], tok.pad_token_id)
            loss = model(input_ids=b["input_ids"], labels=b["labels"], use_cache=False).loss / len(idx)
            loss.backward()
            last += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return {"train_s": round(time.perf_counter() - t, 2), "cpu_s": round(time.process_time() - cpu, 2), "steps": steps,
            "last_train_loss": last,
            "final_loss": heldout_loss(model, work)}


def child(args) -> None:
    work = Path(args.work)
    ours = re.fullmatch(r"ours_(fp32|bf16)(_sdpa|_packed|_3_epochs)?", args.variant)
    if args.variant == "peak":
        res = {dt: matmul_peak(name, args.threads) for dt, name in (("fp32", "float32"), ("bf16", "bfloat16"))
               if dt == "fp32" or args.with_bf16}
    elif ours:  # _sdpa: the model's own attention; _packed: train.packing; _3_epochs: the steady state
        mixed, kind = "bf16" if ours[1] == "bf16" else "no", ours[2] or ""
        res = run_ours(work, args.threads, mixed, args.ours_batch, attention="model" if kind == "_sdpa" else "auto",
                       packing=kind == "_packed", epochs=3 if kind == "_3_epochs" else 1)
    elif args.variant in ("trl_fp32", "trl_bf16"):
        res = run_trl(work, args.threads, args.trl_batch, bf16=args.variant == "trl_bf16")
    elif args.variant == "per_example":
        res = run_per_example(work, args.threads)
    elif args.variant == "initial":
        model, _ = build_model()
        res = {"final_loss": heldout_loss(model, work)}
    else:
        raise SystemExit(f"unknown variant {args.variant}")
    (work / f"{args.variant}.result.json").write_text(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="64 training examples instead of 256")
    ap.add_argument("--examples", type=int, default=None)
    ap.add_argument("--heldout", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every variant (default 1)")
    ap.add_argument("--ours-batch", type=int, default=4, help="ours: examples per micro-batch (divides 16)")
    ap.add_argument("--trl-batch", type=int, default=4, help="TRL: per-device batch (divides 16)")
    ap.add_argument("--skip-bf16", action="store_true", help="no bf16 variants (the default where the CPU has "
                    "no native bf16: emulated, it runs ~100x slower and measures nothing useful)")
    ap.add_argument("--with-bf16", action="store_true", help=argparse.SUPPRESS)  # child: the peak measures bf16
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        return child(args)

    if importlib.util.find_spec("trl") is None:  # the baseline of the headline ratio: no silent null
        sys.exit("train_throughput: TRL, the baseline, is not installed; `make bench` runs this bench in the "
                 "locked venv, which has it (requirements.lock, the `bench` extra)")
    n_train = args.examples or (64 if args.quick else 256)
    n_val = args.heldout or (16 if args.quick else 32)
    with tempfile.TemporaryDirectory(prefix="rd-train-bench-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        stats = prepare(work, n_train, n_val, seed=0)
        (work / "stats.json").write_text(json.dumps(stats))
        from reasondistill.models import bf16_is_native

        bf16 = bf16_is_native() and not args.skip_bf16
        ab = "bf16" if bf16 else "fp32"  # the dtype of the ablations (attention, packing, steady state)
        variants = ["peak", "initial", "ours_fp32", "trl_fp32", "per_example"]
        variants += (["ours_bf16", "trl_bf16"] if bf16 else []) + [f"ours_{ab}_sdpa", f"ours_{ab}_packed",
                                                                     f"ours_{ab}_3_epochs"]
        res = {}
        for v in variants:
            cmd = [sys.executable, __file__, "--variant", v, "--work", str(work), "--threads", str(args.threads),
                   "--ours-batch", str(args.ours_batch), "--trl-batch", str(args.trl_batch),
                   *(["--with-bf16"] if bf16 else [])]
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                res[v] = {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"}
                print(p.stderr[-3000:], file=sys.stderr)
                continue
            res[v] = json.loads((work / f"{v}.result.json").read_text())
            print(f"[train_throughput] {v}: {res[v]}", file=sys.stderr)
        tokens = stats["train"]["tokens"]

        def tps(v):
            return tokens / res[v]["train_s"] if "train_s" in res.get(v, {}) else None

        def cpu_ratio(a, b):  # tokens per CPU-second of a over b
            ca, cb = res.get(a, {}).get("cpu_s"), res.get(b, {}).get("cpu_s")
            return round(cb / ca, 3) if ca and cb else None

        def loss(v):
            return round(res[v]["final_loss"], 4) if "final_loss" in res.get(v, {}) else None

        def best(*names):  # the fastest variant that ran
            ran = [v for v in names if tps(v)]
            return max(ran, key=tps) if ran else names[0]

        ours_key = best("ours_fp32", "ours_bf16")
        trl_key = best("trl_fp32", "trl_bf16")
        use_bf16 = ours_key == "ours_bf16"
        ours, trl, per = tps(ours_key), tps(trl_key), tps("per_example")
        params = res[ours_key].get("params")
        def ratio(a, b):
            return round(a / b, 3) if a and b else None

        def mfu(tok_s, dtype):
            return round(6 * params * tok_s / (res["peak"][dtype] * 1e9), 4) if tok_s and params else None

        # the causal attention's own matmuls (QK^T and PV: 4*d*(t+1) FLOPs at position t forward, x3 with
        # the backward), which 6*N leaves out: per token of the training set, on average
        attn_per_token = 6 * MODEL["num_hidden_layers"] * MODEL["hidden_size"] * stats["train"]["sum_t_t1"] / tokens

        out = {
            "bench": "train_throughput",
            "model": {"architecture": "qwen2", "params": params, **{k: v for k, v in MODEL.items() if k != "architecture"},
                      "tokenizer": "char (local, passed as object)"},
            "data": {"train": stats["train"], "heldout": stats["heldout"], "lengths": "lognormal(median 256, sigma 0.6) clipped to [64, 1024]"},
            "effective_batch": EFFECTIVE_BATCH, "epochs": 1, "threads": args.threads,
            "ours_config": {"batch_size": args.ours_batch, "grad_accum": EFFECTIVE_BATCH // args.ours_batch,
                            "group_by_length": True, "mixed_precision": "bf16" if use_bf16 else "no",
                            "attention": "auto (reasondistill/attention.py blocked causal attention on CPU)",
                            "pad_to_multiple_of": "auto (geometric in bf16 on CPU, 1 in fp32)", "packing": False,
                            "optimizer": "fused AdamW"},
            "ours_dtype": "bf16 autocast" if use_bf16 else "fp32",
            "trl_config": {"per_device_train_batch_size": args.trl_batch,
                           "gradient_accumulation_steps": EFFECTIVE_BATCH // args.trl_batch,
                           "completion_only_loss": True, "gradient_checkpointing": False, "padding_free": False,
                           "packing": False, "train_sampling_strategy": "group_by_length",
                           "attn_implementation": "sdpa", "use_cache": False,
                           "dtype_tried": ["fp32"] + (["bf16 (bf16=True: autocast)"] if bf16 else [])},
            "trl_best": trl_key,
            "per_example_config": {"batch_size": 1, "grad_accum": EFFECTIVE_BATCH, "dtype": "fp32",
                                   "optimizer": "torch.optim.AdamW"},
            "tokens_per_s_ours": round(ours, 1) if ours else None,
            "tokens_per_s": {v: round(tps(v), 1) for v in variants if tps(v)},
            "bf16_pays": use_bf16 if tps("ours_bf16") is not None else None,
            "tokens_per_s_trl": round(trl, 1) if trl else None,
            "tokens_per_s_per_example": round(per, 1) if per else None,
            "speedup_vs_trl": ratio(ours, trl),
            "speedup_vs_per_example": ratio(ours, per),
            "speedup_vs_trl_same_dtype": ratio(ours, tps("trl_bf16" if use_bf16 else "trl_fp32")),
            # the same ratios from CPU time (1 thread: less sensitive to other workers taking the core)
            "speedup_vs_trl_cpu_time": cpu_ratio(ours_key, trl_key),
            "speedup_vs_per_example_cpu_time": cpu_ratio(ours_key, "per_example"),
            "bf16_over_fp32_cpu_time": cpu_ratio("ours_bf16", "ours_fp32"),
            "bf16_native": bf16_is_native(), "ablation_dtype": ab,
            "attention_speedup": ratio(tps(f"ours_{ab}"), tps(f"ours_{ab}_sdpa")),
            # train.packing (each step's 16 examples packed into rows of <= 4 x 1024 tokens) over padding
            "packing_speedup": ratio(tps(f"ours_{ab}_packed"), tps(f"ours_{ab}")),
            "matmul_peak_gflops": {k: round(v, 1) for k, v in res["peak"].items()},
            "mfu": mfu(ours, "bf16" if use_bf16 else "fp32"),
            "mfu_with_attention": round(mfu(ours, "bf16" if use_bf16 else "fp32") * (1 + attn_per_token / (6 * params)), 4)
                                  if ours and params else None,
            # a real run sees each length many times: epochs 2-3 of a 3-epoch run, without the first
            # epoch's one-time costs (oneDNN kernels per new shape, first touches of fresh memory)
            "mfu_steady_state": mfu(tokens / min(res[f"ours_{ab}_3_epochs"]["epoch_s"][1:]), ab)
                                if len(res.get(f"ours_{ab}_3_epochs", {}).get("epoch_s", [])) == 3 else None,
            "mfu_ours_fp32": mfu(tps("ours_fp32"), "fp32"),
            "mfu_per_example": mfu(per, "fp32"),
            "mfu_trl": mfu(trl, "bf16" if trl_key == "trl_bf16" else "fp32"),
            "initial_loss": loss("initial"),
            "final_loss_ours": loss(ours_key),
            "final_loss_trl": loss(trl_key),
            "final_loss_per_example": loss("per_example"),
            "final_losses": {v: loss(v) for v in variants if loss(v) is not None},
            "final_loss_is": "mean answer-token CE on the held-out set (fp32, batch 1) after one epoch",
            "trl_tokenization_matches": (res.get(trl_key, {}).get("tokens_seen_by_trl") == tokens
                                         and res.get(trl_key, {}).get("target_tokens_seen_by_trl") == stats["train"]["target_tokens"]),
            "raw": res,
            "wall_s": round(time.perf_counter() - t0, 1),
            "note": "shared 2-core machine: compare ratios within one run only",
        }
        print(json.dumps(out, indent=1))
        failed = {v: r["error"] for v, r in res.items() if "error" in r}
        if failed:
            sys.exit(f"train_throughput: {len(failed)} variant(s) failed: {failed}")


if __name__ == "__main__":
    main()
