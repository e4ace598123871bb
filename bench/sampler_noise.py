"""The seeded sampler's noise per decoding step: ours (``teachers.sampling.add_gumbel``: in place, in
vocabulary blocks) vs the same numbers made the plain way (whole rows, a fresh tensor per
operation, as the sampler did before 2026-11-30), in one run.

Why: every sampled token of teacher traces and policy rollouts draws one Uniform(0, 1) per
(row, vocabulary entry) from a counter-based hash (splitmix64 over int64), so that a sample is a
pure function of (seed, problem, sample, step). At a real vocabulary that is a dozen passes over
rows x 152K int64 per step, on the CPU even when the model ran on a GPU: at 64 rows about as much
time as a small model's decoding step. The two must give the same perturbed scores (checked here
bit for bit, and in tests/teachers/test_sampling.py).

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/sampler_noise.py [--rows 64] [--vocab 105 32000 151936]

Prints one JSON object: per vocabulary size the milliseconds per step of each (the fastest of
``--repeats`` timed steps after a warm-up) and ``speedup`` = plain / ours.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from reasondistill.teachers.sampling import _C0, _C1, _C2, add_gumbel, row_key


def plain(logits: torch.Tensor, keys: torch.Tensor, step: int) -> torch.Tensor:
    """The baseline: whole rows, every operation a fresh tensor, on the CPU (the former sampler)."""
    def shr(z, k):
        return (z >> k) & ((1 << (64 - k)) - 1)

    idx = torch.arange(logits.shape[-1], dtype=torch.int64)
    z = keys[:, None] + torch.tensor(step + 1, dtype=torch.int64) * _C0 + idx[None, :] * _C1
    z = (z ^ shr(z, 30)) * _C1
    z = (z ^ shr(z, 27)) * _C2
    z = z ^ shr(z, 31)
    u = ((shr(z, 11).double() + 0.5) / float(1 << 53)).float()
    return logits - torch.log(-torch.log(u))


def best_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(1000 * min(times), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=64, help="rows decoded together")
    ap.add_argument("--vocab", type=int, nargs="+", default=[105, 32000, 151936], help="vocabulary sizes")
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per variant (the fastest counts)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keys = torch.tensor([row_key(0, f"p{i}", 0) for i in range(args.rows)], dtype=torch.int64)
    out = {"rows": args.rows, "threads": args.threads, "by_vocab": {}}
    for vocab in args.vocab:
        scores = torch.randn(args.rows, vocab, generator=torch.Generator().manual_seed(vocab))
        same = torch.equal(add_gumbel(scores.clone(), keys, 7), plain(scores, keys, 7))
        ours = best_ms(lambda: add_gumbel(scores.clone(), keys, 7), args.repeats)
        base = best_ms(lambda: plain(scores, keys, 7), args.repeats)
        out["by_vocab"][str(vocab)] = {"ours_ms": ours, "plain_ms": base, "speedup": round(base / ours, 2),
                                       "same_numbers": same}
        print(json.dumps({vocab: out["by_vocab"][str(vocab)]}), flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
