"""Why DPO lowers the study's accuracy (bench/distill_vs_rl.py, arm b/dpo): a one-seed diagnostic, not a
study. The study's weak student, the study's DPO settings (beta 0.1, lr 1e-4, 16 pairs per step, pairs:
a verified teacher trace vs the student's own wrong answer), with every implicit reward logged, the
test accuracy every 10 steps, and the two levers: how many problems the pairs come from and the
chosen-side NLL of RPO (``policy.dpo_sft``). Prints JSON lines, one per run and checkpoint.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/distill_vs_rl.py --out runs/distill_vs_rl   # the weak student
    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/dpo_diagnosis.py --weak runs/distill_vs_rl/weak
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weak", default="runs/distill_vs_rl/weak", help="the study's weak student (its OUT/weak)")
    ap.add_argument("--steps", type=int, default=60, help="DPO steps (the study's DPO arm took about 60)")
    ap.add_argument("--runs", default="64:0,64:1,512:0", help="comma-separated PROBLEMS:DPO_SFT runs (the study: 64:0)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import distill_vs_rl as study
    from reasondistill.evaluate.accuracy import evaluate_model
    from reasondistill.models import load_model, load_tokenizer
    from reasondistill.records import Trace
    from reasondistill.tasks.arith import ChainedArithmetic
    from reasondistill.train.pairs import build_pairs
    from reasondistill.train.policy import PolicyTrainer
    from reasondistill.train.policy_config import PolicyConfig

    tok = load_tokenizer("bundled:tiny-arith-teacher")
    study.TOK = tok
    task = ChainedArithmetic(min_ops=3, max_ops=5)
    problems, examples, _, _ = study.teacher_data(types.SimpleNamespace(n_train=4000), tok, task)
    test = task.problems("test", 150, seed=0)
    chosen = {p.id: (p, c) for p, _, c in examples}
    traces = [Trace(p.id, 0, "", "", "", 0, 0, "stop", "t") for p, _, _ in examples]

    def accuracy(model) -> float:
        return evaluate_model(model, test, task, batch_size=len(test), max_new_tokens=80, tokenizer=tok)["accuracy"]

    for run in args.runs.split(","):
        n_problems, sft = int(run.split(":")[0]), float(run.split(":")[1])
        model = load_model(args.weak)
        pairs = build_pairs(model, tok, task, {k: v[0] for k, v in chosen.items()}, traces, n_problems=n_problems,
                            samples=2, temperature=1.0, max_new_tokens=80, seed=0)
        for pr in pairs:  # chosen: the built example (as the study)
            pr["chosen_ids"] = chosen[pr["problem_id"]][1]
        cfg = PolicyConfig(objective="dpo", dpo_beta=0.1, dpo_sft=sft, prompts_per_step=16, lr=1e-4, micro_batch=32,
                           save_every=10 ** 6, steps=10 ** 6)
        print(json.dumps({"problems": n_problems, "dpo_sft": sft, "pairs": len(pairs), "step": 0,
                          "accuracy": accuracy(model)}), flush=True)
        with tempfile.TemporaryDirectory() as d:
            trainer = PolicyTrainer(model, tok, problems, task, cfg, d, 0, pairs=pairs, show_progress=False)
            for step in range(args.steps):
                out = trainer.dpo_step(step)
                if (step + 1) % 10 == 0:
                    keep = ("dpo_margin", "dpo_reward_chosen", "dpo_reward_rejected")
                    print(json.dumps({"problems": n_problems, "dpo_sft": sft, "step": step + 1,
                                      **{k: round(out[k], 3) for k in keep}, "accuracy": accuracy(model)}), flush=True)


if __name__ == "__main__":
    main()
