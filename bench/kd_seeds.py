"""Do soft targets help on the demo task? student_traces vs student_kd over several seeds, with spread.

    python bench/kd_seeds.py                       # 3 seeds, the demo's config; one JSON object (~17 min)
    python bench/kd_seeds.py --seeds 0 1 --out runs/kd_seeds key=value ...   # demo-config overrides

The demo (``configs/demo.yaml``) trains one seed of each; this script reuses its config exactly
(same teacher traces, same steps), replaces the students by ``traces_s<seed>`` (hard distillation)
and ``kd_s<seed>`` (hard + soft from the teacher's offline top-k, the demo's ``student_kd``
settings) for each seed, trains them two at a time and evaluates them greedily on the same
held-out problems. The seed changes the student's initialisation and batch order; the data stay
fixed. The JSON gives per-seed accuracy and final validation cross-entropy for each variant,
their mean and sample standard deviation, and ``kd_minus_traces_accuracy`` (mean difference).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/kd_seeds")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    args = ap.parse_args(argv)

    from reasondistill.config import demo_config_path
    from reasondistill.config import RunConfig, load_config
    from reasondistill.pipeline import Pipeline

    base = load_config(demo_config_path(), [f"run_dir={args.out}", *args.overrides])
    traces, kd = base.student("student_traces"), base.student("student_kd")
    students = []
    for seed in args.seeds:
        students.append(traces.model_copy(update={"name": f"traces_s{seed}", "seed": seed}))
        students.append(kd.model_copy(update={"name": f"kd_s{seed}", "seed": seed}))
    cfg = RunConfig.model_validate({**base.model_dump(), "students": [s.model_dump() for s in students],
                                    "evaluate": {**base.evaluate.model_dump(), "teacher": False}})
    pipe = Pipeline(cfg, log=lambda m: print(m, file=sys.stderr))
    pipe.generate()
    pipe.curate()
    pipe.build()
    training = pipe.train()
    evaluation = pipe.evaluate()

    def variant(prefix: str) -> dict:
        acc = [evaluation[f"{prefix}_s{s}"]["accuracy"] for s in args.seeds]
        val = [training[f"{prefix}_s{s}"]["final_val_loss"] for s in args.seeds]
        spread = (lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0)
        return {"accuracy": acc, "accuracy_mean": statistics.mean(acc), "accuracy_std": spread(acc),
                "final_val_ce": val, "final_val_ce_mean": statistics.mean(val), "final_val_ce_std": spread(val),
                "steps": training[f"{prefix}_s{args.seeds[0]}"]["steps"]}

    out = {"seeds": args.seeds, "n_test": cfg.task.n_test, "kd": kd.distill.model_dump(),
           "traces": variant("traces"), "student_kd": variant("kd")}
    out["kd_minus_traces_accuracy"] = out["student_kd"]["accuracy_mean"] - out["traces"]["accuracy_mean"]
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
