"""Which K traces per problem should a student see? curate.select first vs diverse vs shortest
(K = 2 of the teacher's samples), three student seeds each, on the same teacher traces.

    python bench/diversity.py                  # the figures in the README (JSON on stdout)
    python bench/diversity.py --n-train 800 --seeds 0 --out runs/bench_curation_small

Shares its teacher traces with bench/curriculum.py when given the same ``--out`` and generation
settings. Arms: ``first`` (the first two distinct correct traces in sample order), ``diverse``
(greedy max-min Jaccard distance of thinking shingles, curate/select.py), ``shortest`` (the two
with fewest tokens). Besides accuracy, each arm reports curate's mean pairwise distance of the kept
traces against all candidates and mean tokens kept. Statistics: bench/arms.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arms import base_config, generate, log, run_arm, summarize  # noqa: E402

ARMS = {mode: {"curate": {"max_per_problem": 2, "select": mode}} for mode in ("first", "diverse", "shortest")}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--epochs", type=float, default=4, help="student epochs")
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
        arms[name] = run_arm(base, f"select_{name}", settings, args.seeds, out, args.epochs, common_val)
        common_val = common_val or Path(arms[name]["held_out_set"])
    result = {"bench": "diversity", "task": base["task"], "generate": base["generate"] | gen, "seeds": args.seeds,
              "epochs": args.epochs,
              "arms": summarize(arms, args.seeds), "wall_seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
