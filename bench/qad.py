"""Quantization-aware distillation on the demo task: full precision vs PTQ vs QAT vs QAD, int4 and int8.

    python bench/qad.py                                  # 3 seeds, one JSON object on stdout (44 min, 1 thread, busy 2-core machine)
    python bench/qad.py --seeds 0 --out runs/qad_try key=value ...   # overrides of the run config below

One run directory (``--out``): the bundled teacher's verified traces for chained arithmetic
(``--n-train`` problems), one small student per seed trained on them in fp32 (the demo's
architecture, ``--steps`` optimizer steps), then the quantize stage's six variants of each student:
ptq / qat / qad at int4 (group-wise, ``--group`` weights per scale) and int8 (per channel). QAT is
cross-entropy on the same traces through fake-quantized weights; QAD is forward KL to the student's
own full-precision weights on those traces (``alpha`` 1, no CE), both ``--ft-steps`` steps at
``--ft-lr``, straight-through estimator (torchao). Every number is the greedy accuracy of the
*converted* model (real int weights, loaded back through transformers) on the same ``--n-test``
held-out problems, with the project's verifier; the run's report.json/report.html hold the
per-seed table with CIs.

JSON: ``{"int4": {"bf16": mean, "ptq": mean, "qat": mean, "qad": mean}, "int8": {...}, ...}``: means over
seeds. "bf16" is the key the issue asks for; the reference ran in float32 (this CPU has no native
bf16; see ``reference_dtype``). Beside it: per-seed accuracies, 95% CIs (t over seeds; and a
bootstrap over problems x seeds), paired differences to full precision, weight bytes and decode
tokens/s, the settings and the wall time. Stages are resumable: an interrupted bench continues
where it stopped when run again with the same arguments.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

METHODS = ("ptq", "qat", "qad")
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}  # two-sided 95% t quantiles by degrees of freedom


def run_config(args) -> dict:
    """The bench's run: the demo's student on the demo's task one operation shorter (2-4: it learns in fewer
    steps), fp32, six quantized variants per student."""
    student = {"architecture": "llama", "hidden_size": 48, "num_hidden_layers": 4, "num_attention_heads": 4,
               "intermediate_size": 144, "max_position_embeddings": 256}
    train = {"max_steps": args.steps, "epochs": None, "batch_size": 64, "lr": 3.0e-3, "warmup_ratio": 0.05,
             "eval_every": 500, "save_every": 250, "log_every": 25, "threads": 1, "mixed_precision": "no"}
    finetune = {"max_steps": args.ft_steps, "epochs": None, "batch_size": 64, "lr": args.ft_lr, "warmup_ratio": 0.0,
                "min_lr_ratio": 0.1, "eval_every": args.ft_steps, "save_every": 50, "log_every": 25, "threads": 1,
                "mixed_precision": "no"}
    variants = []
    for bits, group in ((4, args.group), (8, None)):
        for method in METHODS:
            v = {"method": method, "bits": bits, "group_size": group,
                 "speed_prompts": args.speed_prompts if method == "ptq" else 0}  # speed depends on the format only
            if method != "ptq":
                v["train"] = finetune
            variants.append(v)
    return {"run_dir": args.out, "seed": 0,
            "task": {"name": "chained_arith", "min_ops": 2, "max_ops": 4, "n_train": args.n_train,
                     "n_test": args.n_test},
            "teacher": {"model": "bundled:tiny-arith-teacher"},
            "generate": {"n": 1, "temperature": 0.7, "max_new_tokens": 96, "batch_size": 128, "seed": 0},
            "build": {"max_length": 160, "val_fraction": 0.05},
            "students": [{"name": f"s{seed}", "seed": seed, "init": student, "train": train, "quantize": variants}
                         for seed in args.seeds],
            "evaluate": {"batch_size": 400, "max_new_tokens": 96, "teacher": False}}


def t_interval(xs: list[float]) -> list[float] | None:
    if len(xs) < 2:
        return None
    m, half = statistics.mean(xs), T_975.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / len(xs) ** 0.5
    return [round(m - half, 4), round(m + half, 4)]


def correct(path: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["problem_id"]: float(r["verdict"] == "correct") for r in rows}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/qad")
    ap.add_argument("--n-train", type=int, default=6000, help="training problems (teacher traces)")
    ap.add_argument("--n-test", type=int, default=300, help="held-out problems every model is evaluated on")
    ap.add_argument("--steps", type=int, default=1800, help="optimizer steps of each full-precision student")
    ap.add_argument("--ft-steps", type=int, default=100, help="optimizer steps of each QAT / QAD fine-tune")
    ap.add_argument("--ft-lr", type=float, default=3e-4, help="peak learning rate of QAT / QAD (cosine to 10%%)")
    ap.add_argument("--group", type=int, default=16, help="int4 weights per scale (the student's widths: 48, 144)")
    ap.add_argument("--speed-prompts", type=int, default=8, help="prompts decoded at batch 1 for tokens/s")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from reasondistill.config import RunConfig, apply_override
    from reasondistill.evaluate.metrics import with_ci
    from reasondistill.pipeline import Pipeline
    from reasondistill.quantize.scheme import silence_torchao_import

    from transformers.utils import logging as hf_logging

    silence_torchao_import()
    hf_logging.disable_progress_bar()
    data = run_config(args)
    for ov in args.overrides:
        apply_override(data, ov)
    cfg = RunConfig.model_validate(data)
    t0 = time.perf_counter()
    pipe = Pipeline(cfg, log=lambda m: print(m, file=sys.stderr), show_progress=False)
    pipe.generate()
    pipe.curate()
    pipe.build()
    training = pipe.train()
    evaluation = pipe.evaluate()
    quantized = pipe.quantize()
    pipe.report()

    out: dict = {}
    per_seed: dict = {}
    pooled: dict = {}
    for bits in (4, 8):
        key = f"int{bits}"
        out[key], per_seed[key], pooled[key] = {}, {}, {}
        cols = {"bf16": [], **{m: [] for m in METHODS}}
        outcomes = {k: [] for k in cols}
        deltas = {m: [] for m in METHODS}
        for s in cfg.students:
            ref = correct(pipe.rd.eval(s.name).completions)
            cols["bf16"].append(evaluation[s.name]["accuracy"])
            outcomes["bf16"] += list(ref.values())
            for m in METHODS:
                label = f"{m}-int{bits}"
                cols[m].append(quantized[f"{s.name}/{label}"]["accuracy"])
                got = correct(pipe.rd.quantize(s.name, label).eval.completions)
                outcomes[m] += list(got.values())
                deltas[m] += [got[i] - ref[i] for i in ref]
        for k, xs in cols.items():
            out[key][k] = round(statistics.mean(xs), 4)
            per_seed[key][k] = xs
            pooled[key][k] = {"mean": round(statistics.mean(xs), 4), "ci95_seeds_t": t_interval(xs),
                              "ci95_problems_bootstrap": [round(x, 4) for x in
                                                          (lambda c: (c["ci_low"], c["ci_high"]))(with_ci(outcomes[k]))]}
        for m in METHODS:
            d = with_ci(deltas[m])
            pooled[key][m]["minus_full_precision_points"] = {
                "mean": round(100 * d["value"], 2), "ci95_paired_bootstrap": [round(100 * d["ci_low"], 2),
                                                                            round(100 * d["ci_high"], 2)]}
    first = cfg.students[0].name
    size_speed = {}
    for bits in (4, 8):
        sm = quantized[f"{first}/ptq-int{bits}"]
        size_speed[f"int{bits}"] = {"weight_bytes": sm["quantized"]["weight_bytes"], "size_ratio": sm["size_ratio"],
                                    "decode_tokens_per_s": sm["quantized"].get("tokens_per_s"),
                                    "speed_ratio": sm["speed_ratio"], "format": sm["format"]}
    size_speed["full_precision"] = {"weight_bytes": sm["reference"]["weight_bytes"], "dtype": "float32",
                                    "decode_tokens_per_s": sm["reference"].get("tokens_per_s")}
    gap4 = 100 * (out["int4"]["bf16"] - out["int4"]["qad"])
    result = {
        **out,
        "reference_dtype": "float32: the key 'bf16' is the full-precision student, run in fp32 (this CPU has no "
                           "native bf16)",
        "per_seed": per_seed, "ci95": pooled,
        "goal": {"int4_ptq_loss_points": round(100 * (out["int4"]["bf16"] - out["int4"]["ptq"]), 2),
                 "int4_qad_gap_points": round(gap4, 2), "int4_qad_within_1_point": gap4 <= 1.0},
        "size_and_speed": size_speed,
        "training": {s.name: {k: training[s.name].get(k) for k in ("steps", "final_val_loss", "wall_time_s")}
                     for s in cfg.students},
        "settings": {"seeds": args.seeds, "n_train": args.n_train, "n_test": args.n_test, "steps": args.steps,
                     "ft_steps": args.ft_steps, "ft_lr": args.ft_lr, "int4_group_size": args.group,
                     "int8": "per channel", "qad": "forward KL to the student's own fp32 weights, alpha 1, T 1",
                     "overrides": args.overrides, "run_dir": args.out},
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
