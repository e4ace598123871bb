"""Reproduce the bundled demo teacher: a ~0.8M-parameter Llama trained on solver traces.

The teacher learns chained modular arithmetic (1-8 operations) from the reference solver's
step-by-step solutions, through the library's own build and train stages, and is saved with its
character-level tokenizer and chat template to ``src/reasondistill/assets/tiny-arith-teacher``.

    python scripts/train_tiny_teacher.py                 # ~15 min on 2 CPU cores
    python scripts/train_tiny_teacher.py --out /tmp/t --steps 300   # a quick look
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from reasondistill.data.build import build_dataset, make_examples
from reasondistill.evaluate.accuracy import evaluate_model
from reasondistill.models import ASSETS, build_char_tokenizer, init_model, n_params
from reasondistill.records import Trace
from reasondistill.tasks.arith import ChainedArithmetic
from reasondistill.train.config import TrainConfig
from reasondistill.train.sft import train_model

TEACHER = {"architecture": "llama", "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
           "num_key_value_heads": 4, "intermediate_size": 384, "max_position_embeddings": 256}


def solver_traces(problems) -> list[Trace]:
    return [Trace(problem_id=p.id, sample=0, thinking=p.solution, answer=p.answer, text="", prompt_tokens=0,
                  completion_tokens=0, finish_reason="stop", teacher="solver") for p in problems]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ASSETS / "tiny-arith-teacher"))
    ap.add_argument("--problems", type=int, default=40000)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", help="working directory (kept; re-running with the same one resumes training)")
    args = ap.parse_args()

    task = ChainedArithmetic(min_ops=1, max_ops=8)
    tokenizer = build_char_tokenizer()
    problems = task.problems("train", args.problems, seed=args.seed)
    by_id = {p.id: p for p in problems}
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="tiny-teacher-"))
    stats = build_dataset(make_examples(by_id, solver_traces(problems), "traces"), tokenizer, work / "data",
                          max_length=256, val_fraction=0.02, seed=args.seed)
    model = init_model(TEACHER, tokenizer, seed=args.seed)
    print(json.dumps({"params": n_params(model), "data": stats}))
    cfg = TrainConfig(max_steps=args.steps, epochs=None, batch_size=args.batch_size, lr=args.lr,
                      warmup_ratio=0.03, eval_every=500, save_every=1000, log_every=50, threads=args.threads)
    summary = train_model(model, tokenizer, work / "data/train.safetensors", work / "data/val.safetensors",
                          work / "train", cfg, seed=args.seed, name="teacher")
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(work / "train/final", out)
    test = task.problems("test", 500, seed=args.seed)
    result = evaluate_model(str(out), test, task, batch_size=250, max_new_tokens=160)
    info = {"params": n_params(model), "train": summary, "heldout_accuracy_500": result["accuracy"],
            "task": task.describe(), "script": "scripts/train_tiny_teacher.py", "args": vars(args)}
    (out / "TRAINING.json").write_text(json.dumps(info, indent=2) + "\n")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
