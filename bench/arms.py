"""Shared machinery of the curation benches (bench/curriculum.py, bench/diversity.py): one teacher
generation, several arms that differ only in their curate/build settings, three student seeds each.

Why a module: both benches compare arms the same way and should share one set of teacher traces
(generated once into ``OUT/generated`` and copied into each arm's run directory with its stage
records, so the pipeline skips generation there). Not run by itself; see the two benches.

Statistics, per arm: greedy accuracy per seed; the mean over seeds with a 95% interval from
``with_ci`` over problems of each problem's mean correctness across seeds (bootstrap over problems;
problems are the sampled unit); and, against the first (baseline) arm, the paired difference of
those per-problem means with its 95% percentile-bootstrap interval over problems. Because a few
hundred steps leave greedy accuracy near its floor, each student is also scored by its
cross-entropy per target token on one fixed set of teacher traces (the baseline arm's validation
split, problems no arm trained on): mean over seeds and, against the baseline, the mean paired
(same seed) difference, each with a 95% Student-t interval over the seeds.
"""

from __future__ import annotations

import copy
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

STUDENT = {"init": {"architecture": "llama", "hidden_size": 48, "num_hidden_layers": 4, "num_attention_heads": 4,
                    "intermediate_size": 144, "max_position_embeddings": 256},
           "train": {"epochs": 1, "batch_size": 32, "lr": 3.0e-3, "warmup_ratio": 0.05, "eval_every": 100000,
                     "save_every": 100000, "log_every": 50, "threads": 1, "mixed_precision": "auto"}}


def base_config(out: Path, n_train: int, n_test: int, samples: int, temperature: float, min_ops: int = 1,
                max_ops: int = 4) -> dict[str, Any]:
    return {"seed": 0, "run_dir": str(out / "generated"),
            "task": {"name": "chained_arith", "min_ops": min_ops, "max_ops": max_ops, "n_train": n_train,
                     "n_test": n_test},
            "teacher": {"model": "bundled:tiny-arith-teacher"},
            "generate": {"n": samples, "temperature": temperature, "max_new_tokens": 96, "batch_size": 256, "seed": 0},
            "curate": {"max_per_problem": 1},
            "build": {"max_length": 160, "val_fraction": 0.02},
            "evaluate": {"batch_size": 250, "max_new_tokens": 96, "teacher": False}}


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def generate(base: dict[str, Any]) -> dict[str, Any]:
    from reasondistill.config import RunConfig
    from reasondistill.pipeline import Pipeline

    t0 = time.perf_counter()
    res = Pipeline(RunConfig.model_validate(base), log=log, show_progress=False).generate()
    return {"traces": res.get("traces"), "seconds": round(time.perf_counter() - t0, 1)}


def _copy_generation(src: Path, dst: Path) -> None:
    for d in ("problems", "generate"):
        if not (dst / d).exists():
            shutil.copytree(src / d, dst / d)
    (dst / ".stages").mkdir(parents=True, exist_ok=True)
    for f in ("problems.json", "generate.json"):
        if not (dst / ".stages" / f).exists():
            shutil.copy2(src / ".stages" / f, dst / ".stages" / f)


def held_out_ce(model_dir: Path, val: Path, batch_size: int = 64) -> float:
    """Mean cross-entropy per target token of a trained student on a fixed built split (the baseline
    arm's validation traces), so every arm is scored on the same examples."""
    import torch

    from reasondistill.data.dataset import TokenizedDataset, collate
    from reasondistill.models import load_model, load_tokenizer

    model, tok = load_model(str(model_dir)), load_tokenizer(str(model_dir))
    ds = TokenizedDataset(val)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ds), batch_size):
            b = collate(ds, list(range(i, min(i + batch_size, len(ds)))), tok.pad_token_id)
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
            labels = b["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                                     labels.reshape(-1), ignore_index=-100, reduction="sum")
            total, count = total + float(loss), count + int((labels != -100).sum())
    return total / count


def run_arm(base: dict[str, Any], name: str, settings: dict[str, Any], seeds: list[int], out: Path,
            epochs: float = 1, common_val: Path | None = None) -> dict[str, Any]:
    """Curate, build, train one student per seed, evaluate; the per-problem correctness per seed."""
    from reasondistill.config import RunConfig
    from reasondistill.pipeline import Pipeline
    from reasondistill.records import iter_jsonl

    run_dir = out / name
    _copy_generation(Path(base["run_dir"]), run_dir)
    students = [_merge(STUDENT, {"name": f"s{seed}", "seed": seed, "train": {"epochs": epochs}}) for seed in seeds]
    cfg = RunConfig.model_validate(_merge(base, settings) | {"run_dir": str(run_dir), "students": students})
    pipe = Pipeline(cfg, log=log, show_progress=False)
    t0 = time.perf_counter()
    curate = pipe.curate()
    pipe.build()
    training = pipe.train()
    pipe.evaluate()
    correct = {}
    for seed in seeds:
        rows = [r for _, r in iter_jsonl(pipe.rd.eval(f"s{seed}").completions)]
        correct[seed] = {r["problem_id"]: r["verdict"] == "correct" for r in rows}
    build = json.loads(pipe.rd.build(f"s{seeds[0]}").stats.read_text())
    val = common_val or pipe.rd.build(f"s{seeds[0]}").val
    ce = {s: held_out_ce(pipe.rd.train(f"s{s}").final, val) for s in seeds}
    return {"settings": settings, "curate": {k: curate.get(k) for k in ("kept", "dropped", "select",
                                                                      "pass_rate_band", "problems_with_a_kept_trace")},
            "train_examples": build["train"]["examples"], "steps": training[f"s{seeds[0]}"].get("steps"),
            "final_val_loss": {s: training[f"s{s}"].get("final_val_loss") for s in seeds}, "held_out_ce": ce,
            "held_out_set": str(val),
            "seconds": round(time.perf_counter() - t0, 1), "correct": correct}


def _t_interval(xs: list[float]) -> dict[str, Any]:
    """Mean over seeds with its 95% Student-t interval (paired by seed when ``xs`` are differences)."""
    from statistics import mean, stdev

    t975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}
    m = mean(xs)
    if len(xs) < 2:
        return {"value": m, "ci_low": None, "ci_high": None, "n": len(xs)}
    half = t975.get(len(xs) - 1, 1.96) * stdev(xs) / len(xs) ** 0.5
    return {"value": m, "ci_low": m - half, "ci_high": m + half, "n": len(xs)}


def summarize(arms: dict[str, dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Per arm: accuracy per seed, mean with its 95% CI, paired difference against the first arm."""
    import numpy as np

    from reasondistill.evaluate.metrics import bootstrap_ci, with_ci

    names = list(arms)
    pids = sorted(arms[names[0]]["correct"][seeds[0]])
    per_problem = {a: np.array([np.mean([arms[a]["correct"][s][p] for s in seeds]) for p in pids]) for a in names}
    out = {}
    for a in names:
        accs = [float(np.mean(list(arms[a]["correct"][s].values()))) for s in seeds]
        entry = {k: v for k, v in arms[a].items() if k != "correct"}
        entry.update({"accuracy_per_seed": dict(zip(map(str, seeds), accs)),
                      "accuracy_seed_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                      "accuracy_mean": with_ci(per_problem[a].tolist(), n_boot=2000, seed=0)})
        ce = [arms[a]["held_out_ce"][s] for s in seeds]
        entry["held_out_ce_mean"] = _t_interval(ce)
        if a != names[0]:
            diff = per_problem[a] - per_problem[names[0]]
            low, high = bootstrap_ci(diff.tolist(), n_boot=2000, seed=0)
            entry[f"accuracy_minus_{names[0]}"] = {"value": float(diff.mean()), "ci_low": low, "ci_high": high,
                                                  "n": len(pids)}
            entry[f"held_out_ce_minus_{names[0]}"] = _t_interval(
                [arms[a]["held_out_ce"][s] - arms[names[0]]["held_out_ce"][s] for s in seeds])
        out[a] = entry
    return out


def study(bench: str, doc: str, arms: dict[str, dict[str, Any]], argv: list[str] | None = None,
          prefix: str = "", epochs_help: str = "student epochs") -> dict[str, Any]:
    """One curation study from the command line: the shared teacher traces, then each arm (run dir
    ``<out>/<prefix><arm>``) over the seeds, all scored on the first arm's held-out set; prints and
    returns the JSON result."""
    import argparse
    import json
    import time

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--epochs", type=float, default=4, help=epochs_help)
    ap.add_argument("--out", default="runs/bench_curation")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    out = Path(args.out)
    base = base_config(out, args.n_train, args.n_test, args.samples, args.temperature)
    gen = generate(base)
    results, common_val = {}, None
    for name, settings in arms.items():
        log(f"arm {name}")
        results[name] = run_arm(base, f"{prefix}{name}", settings, args.seeds, out, args.epochs, common_val)
        common_val = common_val or Path(results[name]["held_out_set"])
    result = {"bench": bench, "task": base["task"], "generate": base["generate"] | gen, "seeds": args.seeds,
              "epochs": args.epochs,
              "arms": summarize(results, args.seeds), "wall_seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(result, indent=2))
    return result
