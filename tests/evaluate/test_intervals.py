"""Intervals that hold: simulated evaluations with a known true rate, 1,000 each, and the share of
95% intervals that contain it (coverage) must lie within 93-97%.

What is asserted where:
- proportions (greedy accuracy, maj@k: 0/1 per problem) use Wilson. At a fixed p a binomial's
  coverage oscillates with p (n=5: from 0.92 to 0.99; no interval on 5 trials can sit at 0.95
  for every p), so each simulated evaluation draws its true rate uniformly from (0, 1), at n = 5,
  30 and 100 problems;
- at p = 0 and p = 1 every outcome is the same, so a Wilson interval always contains p (coverage
  is 100% by construction); the test asserts that it is non-degenerate (positive width, at least
  the exact z²/(n+z²) at n = 5) and contains p, where the old percentile bootstrap gave [0, 0];
- pass@k and avg@n (means of per-problem values with n = 4 samples per problem) use the bootstrap
  over problems; the simulation draws 100 problems with Beta(2, 2) rates per evaluation, and the
  true value is the population mean of the per-problem estimand.
"""

from __future__ import annotations

import numpy as np
import pytest

from reasondistill.evaluate.intervals import proportion_ci, wilson
from reasondistill.evaluate.metrics import bootstrap_ci, pass_at_k_per_problem, with_ci

SIMS = 1000
Z2 = 1.959963984540054 ** 2


def test_wilson_matches_the_formula():
    low, high = wilson(3, 10)
    assert low == pytest.approx(0.1078, abs=1e-4) and high == pytest.approx(0.6032, abs=1e-4)
    assert wilson(0, 6) == (0.0, pytest.approx(Z2 / (6 + Z2)))
    assert wilson(6, 6) == (pytest.approx(6 / (6 + Z2)), 1.0)
    with pytest.raises(ValueError):
        wilson(7, 6)


def _coverage(n: int, ci, seed: int) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(SIMS):
        p = rng.uniform(0, 1)
        outcomes = (rng.random(n) < p).astype(float)
        low, high = ci(outcomes)
        hits += low <= p <= high
    return hits / SIMS


@pytest.mark.parametrize("n", [5, 30, 100])
def test_greedy_accuracy_interval_covers_at_its_nominal_level(n):
    cov = _coverage(n, lambda x: (lambda r: (r["ci_low"], r["ci_high"]))(with_ci(x.tolist())), seed=n)
    assert 0.93 <= cov <= 0.97, cov


def test_the_percentile_bootstrap_would_not():
    """The same simulation fails for the interval used before (so the test above can fail)."""
    cov = _coverage(5, lambda x: bootstrap_ci(x.tolist(), n_boot=200, seed=0), seed=5)
    assert cov < 0.90, cov


@pytest.mark.parametrize("p", [0.0, 1.0])
@pytest.mark.parametrize("n", [5, 100])
def test_at_p_0_and_1_the_interval_contains_p_and_is_not_degenerate(p, n):
    res = with_ci([p] * n)  # what 1,000 simulated evaluations at p=0 or p=1 all produce
    assert res["value"] == p and res["ci_low"] <= p <= res["ci_high"]
    width = res["ci_high"] - res["ci_low"]
    assert width == pytest.approx(Z2 / (n + Z2)) and width > 0.02
    assert proportion_ci([bool(p)] * n) == res
    # avg@n with 5 samples per problem, every sample wrong (or right): the bootstrap cannot vary
    avg = with_ci([p] * n, n_boot=200)
    assert avg["ci_high"] - avg["ci_low"] > 0.02 and avg["ci_low"] <= p <= avg["ci_high"]


@pytest.mark.parametrize("metric", ["avg@n", "pass@2"])
def test_bootstrap_over_problems_covers_pass_at_k_and_avg_at_n(metric):
    rng = np.random.default_rng(7)
    a = b = 2.0
    samples, problems = 4, 100
    truth = a / (a + b) if metric == "avg@n" else 1 - b * (b + 1) / ((a + b) * (a + b + 1))  # E[1-(1-q)^2]
    hits = 0
    for i in range(SIMS):
        q = rng.beta(a, b, problems)
        c = rng.binomial(samples, q)
        values = c / samples if metric == "avg@n" else pass_at_k_per_problem([(samples, int(x)) for x in c], 2)
        res = with_ci(list(values), n_boot=400, seed=i)
        hits += res["ci_low"] <= truth <= res["ci_high"]
    assert 0.93 <= hits / SIMS <= 0.97, hits / SIMS
