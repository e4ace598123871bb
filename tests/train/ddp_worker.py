"""Run ``train_model`` in this process; under ``torchrun`` each process is one DDP rank (gloo on CPU).

    torchrun --nproc_per_node 2 tests/train/ddp_worker.py DATA_DIR OUT_DIR --batch-size 4
    python tests/train/ddp_worker.py DATA_DIR OUT_DIR --batch-size 8      # the one-process reference
    torchrun --nproc_per_node 2 tests/train/ddp_worker.py DATA_DIR OUT_DIR --batch-size 4 --sharding fsdp

DATA_DIR holds ``train.safetensors`` and ``val.safetensors``; the model is the tests' tiny Llama
(``conftest.TINY``) with the character tokenizer, initialised from seed 0 in every process.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for conftest.TINY


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--sharding", choices=["none", "fsdp"], default="none", help="train.sharding")
    ap.add_argument("--save-every", type=int, default=10**6, help="steps between checkpoints")
    ap.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUT_DIR")
    ap.add_argument("--init-seed", type=int, default=0, help="seed of the model's initialisation")
    args = ap.parse_args()

    from conftest import TINY
    from reasondistill.models import build_char_tokenizer, init_model
    from reasondistill.train.config import TrainConfig
    from reasondistill.train.sft import train_model

    tok = build_char_tokenizer()
    model = init_model(TINY, tok, seed=args.init_seed)
    cfg = TrainConfig(epochs=None, max_steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
                      lr=3e-3, warmup_ratio=0.1, threads=1, log_every=1, eval_every=3, save_every=args.save_every,
                      keep_checkpoints=10, resume=args.resume, sharding=args.sharding)
    train_model(model, tok, args.data / "train.safetensors", args.data / "val.safetensors", args.out, cfg, seed=0,
                show_progress=False)
    from reasondistill.distributed import shutdown

    shutdown()  # as the CLI does: a rank that exits with the group open can abort in gloo's teardown (CI, stop 25)


if __name__ == "__main__":
    main()
