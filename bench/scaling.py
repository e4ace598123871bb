"""Does the pipeline scale linearly with the number of problems? generate+curate+build+train.

    python bench/scaling.py            # 1x = 1024 problems; 1x, 2x, 4x; one JSON object (~2 min)
    python bench/scaling.py --quick    # 1x = 256 problems
    python bench/scaling.py --base 256 --threads 2

Each size runs ``reasondistill.pipeline.Pipeline`` in a fresh run directory, one stage after the
other (``generate``, ``curate``, ``build``, ``train``; evaluate and report are left out), and
times each stage. Config (small, fixed except ``task.n_train``): chained arithmetic 3-5 ops,
teacher = the bundled ``tiny-arith-teacher`` if shipped, otherwise a locally built random
~0.8M-parameter Llama saved to a temporary directory (its traces are noise, so curation then
keeps everything: ``require_correct`` and ``require_think`` off); n = 2 samples,
max_new_tokens 64, generation batch 64 rows (in fp32, 64 and 128 rows are about as fast: generate_throughput.py); a 2-layer hidden-64 Llama student trained for one
epoch at batch 32 (fp32, ``threads``).

``time_ratio_4x_over_1x`` is total wall time at 4x over 1x: 4 is linear; below 4 means fixed
costs (model loading, Accelerator set-up, worker start-up) still weigh at 1x; above ~4.6 is
super-linear and a problem. A least-squares fit ``t = fixed_s + per_problem_s * n`` over the
three sizes separates the two. The verdict: super-linear if the 4x/1x ratio exceeds 4.6 or the time
per problem grows by more than 20% from 2x to 4x; linear if the ratio is at least 3.4; else linear
plus a fixed cost. The marginal ratio (t4 - t2) / (t2 - t1), 2 for a linear stage, is reported per
stage too, but it is a ratio of differences of noisy times: read it with care.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ASSET = Path(__file__).resolve().parents[1] / "src/reasondistill/assets/tiny-arith-teacher"
LOCAL_TEACHER = {"architecture": "llama", "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
                 "intermediate_size": 384, "max_position_embeddings": 512}
STAGES = ("generate", "curate", "build", "train")


def teacher_dir(tmp: Path) -> tuple[str, bool]:
    if (ASSET / "config.json").exists():
        return "bundled:tiny-arith-teacher", True
    from reasondistill.models import build_char_tokenizer, init_model

    tok = build_char_tokenizer()
    d = tmp / "teacher"
    init_model(LOCAL_TEACHER, tok, seed=0).save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    return str(d), False


def config(run_dir: Path, teacher: str, bundled: bool, n_train: int, threads: int):
    from reasondistill.config import RunConfig

    return RunConfig.model_validate({
        "run_dir": str(run_dir), "seed": 0,
        "task": {"name": "chained_arith", "min_ops": 3, "max_ops": 5, "n_train": n_train, "n_test": 16},
        "teacher": {"model": teacher},
        "generate": {"n": 2, "temperature": 0.7, "max_new_tokens": 64, "batch_size": 64, "seed": 0},
        "curate": {"require_correct": bundled, "require_think": bundled, "dedup": True, "max_per_problem": 1},
        "build": {"think_tags": True, "max_length": 160, "val_fraction": 0.05},
        "students": [{"name": "s", "target": "traces",
                      "init": {"architecture": "llama", "hidden_size": 64, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "intermediate_size": 192, "max_position_embeddings": 256},
                      "train": {"epochs": 1, "batch_size": 32, "lr": 3e-3, "threads": threads, "log_every": 10,
                                "eval_every": 10**6, "save_every": 10**6}}],
    })


def run_size(root: Path, teacher: str, bundled: bool, n_train: int, threads: int) -> dict:
    from reasondistill.pipeline import Pipeline

    p = Pipeline(config(root / f"run-{n_train}", teacher, bundled, n_train, threads), log=lambda _: None,
                 show_progress=False)
    p.problems()
    times, info = {}, {}
    for stage in STAGES:
        t = time.perf_counter()
        out = getattr(p, stage)()
        times[stage] = round(time.perf_counter() - t, 2)
        if stage == "curate":
            info["kept"] = out.get("kept") if isinstance(out, dict) else None
        if stage == "build":
            info["train_examples"] = out["s"]["train"]["examples"]
        if stage == "train":
            info["train_steps"] = out["s"]["steps"]
    return {"n_train": n_train, "seconds": times, "total_s": round(sum(times.values()), 2), **info}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1x = 256 problems instead of 1024")
    ap.add_argument("--base", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import numpy as np
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    base = args.base or (256 if args.quick else 1024)
    with tempfile.TemporaryDirectory(prefix="rd-scaling-") as tmp:
        tmp = Path(tmp)
        teacher, bundled = teacher_dir(tmp)
        run_size(tmp / "warm", teacher, bundled, 8, args.threads)  # imports and first-call costs, untimed
        runs = [run_size(tmp, teacher, bundled, base * k, args.threads) for k in (1, 2, 4)]
    n = np.array([r["n_train"] for r in runs], dtype=float)
    tot = np.array([r["total_s"] for r in runs])
    slope, fixed = np.polyfit(n, tot, 1)
    ratio = tot[2] / tot[0]
    per_stage = {}
    for s in STAGES:
        t = [r["seconds"][s] for r in runs]
        per_stage[s] = {"ratio_4x_over_1x": round(t[2] / max(t[0], 1e-9), 2),
                        "marginal_ratio": round((t[2] - t[1]) / (t[1] - t[0]), 2) if t[1] - t[0] > 0.05 else None}
    marginal = (tot[2] - tot[1]) / max(tot[1] - tot[0], 1e-9)
    growth = (tot[2] / n[2]) / (tot[1] / n[1])  # seconds per problem at 4x over at 2x (fixed costs mostly amortised)
    if ratio > 4.6 or growth > 1.2:
        verdict = f"super-linear: the time per problem grows ({growth:.2f}x from 2x to 4x)"
    elif ratio >= 3.4:
        verdict = f"linear (time per problem at 4x / at 2x = {growth:.2f})"
    else:
        verdict = (f"linear plus a fixed cost: the time per problem is flat from 2x to 4x ({growth:.2f}x) and about "
                   f"{fixed:.1f} s of fixed cost (model loading, Accelerator set-up) weighs at 1x")
    print(json.dumps({
        "bench": "scaling", "teacher": teacher if bundled else "local random llama (bundled teacher not shipped)",
        "threads": args.threads, "sizes": [r["n_train"] for r in runs], "runs": runs, "per_stage": per_stage,
        "time_ratio_4x_over_1x": round(float(ratio), 2), "marginal_ratio_4x2x_over_2x1x": round(float(marginal), 2),
        "time_per_problem_4x_over_2x": round(float(growth), 3),
        "fit_fixed_s": round(float(fixed), 2), "fit_per_problem_s": round(float(slope), 4), "verdict": verdict,
        "note": "shared 2-core machine: timings are noisy",
    }, indent=1))


if __name__ == "__main__":
    main()
