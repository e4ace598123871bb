"""When to distil and when to use RL, on the built-in task: a tiny, honest version of the R1 / Qwen3 /
Thinking Machines comparisons. Prints JSON (one entry per arm: ``accuracy`` mean over seeds, ``ci95``,
``tokens``) grouped under ``a``, ``b``, ``c``, and writes the accuracy-vs-compute plot.

a. from scratch at equal compute: the demo student trained by GRPO alone vs distilled on traces (SFT);
b. from a weak SFT student (SFT on a fraction of the traces until ~30% accuracy; one student shared by
   the seeds, its compute counted at the start of every b arm), at equal compute: more SFT, GRPO,
   on-policy distillation (full-vocabulary reverse KL to the teacher on the student's samples), GRPO
   after on-policy distillation (half the budget each), DPO on pipeline-built pairs;
c. the students of a and b on longer chains than any they trained on (held out).

Compute = tokens generated (rollouts, pair building) + tokens through a student forward+backward +
tokens the teacher scored; wall time is reported beside it. The teacher's traces (bundled teacher,
T = 0.7, verified correct) are made once and shared by all arms and seeds; a seed changes the student's
initialisation, data order and rollouts. 95% CIs are t-intervals over seeds.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/distill_vs_rl.py --out runs/distill_vs_rl

The weak student is saved to ``OUT/weak/`` and reused by a rerun with the same ``--out`` (it is the
slow part: ~3.6M tokens of SFT); delete that directory after changing --n-train, --weak-* or --sft-*.
``OUT/result.json`` is rewritten after every seed, so a run cut short leaves its finished seeds.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

STUDENT = {"architecture": "llama", "hidden_size": 48, "num_hidden_layers": 4, "num_attention_heads": 4,
           "intermediate_size": 144, "max_position_embeddings": 256}  # the demo's 0.13M student
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}


def ci95(xs: list[float]) -> float:
    if len(xs) < 2:
        return float("nan")
    return T95.get(len(xs) - 1, 1.96) * float(np.std(xs, ddof=1)) / math.sqrt(len(xs))


def teacher_data(args, tok, task):
    """Verified teacher traces for ``args.n_train`` problems, as (problem, prompt ids, completion ids)."""
    from reasondistill.curate.verdicts import judge_many
    from reasondistill.prompts import render_prompts
    from reasondistill.teachers.hf import HFTeacher
    from reasondistill.teachers.sampling import SamplingParams
    from reasondistill.thinking import format_target

    problems = task.problems("train", args.n_train, seed=0)
    teacher = HFTeacher("bundled:tiny-arith-teacher")
    traces = [t for batch in teacher.sample(problems, SamplingParams(n=1, temperature=0.7, max_new_tokens=96,
                                                                     batch_size=256, seed=0)) for t in batch]
    by_id = {p.id: p for p in problems}
    verdicts = judge_many(task, [(by_id[t.problem_id], t.text, t.finish_reason, 0) for t in traces])
    kept = [t for t, v in zip(traces, verdicts) if v.verdict == "correct" and t.thinking]
    prompts = tok(render_prompts(tok, [by_id[t.problem_id].prompt for t in kept]),
                  add_special_tokens=False)["input_ids"]
    comps = tok([format_target(t.thinking, t.answer) for t in kept], add_special_tokens=False)["input_ids"]
    examples = [(by_id[t.problem_id], p, c + [tok.eos_token_id]) for t, p, c in zip(kept, prompts, comps)]
    return problems, examples, teacher.model, {"traces": len(traces), "verified": len(kept)}


class Arm:
    """A student, its compute counter and its accuracy-vs-compute curve."""

    def __init__(self, name, model, evaluate, tokens=0, wall=0.0):
        self.name, self.model, self.evaluate = name, model, evaluate
        self.tokens, self.wall, self.curve = tokens, wall, []

    def point(self):
        acc = self.evaluate(self.model)
        self.curve.append({"tokens": int(self.tokens), "wall_s": round(self.wall, 2), "accuracy": acc})
        return acc


def sft(arm: Arm, examples, budget: int, args, seed: int, points: int) -> None:
    """Plain SFT (AdamW, constant lr) on random batches of traces until ``budget`` more tokens."""
    from reasondistill.train.policy import forward_logits, sequence_batch
    from reasondistill.train.policy_losses import token_logprobs

    model = arm.model
    model.train()
    opt = getattr(arm, "sft_opt", None) or torch.optim.AdamW(model.parameters(), lr=args.sft_lr, weight_decay=0.0)
    arm.sft_opt = opt  # kept across calls on the same arm
    rng = np.random.default_rng([seed, 0x5F7])
    end, marks = arm.tokens + budget, [arm.tokens + budget * (i + 1) / points for i in range(points)]
    while arm.tokens < end:
        t0 = time.perf_counter()
        idx = rng.choice(len(examples), size=args.sft_batch, replace=False)
        b = sequence_batch([examples[i][1] for i in idx], [examples[i][2] for i in idx], 0)
        lp = token_logprobs(forward_logits(model, b), b["input_ids"][:, 1:])
        loss = -(lp * b["mask"]).sum() / b["mask"].sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        arm.tokens += int(b["attention_mask"].sum())
        arm.wall += time.perf_counter() - t0
        while marks and arm.tokens >= marks[0]:
            marks.pop(0)
            arm.point()
            model.train()


def policy(arm: Arm, cfg, problems, task, teacher, budget: int, seed: int, points: int, pairs=None) -> None:
    """Steps of train/policy.py's trainer until ``budget`` more tokens (generated + trained + teacher)."""
    import tempfile

    from reasondistill.train.policy import PolicyTrainer

    with tempfile.TemporaryDirectory() as d:
        tr = PolicyTrainer(arm.model, TOK, problems, task, cfg, d, seed, teacher=teacher, pairs=pairs,
                           show_progress=False)
        end, marks = arm.tokens + budget, [arm.tokens + budget * (i + 1) / points for i in range(points)]
        step = 0
        while arm.tokens < end:
            t0 = time.perf_counter()
            out = tr.dpo_step(step) if cfg.objective == "dpo" else tr.rollout_step(step)
            arm.tokens += out.get("tokens_generated", 0) + out.get("tokens_trained", 0) + out.get("teacher_tokens", 0)
            arm.wall += time.perf_counter() - t0
            step += 1
            while marks and arm.tokens >= marks[0]:
                marks.pop(0)
                arm.point()
                arm.model.train()


TOK = None


def run_seed(seed: int, args, problems, examples, teacher, task, test, long_test, log, weak) -> dict:
    from reasondistill.evaluate.accuracy import evaluate_model
    from reasondistill.models import init_model
    from reasondistill.train.pairs import build_pairs
    from reasondistill.records import Trace
    from reasondistill.train.policy_config import PolicyConfig

    def acc(model, probs=test, max_new=args.max_new):
        m = evaluate_model(model, probs, task, batch_size=len(probs), max_new_tokens=max_new, tokenizer=TOK)
        return m["accuracy"]

    common = dict(prompts_per_step=args.prompts, group_size=args.group, max_new_tokens=args.max_new, lr=args.rl_lr,
                  micro_batch=args.prompts * args.group, save_every=10 ** 6, steps=10 ** 6)
    grpo = PolicyConfig(objective="grpo", loss_norm="token", scale_rewards=False, **common)
    onp = PolicyConfig(objective="on_policy", divergence="jsd", beta=1.0,
                       **{**common, "prompts_per_step": args.prompts * args.group, "group_size": 1})
    dpo = PolicyConfig(objective="dpo", dpo_beta=0.1, **{**{k: v for k, v in common.items() if k != "group_size"},
                                                          "prompts_per_step": args.prompts * args.group // 2,
                                                          "lr": args.rl_lr})
    out, B = {"a": {}, "b": {}, "c": {}}, args.budget

    # a. from scratch, equal compute
    fresh = init_model(STUDENT, TOK, seed=seed)
    for name, go in (("sft_traces", lambda a: sft(a, examples, B, args, seed, args.points)),
                     ("grpo_only", lambda a: policy(a, grpo, problems, task, None, B, seed, args.points))):
        arm = Arm(name, copy.deepcopy(fresh), acc)
        arm.point()
        go(arm)
        out["a"][name] = arm
        log(f"seed {seed} a/{name}: {arm.curve[-1]}")
    # b. the weak SFT student (shared by the seeds, see weak_student), then equal compute
    log(f"seed {seed} weak start: {weak.curve[-1]}")
    plans = {"more_sft": [("sft", B)], "grpo": [("grpo", B)], "on_policy": [("onp", B)],
             "on_policy_then_grpo": [("onp", B // 2), ("grpo", B - B // 2)], "dpo": [("dpo", B)]}
    for name, plan in plans.items():
        arm = Arm(name, copy.deepcopy(weak.model), acc, tokens=weak.tokens, wall=weak.wall)
        arm.curve = list(weak.curve)
        for kind, budget in plan:
            pts = max(1, round(args.points * budget / B))
            if kind == "sft":
                sft(arm, examples, budget, args, seed + 1000, pts)
            elif kind == "grpo":
                policy(arm, grpo, problems, task, None, budget, seed, pts)
            elif kind == "onp":
                policy(arm, onp, problems, task, teacher, budget, seed, pts)
            else:
                t0 = time.perf_counter()
                traces = [Trace(p.id, 0, "", "", "", 0, 0, "stop", "t") for p, _, _ in examples]
                chosen = {p.id: (p, c) for p, _, c in examples}
                # chosen: the verified teacher trace (the built example); rejected: the weak student's own answer
                pairs = build_pairs(arm.model, TOK, task, {k: v[0] for k, v in chosen.items()}, traces,
                                    n_problems=args.dpo_problems, samples=2, temperature=1.0,
                                    max_new_tokens=args.max_new, seed=seed)
                for pr in pairs:
                    pr["chosen_ids"] = chosen[pr["problem_id"]][1]
                arm.tokens += args.dpo_problems * 2 * args.max_new  # upper bound of the pair-building rollouts
                arm.wall += time.perf_counter() - t0
                policy(arm, dpo, problems, task, None, budget - args.dpo_problems * 2 * args.max_new, seed, pts,
                       pairs=pairs)
        out["b"][name] = arm
        log(f"seed {seed} b/{name}: {arm.curve[-1]}")
    # c. held out: longer chains
    for group in ("a", "b"):
        for name, arm in out[group].items():
            out["c"][f"{group}/{name}"] = acc(arm.model, long_test, args.long_max_new)
    out["c"]["b/weak_start"] = acc(weak.model, long_test, args.long_max_new)
    out["weak_accuracy"] = weak.curve[-1]["accuracy"]
    return out


def weak_student(args, examples, task, val, test, out_dir: Path, log) -> Arm:
    """SFT on the first ``weak_examples`` traces (seed 0) until test accuracy reaches ``weak_target``
    on held-out TRAIN-split problems ``val`` (checked every ``weak_check`` tokens) or ``weak_max`` tokens;
    its curve then holds one point, its test accuracy. Saved to ``out_dir/weak`` (safetensors)
    with its compute, and reused on a rerun."""
    from reasondistill.evaluate.accuracy import evaluate_model
    from reasondistill.models import init_model, load_model

    def acc(model, probs=val):
        return evaluate_model(model, probs, task, batch_size=len(probs), max_new_tokens=args.max_new,
                              tokenizer=TOK)["accuracy"]

    d = out_dir / "weak"
    if (d / "compute.json").exists():
        meta = json.loads((d / "compute.json").read_text())
        arm = Arm("weak", load_model(str(d)), acc, tokens=meta["tokens"], wall=meta["wall_s"])
        arm.curve = meta["curve"]
        return arm
    arm = Arm("weak", init_model(STUDENT, TOK, seed=0), acc)
    while arm.tokens < args.weak_max:
        sft(arm, examples[:args.weak_examples], args.weak_check, args, seed=arm.tokens, points=1)
        log(f"weak student: {arm.curve[-1]}")
        if arm.curve[-1]["accuracy"] >= args.weak_target:
            break
    arm.curve = [{"tokens": int(arm.tokens), "wall_s": round(arm.wall, 2), "accuracy": acc(arm.model, test),
                  "val_accuracy": arm.curve[-1]["accuracy"]}]
    arm.model.save_pretrained(d, safe_serialization=True)
    (d / "compute.json").write_text(json.dumps({"tokens": arm.tokens, "wall_s": arm.wall, "curve": arm.curve}))
    return arm


def main() -> None:
    global TOK
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="student seeds")
    ap.add_argument("--n-train", type=int, default=4000, help="training problems (teacher traces)")
    ap.add_argument("--n-test", type=int, default=150, help="test problems (3-5 steps)")
    ap.add_argument("--long-ops", type=int, nargs=2, default=[6, 7], help="held-out chain lengths (c)")
    ap.add_argument("--budget", type=int, default=120_000, help="tokens of compute per arm (a and b)")
    ap.add_argument("--weak-examples", type=int, default=2000, help="traces the weak SFT student sees (a fraction)")
    ap.add_argument("--weak-target", type=float, default=0.3, help="the weak student trains until this accuracy")
    ap.add_argument("--weak-check", type=int, default=300_000, help="tokens between its accuracy checks")
    ap.add_argument("--weak-max", type=int, default=6_000_000, help="tokens of SFT at most for the weak student")
    ap.add_argument("--points", type=int, default=2, help="evaluations along each arm's budget")
    ap.add_argument("--prompts", type=int, default=4, help="problems per policy step")
    ap.add_argument("--group", type=int, default=8, help="rollouts per problem (GRPO)")
    ap.add_argument("--max-new", type=int, default=80, help="rollout / evaluation length limit")
    ap.add_argument("--long-max-new", type=int, default=140, help="length limit on the longer chains")
    ap.add_argument("--sft-batch", type=int, default=32, help="SFT batch")
    ap.add_argument("--sft-lr", type=float, default=3e-3, help="SFT learning rate")
    ap.add_argument("--rl-lr", type=float, default=1e-4, help="policy-training learning rate")
    ap.add_argument("--dpo-problems", type=int, default=64, help="problems searched for DPO pairs")
    ap.add_argument("--out", default="runs/distill_vs_rl", help="directory for result.json and the plot")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from reasondistill.models import load_tokenizer
    from reasondistill.tasks.arith import ChainedArithmetic

    t_start = time.perf_counter()
    TOK = load_tokenizer("bundled:tiny-arith-teacher")
    task = ChainedArithmetic(min_ops=3, max_ops=5)
    problems, examples, teacher, data = teacher_data(args, TOK, task)
    test = task.problems("test", args.n_test, seed=0)
    long_task = ChainedArithmetic(min_ops=args.long_ops[0], max_ops=args.long_ops[1])
    long_test = long_task.problems("test", args.n_test, seed=0)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(f"[{time.perf_counter() - t_start:7.1f}s] {m}", flush=True)  # noqa: E731
    log(f"teacher data: {data}")
    val = task.problems("train", args.n_train + args.n_test, seed=0)[args.n_train:]  # train split, never trained on
    weak = weak_student(args, examples, task, val, test, out_dir, log)
    log(f"weak student: {weak.curve[-1]}")
    runs = []
    for seed in range(args.seeds):
        runs.append(run_seed(seed, args, problems, examples, teacher, task, test, long_test, log, weak))
        result = summarise(runs, args, data, time.perf_counter() - t_start)
        (out_dir / "result.json").write_text(json.dumps(result, indent=1))  # partial results survive a cut-off
    plot(runs, out_dir / "accuracy_vs_compute.png")
    print(json.dumps(result, indent=1))


def summarise(runs, args, data, wall) -> dict:
    res = {"config": vars(args), "teacher_data": data, "seeds_done": len(runs), "wall_s": round(wall, 1),
           "weak_accuracy": {"mean": float(np.mean([r["weak_accuracy"] for r in runs])),
                             "ci95": ci95([r["weak_accuracy"] for r in runs])}}
    for g in ("a", "b"):
        res[g] = {}
        for name in runs[0][g]:
            accs = [r[g][name].curve[-1]["accuracy"] for r in runs]
            res[g][name] = {"accuracy": float(np.mean(accs)), "ci95": ci95(accs), "per_seed": accs,
                            "tokens": int(np.mean([r[g][name].tokens for r in runs])),
                            "wall_s": round(float(np.mean([r[g][name].wall for r in runs])), 1),
                            "curve": [{"tokens": int(np.mean([r[g][name].curve[i]["tokens"] for r in runs])),
                                       "accuracy": float(np.mean([r[g][name].curve[i]["accuracy"] for r in runs]))}
                                      for i in range(min(len(r[g][name].curve) for r in runs))]}
    res["c"] = {}
    for name in runs[0]["c"]:
        accs = [r["c"][name] for r in runs]
        g, arm = name.split("/")
        tokens = int(np.mean([r[g][arm].tokens for r in runs])) if arm in runs[0][g] else None
        res["c"][name] = {"accuracy": float(np.mean(accs)), "ci95": ci95(accs), "per_seed": accs, "tokens": tokens}
    return res


def plot(runs, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, g, title in ((axes[0], "a", "a. from scratch"), (axes[1], "b", "b. from a weak SFT student")):
        for name in runs[0][g]:
            n = min(len(r[g][name].curve) for r in runs)
            xs = [np.mean([r[g][name].curve[i]["tokens"] for r in runs]) / 1e3 for i in range(n)]
            ys = [np.mean([r[g][name].curve[i]["accuracy"] for r in runs]) for i in range(n)]
            ax.plot(xs, ys, marker="o", label=name)
        ax.set_xlabel("compute (thousand tokens generated + trained + teacher-scored)")
        ax.set_ylabel("test accuracy (greedy)")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
