"""GRPO and on-policy distillation steps: ours (train/policy.py) vs TRL's GRPOTrainer and
DistillationTrainer, the same tiny model, task, group size, lengths and steps, in one run.

Why: users compare with TRL; the claim "faster than TRL on the same work" needs both measured on
the same machine in the same process, with the reward curve alongside so the speed is not bought
with a different computation. Work: S steps of P prompts x G rollouts of at most M new tokens
(sampling at T = --temperature, 2.5 by default), fp32; the GRPO policy is the bundled
0.87M-parameter teacher (a fresh student never earns a reward), the on-policy student the demo's
fresh 0.13M student under that teacher, 1 thread, no KL to a reference (TRL's GRPO default beta = 0), loss
normalised per token (DAPO: ours loss_norm token, TRL loss_type "dapo"), centred advantages (no
std scaling: ours scale_rewards false, TRL scale_rewards "none"). On-policy: TRL's
DistillationTrainer (prompt-only, generalised JSD with beta = 1, i.e. full-vocabulary reverse KL) vs
ours objective on_policy, divergence jsd, beta 1 (the same loss), one rollout per prompt (P x G
prompts per step, TRL generates one completion per prompt). tokens/s = completion tokens sampled
per second of the whole step (generation + teacher + backward + optimizer).

Keys: ``grpo_speedup_vs_trl`` and ``on_policy_speedup_vs_trl`` are steady-state tokens/s ratios
(steps 2..S, each trainer's clock at the end of every step: neither trainer's set-up, first-step
warm-up or final save counts); ``*_whole_run_speedup_vs_trl`` time the whole ``train`` call. Each
is the median over ``--repeats`` runs of both arms (3 by default), run in alternating order (ours
then TRL, TRL then ours, ...) because this machine's speed drifts by tens of percent over minutes;
every repeat's ratio is under ``*_runs``, and ``*_ours`` / ``*_trl`` hold the first repeat in full.
``--kernels`` adds, per arm, the seconds per 1000 completion tokens inside matmul/attention
kernels, and ``*_speedup_bound_without_overhead``: our speedup if everything else cost nothing.
Where ours is faster: rollouts decode through reasondistill/decoder.py (no per-step framework
bookkeeping, fused q|k|v and gate|up weights, finished rows leave the batch); in GRPO's update a
group's prompt runs once, its keys/values reused by the group's rollouts (train/shared_prompt.py);
the update's micro-batches are cut by length (little padding), whole rows run the plain causal
kernel (no padding mask); a GRPO row whose group all scored alike (advantage 0, no KL term: a
gradient of exactly zero) gets a forward for the entropy metric and no backward. The loss is the same.
``frac_reward_zero_std`` (both trainers) says how many rows that was: at the default T = 2.5 a few
percent; at ``--temperature 1.5`` about 90%, which is where that skip matters.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/rl_throughput.py --steps 8 [--repeats 3] [--kernels] [--temperature 1.5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
import warnings

import numpy as np
import torch

STUDENT = {"architecture": "llama", "hidden_size": 48, "num_hidden_layers": 4, "num_attention_heads": 4,
           "intermediate_size": 144, "max_position_embeddings": 256}  # the demo's student


def fresh_model(kind: str, tok):
    """GRPO: the bundled teacher (0.87M) as the policy, so rewards are not all zero; on-policy: the demo's
    fresh 0.13M student under that teacher. The same initial weights for ours and TRL's."""
    from reasondistill.models import init_model, load_model

    return load_model("bundled:tiny-arith-teacher") if kind == "grpo" else init_model(STUDENT, tok, seed=0)


def problems_and_task(n: int):
    from reasondistill.tasks.arith import ChainedArithmetic

    task = ChainedArithmetic(min_ops=3, max_ops=5)
    return task.problems("train", n, seed=11), task


def ours(kind: str, model, tok, problems, task, teacher, args) -> dict:
    from reasondistill.train.policy import train_policy
    from reasondistill.train.policy_config import PolicyConfig

    common = dict(steps=args.steps, max_new_tokens=args.max_new, temperature=args.temperature, lr=args.lr,
                  save_every=10 ** 6, weight_decay=0.0, max_grad_norm=1.0, micro_batch=args.prompts * args.group)
    if kind == "grpo":
        cfg = PolicyConfig(objective="grpo", prompts_per_step=args.prompts, group_size=args.group,
                           loss_norm="token", scale_rewards=False, **common)
    else:
        cfg = PolicyConfig(objective="on_policy", divergence="jsd", beta=1.0,
                           prompts_per_step=args.prompts * args.group, group_size=1, **common)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        s = train_policy(model, tok, problems, task, cfg, d, seed=0, teacher=teacher, show_progress=False)
        wall = time.perf_counter() - t0
        import csv

        rows = list(csv.DictReader(open(f"{d}/metrics.csv")))
    rewards = [float(r["reward_mean"]) for r in rows if r["reward_mean"] != ""]
    zero = [float(r["frac_reward_zero_std"]) for r in rows if r.get("frac_reward_zero_std")]
    ends = [float(r["elapsed_s"]) for r in rows]  # the loop's clock at the end of each step
    tokens = [int(r["tokens_generated"]) for r in rows]  # cumulative
    return {"wall_s": round(wall, 2), "steps": s["steps"], "completion_tokens": s["tokens_generated"],
            "steps_per_s": s["steps"] / wall, "tokens_per_s": s["tokens_generated"] / wall,
            **steady(ends, [b - a for a, b in zip([0] + tokens, tokens)]),
            "reward_curve": rewards, "kl_curve": [float(r["kl_teacher"]) for r in rows if r["kl_teacher"] != ""],
            **({"frac_reward_zero_std": round(sum(zero) / len(zero), 3)} if zero else {})}


def steady(ends: list[float], tokens: list[float]) -> dict:
    """Steps 2..S only: per-step time from the clock at each step's end, so neither the first step's
    warm-up nor set-up and saving outside the loop counts (for either trainer)."""
    if len(ends) < 2:
        return {}
    wall = ends[-1] - ends[0]
    return {"steady_s_per_step": round(wall / (len(ends) - 1), 4), "steady_tokens_per_s": sum(tokens[1:]) / wall}


def trl_run(kind: str, model, tok, problems, task, teacher, args) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback

    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **kw):
            ends.append(time.perf_counter())

    from reasondistill.curate.verdicts import judge_many

    by_prompt = {p.prompt: p for p in problems}
    counted = {"completion_tokens": 0, "rewards": [], "per_step": []}

    def reward(prompts, completions, **kw):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        users = [p[-1]["content"] if isinstance(p, list) else p for p in prompts]
        ids = kw.get("completion_ids")
        n = sum(len(x) for x in ids) if ids is not None else \
            sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)
        counted["completion_tokens"] += n
        counted["per_step"].append(n)
        fins = ["length" if ids is not None and len(x) >= args.max_new and x[-1] != tok.eos_token_id else "stop"
                for x in (ids or [[0]] * len(texts))]
        verdicts = judge_many(task, [(by_prompt[u], t, f, 0) for u, t, f in zip(users, texts, fins)])
        r = [1.0 if v.verdict == "correct" else 0.0 for v in verdicts]
        counted["rewards"].append(sum(r) / len(r))
        return r

    data = Dataset.from_list([{"prompt": [{"role": "user", "content": p.prompt}]} for p in problems])
    common = dict(output_dir=tempfile.mkdtemp(), max_steps=args.steps, learning_rate=args.lr, logging_steps=1,
                  report_to=[], use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, save_strategy="no",
                  max_completion_length=args.max_new, temperature=args.temperature, top_p=1.0, top_k=0,
                  disable_tqdm=True, dataloader_num_workers=0, seed=0, lr_scheduler_type="constant", warmup_steps=0,
                  weight_decay=0.0, max_grad_norm=1.0, adam_beta2=0.99, disable_dropout=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "grpo":
            from trl import GRPOConfig, GRPOTrainer

            cfg = GRPOConfig(per_device_train_batch_size=args.prompts * args.group, num_generations=args.group,
                             beta=0.0, loss_type="dapo", scale_rewards="none", num_iterations=1, **common)
            trainer = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=data, processing_class=tok,
                                  callbacks=[Clock()])
        else:
            from trl import DistillationConfig, DistillationTrainer

            cfg = DistillationConfig(per_device_train_batch_size=args.prompts * args.group, beta=1.0, **common)
            trainer = DistillationTrainer(model=model, teacher_model=teacher, args=cfg, train_dataset=data,
                                          processing_class=tok, callbacks=[Clock()])
            counted = None
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # TRL prints each step's log dict; keep stdout JSON
            trainer.train()
        wall = time.perf_counter() - t0
    logs = [h for h in trainer.state.log_history if "loss" in h]
    if counted is None:  # distillation: completion lengths from TRL's logs
        lengths = [h.get("completions/mean_length", h.get("completion_length", float("nan"))) for h in logs]
        per_step = [x * args.prompts * args.group for x in lengths]
    else:
        per_step = counted["per_step"]
    tokens = sum(per_step)
    return {"wall_s": round(wall, 2), "steps": trainer.state.global_step, "completion_tokens": tokens,
            "steps_per_s": trainer.state.global_step / wall, "tokens_per_s": tokens / wall,
            **steady(ends, per_step),
            "reward_curve": counted["rewards"] if counted else [],
            **({"frac_reward_zero_std": round(sum(h["frac_reward_zero_std"] for h in logs) / len(logs), 3)}
               if logs and "frac_reward_zero_std" in logs[0] else {}),
            "log_keys": sorted(logs[0]) if logs else []}


KERNELS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
           "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def kernel_seconds(fn, *a) -> tuple[dict, float]:
    """Run ``fn(*a)`` under torch's profiler: its result and the seconds spent inside matrix-multiply
    and attention kernels (the arithmetic both trainers must do; the rest is overhead)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = fn(*a)
    return out, sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in KERNELS) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per run")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step (P)")
    ap.add_argument("--group", type=int, default=8, help="rollouts per prompt (G)")
    ap.add_argument("--max-new", type=int, default=64, help="completion length limit (M)")
    ap.add_argument("--lr", type=float, default=1e-4, help="learning rate (both)")
    ap.add_argument("--temperature", type=float, default=2.5, help="rollout temperature (both). At 2.5 the bundled "
                    "teacher is right about 40%% of the time, so nearly every GRPO group has rollouts that differ "
                    "(an advantage to train on); at 1.5 it is right 99%% of the time and ~90%% of the groups all "
                    "score alike, a row ours skips the backward for and TRL does not")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--repeats", type=int, default=3, help="runs of both arms, in alternating order (ours first, "
                    "then TRL first, ...); the ratios are the median over repeats, each repeat's under *_runs")
    ap.add_argument("--kernels", action="store_true", help="also run each arm once more under torch's profiler and "
                    "report the seconds per 1000 completion tokens spent in matmul/attention kernels, and the bound "
                    "on our speedup if everything but those kernels cost nothing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from reasondistill.models import init_model, load_model, load_tokenizer

    tok = load_tokenizer("bundled:tiny-arith-teacher")
    teacher = load_model("bundled:tiny-arith-teacher")
    problems, task = problems_and_task(512)
    out = {"config": vars(args), "student_params": sum(p.numel() for p in init_model(STUDENT, tok, 0).parameters())}
    for kind in ("grpo", "on_policy"):
        scorer = teacher if kind == "on_policy" else None
        arms = (("ours", ours), ("trl", trl_run))
        runs = []
        for r in range(args.repeats):  # the order alternates: this machine's speed drifts over minutes
            run = {}
            for name, fn in (arms if r % 2 == 0 else arms[::-1]):
                run[name] = fn(kind, fresh_model(kind, tok), tok, problems, task, scorer, args)
                print(json.dumps({f"{kind}_{name}": {k: v for k, v in run[name].items() if "curve" not in k},
                                  "repeat": r}), flush=True)
            runs.append(run)
        out[f"{kind}_ours"], out[f"{kind}_trl"] = runs[0]["ours"], runs[0]["trl"]
        if args.kernels:
            for name, fn in arms:
                res, k = kernel_seconds(fn, kind, fresh_model(kind, tok), tok, problems, task, scorer, args)
                out[f"{kind}_{name}"]["kernel_s_per_1k_tokens"] = round(1000 * k / res["completion_tokens"], 4)
            ours_k = out[f"{kind}_ours"]["kernel_s_per_1k_tokens"] / 1000
            out[f"{kind}_speedup_bound_without_overhead"] = round(1 / ours_k / out[f"{kind}_trl"]["steady_tokens_per_s"], 3)
        ratios = {key: [round(f(run["ours"], run["trl"]), 3) for run in runs] for key, f in (
            ("speedup_vs_trl", lambda o, t: o["steady_tokens_per_s"] / t["steady_tokens_per_s"]),
            ("steady_steps_per_s_ratio", lambda o, t: t["steady_s_per_step"] / o["steady_s_per_step"]),
            ("whole_run_speedup_vs_trl", lambda o, t: o["tokens_per_s"] / t["tokens_per_s"]),
            ("steps_per_s_ratio", lambda o, t: o["steps_per_s"] / t["steps_per_s"]))}
        for key, values in ratios.items():  # the median over repeats; every repeat's under *_runs
            out[f"{kind}_{key}"] = float(np.median(values))
            out[f"{kind}_{key}_runs"] = values
        out[f"{kind}_steady_tokens_per_s_runs"] = {name: [round(run[name]["steady_tokens_per_s"], 1) for run in runs]
                                                   for name, _ in arms}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
