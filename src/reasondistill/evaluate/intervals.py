"""Confidence intervals that hold at the edges: Wilson for proportions, bootstrap over problems
for per-problem metrics with a Wilson fallback where resampling cannot vary.

Why: a percentile bootstrap of 0/1 outcomes collapses to zero width when every outcome is the
same (``0.0% [0.0%, 0.0%]`` at n=6) and under-covers at small n. The Wilson score interval
(Wilson 1927) inverts the normal test of a proportion: it is never degenerate (at k=0 it is
[0, z²/(n+z²)]) and its coverage stays near nominal down to small n (the simulated check is
tests/evaluate/test_intervals.py). Metrics that are means of per-problem values in [0, 1]
(pass@k, avg@n with n samples per problem) keep the bootstrap over problems, the unit that was
sampled; when all per-problem values are equal the bootstrap has nothing to resample, and the
Wilson interval of the mean as a proportion over the problems is used instead.

    wilson(3, 10)                          # (0.108, 0.603)
    proportion_ci([True, False, True])     # {"value", "ci_low", "ci_high", "n"}
    interval([0.25, 0.5, 1.0], n_boot=1000, seed=0)   # bootstrap over problems, fallback as above
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Sequence


def z_value(level: float = 0.95) -> float:
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson(successes: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n``; (nan, nan) for n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= successes <= n:
        raise ValueError(f"wilson: need 0 <= successes <= n, got {successes} of {n}")
    z = z_value(level)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low, high = max(0.0, centre - half), min(1.0, centre + half)
    if successes == 0:
        low = 0.0  # exact ends: rounding must not exclude the observed rate
    if successes == n:
        high = 1.0
    return low, high


def is_binary(values: Sequence[float]) -> bool:
    return all(v in (0, 1) for v in values)


def proportion_ci(outcomes: Sequence[bool | float], level: float = 0.95) -> dict[str, float | int]:
    """``{"value", "ci_low", "ci_high", "n"}`` of 0/1 outcomes, with the Wilson interval."""
    n = len(outcomes)
    k = float(sum(outcomes))
    low, high = wilson(k, n, level)
    return {"value": k / n if n else float("nan"), "ci_low": low, "ci_high": high, "n": n}
