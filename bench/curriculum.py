"""Does a curriculum help on the built-in task? build.order shuffle vs curriculum (by the teacher's
pass rate, by trace length), three student seeds each, on the same teacher traces.

    python bench/curriculum.py                 # the figures in the README (JSON on stdout)
    python bench/curriculum.py --n-train 800 --seeds 0 --out runs/bench_curriculum_small   # a quick look

The teacher (bundled:tiny-arith-teacher) samples ``--samples`` traces per training problem at
``--temperature`` (1.0, so that pass rates vary between 0 and 1; curate keeps one correct trace
per problem). Arms: ``shuffle`` (seeded shuffle each epoch, the default), ``curriculum_pass_rate``
(easy = high teacher pass rate first), ``curriculum_length`` (easy = fewer target tokens first).
Each trains a fresh 4-layer student for ``--epochs`` epochs (a curriculum is taken easy to hard
in every epoch) per seed and evaluates it greedily on the same held-out problems. Statistics: bench/arms.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arms import base_config, generate, log, run_arm, summarize  # noqa: E402

ARMS = {"shuffle": {"build": {"order": "shuffle"}},
        "curriculum_pass_rate": {"build": {"order": "curriculum", "curriculum_by": "pass_rate"}},
        "curriculum_length": {"build": {"order": "curriculum", "curriculum_by": "length"}}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--epochs", type=float, default=4, help="student epochs (a curriculum repeats easy to hard each)")
    ap.add_argument("--out", default="runs/bench_curation")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    out = Path(args.out)
    base = base_config(out, args.n_train, args.n_test, args.samples, args.temperature)
    gen = generate(base)
    arms, common_val = {}, None
    for name, settings in ARMS.items():
        log(f"arm {name}")
        arms[name] = run_arm(base, name, settings, args.seeds, out, args.epochs, common_val)
        common_val = common_val or Path(arms[name]["held_out_set"])
    result = {"bench": "curriculum", "task": base["task"], "generate": base["generate"] | gen, "seeds": args.seeds,
              "epochs": args.epochs,
              "arms": summarize(arms, args.seeds), "wall_seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
