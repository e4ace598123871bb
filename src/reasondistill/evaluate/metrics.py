"""Metrics beyond greedy accuracy: pass@k, majority vote, intervals (Wilson / bootstrap, :mod:`.intervals`), calibration,
similarity of reasoning chains, and student/teacher answer agreement (failure modes: :mod:`.failures`).

Why: one accuracy number hides how often sampling finds the answer (pass@k), how much voting
helps (maj@k), how sure we may be of a difference (bootstrap), whether agreement between samples
means anything (calibration) and how close a student's chain is to its teacher's. Everything here
is a small pure function over plain lists, so it can be applied to any saved completions.

    mean_pass_at_k([(8, 3), (8, 0)], k=4)                  # problems with n samples, c correct
    majority_vote(["42", " 42", "17", None])               # Vote(answer="42", votes=2, share=0.5, ...)
    with_ci([pass_at_k(n, c, 4) for n, c in counts])       # {"value", "ci_low", "ci_high", "n"}
    correct, conf = vote_outcomes(samples, one_by_one(is_correct))  # maj@k per problem and its confidence
    expected_calibration_error(conf, correct); plot_reliability(reliability_bins(conf, correct), "r.png")
    rouge_l(teacher_thinking, student_thinking); normalized_edit_distance(a, b, unit="token")
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence

import numpy as np

# --------------------------------------------------------------------------- pass@k, avg@n


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021).

    1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i) to avoid huge binomials.
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_per_problem(per_problem_counts: Iterable[tuple[int, int]], k: int) -> list[float]:
    return [pass_at_k(n, c, k) for n, c in per_problem_counts]


def mean_pass_at_k(per_problem_counts: Iterable[tuple[int, int]], k: int) -> float:
    """Mean pass@k over problems; ``per_problem_counts`` holds one (n, c) pair per problem."""
    values = pass_at_k_per_problem(per_problem_counts, k)
    return float(np.mean(values)) if values else float("nan")


def correct_by_problem(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[bool]]:
    """Group sampled rows (``problem_id``, ``verdict``, optional ``sample``) into per-problem lists
    of correctness, in sample order. ``[(len(v), sum(v)) for v in d.values()]`` gives pass@k counts."""
    grouped: dict[str, list[tuple[int, bool]]] = {}
    for i, r in enumerate(rows):
        grouped.setdefault(r["problem_id"], []).append((r.get("sample", i), r["verdict"] == "correct"))
    return {pid: [ok for _, ok in sorted(v, key=lambda t: t[0])] for pid, v in grouped.items()}


def fraction_correct(per_problem_correct: Iterable[Sequence[bool]]) -> list[float]:
    """Per problem (with samples): the fraction of its samples that are correct; avg@n is their mean."""
    return [sum(v) / len(v) for v in per_problem_correct if len(v)]


def avg_at_n(per_problem_correct: Iterable[Sequence[bool]]) -> float:
    """avg@n: the mean over problems of the fraction of a problem's n samples that are correct."""
    values = fraction_correct(per_problem_correct)
    return float(np.mean(values)) if values else float("nan")


# --------------------------------------------------------------------------- majority vote


@dataclass(frozen=True)
class Vote:
    answer: str | None  # the winning group's smallest member (stripped); None if nothing valid
    votes: int  # members of the winning group
    share: float  # votes / all samples: unparseable samples count against the confidence
    n_valid: int  # samples with a usable answer
    n: int  # all samples


def _norm(answer: Any) -> str | None:
    if answer is None:
        return None
    return str(answer).strip() or None


def majority_vote(answers: Sequence[Any], equal: Callable[[str, str], bool] | None = None) -> Vote:
    """Self-consistency vote. ``None`` and blank answers abstain; pass task-normalised answers
    (e.g. the verdict's ``predicted``) so that unparseable samples are ``None``.

    Answers are stripped and grouped with ``equal`` (default: string equality), each new answer
    joining the first group whose first member it equals; ``equal`` should be an equivalence.
    The largest group wins; a tie goes to the group with the smallest member (string order), so
    the result does not depend on the order of the samples.
    """
    eq = equal or operator.eq
    groups: list[list[str]] = []
    valid = [s for s in map(_norm, answers) if s is not None]
    for s in valid:
        for g in groups:
            if eq(g[0], s):
                g.append(s)
                break
        else:
            groups.append([s])
    n = len(answers)
    if not groups:
        return Vote(None, 0, 0.0, 0, n)
    best = min(groups, key=lambda g: (-len(g), min(g)))
    return Vote(min(best), len(best), len(best) / n, len(valid), n)


# checks made in batches, so a pooled verifier stays busy: ``same([(key, a, b), ...])`` says, per item,
# whether answer ``b`` equals answer ``a`` for problem ``key``; ``judge([(key, answer), ...])`` whether
# each answer is correct. :func:`one_by_one` makes either from a function of one item.
Same = Callable[[list[tuple[Hashable, str, str]]], list[bool]]
Judge = Callable[[list[tuple[Hashable, str]]], list[bool]]


def one_by_one(fn: Callable[..., bool]) -> Callable[[list[tuple]], list[bool]]:
    """A batch check (:data:`Same`, :data:`Judge`) from ``fn`` of one item's fields."""
    return lambda items: [bool(fn(*item)) for item in items]


class _Unknown(Exception):
    """An equality a vote needs that has not been checked yet."""


def majority_votes(samples: Mapping[Hashable, Sequence[Any]], same: Same | None = None) -> dict[Hashable, Vote]:
    """:func:`majority_vote` per problem, answers being equal when ``same`` says so (default:
    string equality). The equalities are checked in rounds: each round runs every unfinished vote
    until it needs an equality not known yet, then checks those in one batch, so exactly the
    comparisons the votes make are checked."""
    if same is None:
        return {key: majority_vote(list(answers)) for key, answers in samples.items()}
    known: dict[tuple[Hashable, str, str], bool] = {}
    votes: dict[Hashable, Vote] = {}
    pending = dict(samples)
    while pending:
        asks: dict[Hashable, tuple[str, str]] = {}
        for key, answers in pending.items():
            def equal(a: str, b: str, key: Hashable = key) -> bool:
                if (key, a, b) not in known:
                    asks[key] = (a, b)
                    raise _Unknown
                return known[(key, a, b)]
            try:
                votes[key] = majority_vote(list(answers), equal)
            except _Unknown:
                pass
        checked = same([(key, a, b) for key, (a, b) in asks.items()]) if asks else []
        for (key, (a, b)), ok in zip(asks.items(), checked, strict=True):
            known[(key, a, b)] = bool(ok)
        pending = {key: samples[key] for key in asks}
    return {key: votes[key] for key in samples}


def judged_votes(samples: Mapping[Hashable, Sequence[Any]], judge: Judge, k: int | None = None,
                 same: Same | None = None) -> dict[Hashable, tuple[Vote, bool]]:
    """Per problem: the vote over its first ``k`` samples (all if None; fewer if it has fewer) and
    whether the voted answer is correct (an abstaining vote is not)."""
    votes = majority_votes({key: list(answers)[:k] for key, answers in samples.items()}, same)
    answered = [key for key, v in votes.items() if v.answer is not None]
    ok = dict(zip(answered, judge([(key, votes[key].answer) for key in answered]), strict=True))
    return {key: (v, bool(ok.get(key, False))) for key, v in votes.items()}


def _as_mapping(samples: Mapping[Hashable, Sequence[Any]] | Sequence[Sequence[Any]]) -> Mapping[Hashable, Sequence[Any]]:
    return samples if isinstance(samples, Mapping) else dict(enumerate(samples))


def vote_outcomes(samples: Mapping[Hashable, Sequence[Any]] | Sequence[Sequence[Any]], judge: Judge,
                  k: int | None = None, same: Same | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per problem: whether the majority vote over its first ``k`` samples (all if None) is
    correct, and the vote's share (its confidence, for calibration).

    ``samples`` maps a problem key (or index) to its answers in sample order; ``judge`` checks the
    winning answers, ``same`` the equalities the votes need (see :data:`Judge`, :data:`Same`).
    A problem with fewer than ``k`` samples is an error.
    """
    samples = _as_mapping(samples)
    for key, answers in samples.items():
        if k is not None and len(answers) < k:
            raise ValueError(f"maj@{k}: problem {key!r} has only {len(answers)} samples")
    judged = judged_votes(samples, judge, k, same)
    return (np.array([ok for _, ok in judged.values()], dtype=bool),
            np.array([v.share for v, _ in judged.values()], dtype=float))


def maj_at_k(samples: Mapping[Hashable, Sequence[Any]] | Sequence[Sequence[Any]], judge: Judge,
             k: int | None = None, same: Same | None = None) -> float:
    """maj@k accuracy: the fraction of problems whose vote over the first k samples is correct."""
    correct, _ = vote_outcomes(samples, judge, k, same)
    return float(correct.mean()) if correct.size else float("nan")


# --------------------------------------------------------------------------- bootstrap


def bootstrap_ci(values: Sequence[float], stat: Callable[[np.ndarray], float] = np.mean,
                 n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of ``stat`` over per-problem values.

    Resamples problems with replacement using its own ``numpy.random.Generator(seed)``, so the
    interval is reproducible and no global random state is touched. Empty input gives (nan, nan).
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"bootstrap_ci: expected a 1-d list of per-problem values, got shape {x.shape}")
    if not 0 < alpha < 1 or n_boot < 1:
        raise ValueError(f"bootstrap_ci: need 0 < alpha < 1 and n_boot >= 1, got {alpha}, {n_boot}")
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    chunk = max(1, 1_000_000 // x.size)  # bounds memory for long inputs
    for start in range(0, n_boot, chunk):
        resampled = x[rng.integers(0, x.size, size=(min(chunk, n_boot - start), x.size))]
        if stat is np.mean:
            stats[start:start + len(resampled)] = resampled.mean(axis=1)
        else:
            stats[start:start + len(resampled)] = [stat(row) for row in resampled]
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def with_ci(values: Sequence[float], stat: Callable[[np.ndarray], float] = np.mean,
            n_boot: int = 1000, alpha: float = 0.05, seed: int = 0, proportion: bool = True) -> dict[str, float | int]:
    """``{"value", "ci_low", "ci_high", "n"}`` for any per-problem metric (0/1 correctness,
    pass@k per problem, avg@n per problem, ...).

    For the mean (the default ``stat``) of a proportion: 0/1 values get the Wilson interval; other
    values the percentile bootstrap over problems, or, when every value is the same (nothing to
    resample), the Wilson interval of the mean as a proportion over the problems (:mod:`.intervals`).
    ``proportion=False`` (a similarity, a distance, a difference): always the bootstrap."""
    from reasondistill.evaluate.intervals import is_binary, proportion_ci, wilson

    x = np.asarray(values, dtype=float)
    if proportion and stat is np.mean and x.ndim == 1 and x.size:
        if is_binary(x.tolist()):
            return proportion_ci(x.tolist(), 1 - alpha)
        if np.all(x == x[0]) and 0 <= x[0] <= 1:
            low, high = wilson(float(x.sum()), int(x.size), 1 - alpha)
            return {"value": float(x.mean()), "ci_low": low, "ci_high": high, "n": int(x.size)}
    low, high = bootstrap_ci(x, stat, n_boot, alpha, seed)
    value = float(stat(x)) if x.size else float("nan")
    return {"value": value, "ci_low": low, "ci_high": high, "n": int(x.size)}


# --------------------------------------------------------------------------- calibration


def reliability_bins(confidences: Sequence[float], correct: Sequence[bool], n_bins: int = 10,
                     ) -> list[dict[str, Any]]:
    """Equal-width bins over [0, 1]: per bin its edges, count, mean confidence and accuracy
    (None for an empty bin). Bin i holds i <= confidence * n_bins < i + 1; 1.0 is in the last."""
    conf = np.asarray(confidences, dtype=float)
    corr = np.asarray(correct, dtype=float)
    if conf.shape != corr.shape or conf.ndim != 1:
        raise ValueError(f"calibration: confidences {conf.shape} and correct {corr.shape} must be equal 1-d")
    if n_bins < 1 or ((conf < 0) | (conf > 1) | np.isnan(conf)).any():
        raise ValueError("calibration: need n_bins >= 1 and confidences in [0, 1]")
    idx = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=corr, minlength=n_bins)
    return [{"lo": i / n_bins, "hi": (i + 1) / n_bins, "count": int(count[i]),
             "confidence": float(conf_sum[i] / count[i]) if count[i] else None,
             "accuracy": float(acc_sum[i] / count[i]) if count[i] else None} for i in range(n_bins)]


def _ece_from_bins(bins: Sequence[Mapping[str, Any]]) -> float:
    total = sum(b["count"] for b in bins)
    if not total:
        return float("nan")
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]))


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool],
                               n_bins: int = 10) -> float:
    """ECE: sum over bins of (bin count / total) * |accuracy - mean confidence|; nan if empty."""
    return _ece_from_bins(reliability_bins(confidences, correct, n_bins))


def plot_reliability(bins: Sequence[Mapping[str, Any]], path: str | Path,
                     title: str = "Reliability") -> Path:
    """Write a reliability diagram (accuracy per confidence bin vs the diagonal, counts below)
    as a PNG. Uses a bare Agg figure: no pyplot, no global backend change."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 5.5))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    full = [b for b in bins if b["count"]]
    lo, width = [b["lo"] for b in full], [b["hi"] - b["lo"] for b in full]
    top.bar(lo, [b["accuracy"] for b in full], width=width, align="edge", edgecolor="black",
            color="tab:blue", label="accuracy")
    top.bar(lo, [b["confidence"] - b["accuracy"] for b in full], bottom=[b["accuracy"] for b in full],
            width=width, align="edge", color="tab:red", alpha=0.3, label="gap to confidence")
    top.plot([0, 1], [0, 1], "k--", linewidth=1)
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=f"{title} (ECE {_ece_from_bins(bins):.3f})")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar([b["lo"] for b in bins], [b["count"] for b in bins],
               width=[b["hi"] - b["lo"] for b in bins], align="edge", color="gray", edgecolor="black")
    bottom.set(xlabel="confidence", ylabel="count")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)
    return path


# --------------------------------------------------------------------------- chain similarity


def _units(text: str | Sequence[Hashable], unit: str) -> Sequence[Hashable]:
    if not isinstance(text, str):
        return text  # already a sequence of units
    if unit == "token":
        return text.split()
    if unit == "char":
        return text
    raise ValueError(f"unit must be 'char' or 'token', got {unit!r}")


def _encode(a: Sequence[Hashable], b: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray]:
    vocab: dict[Hashable, int] = {}
    ids = [np.array([vocab.setdefault(u, len(vocab)) for u in s], dtype=np.int64) for s in (a, b)]
    return ids[0], ids[1]


def lcs_length(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Length of the longest common subsequence. Row-by-row DP, each row vectorised with numpy:
    L[i, j] = max(L[i-1, j], L[i-1, j-1] + match) then a running maximum along the row."""
    x, y = _encode(a, b)
    if len(x) > len(y):
        x, y = y, x  # loop over the shorter sequence
    prev = np.zeros(len(y) + 1, dtype=np.int64)
    for t in x:
        cur = np.zeros_like(prev)
        np.maximum.accumulate(np.maximum(prev[1:], prev[:-1] + (y == t)), out=cur[1:])
        prev = cur
    return int(prev[-1])


def edit_distance(a: str | Sequence[Hashable], b: str | Sequence[Hashable], unit: str = "char") -> int:
    """Levenshtein distance (insert, delete, substitute; cost 1 each) between characters
    (``unit="char"``) or whitespace tokens (``unit="token"``); sequences are used as given.

    Row-by-row DP; the insertion chain within a row is a running minimum of D[i, j] - j."""
    x, y = _encode(_units(a, unit), _units(b, unit))
    if len(x) > len(y):
        x, y = y, x
    cols = np.arange(len(y) + 1)
    prev = cols.copy()
    for i, t in enumerate(x, start=1):
        tmp = np.empty_like(prev)
        tmp[0] = i
        np.minimum(prev[1:] + 1, prev[:-1] + (y != t), out=tmp[1:])
        prev = np.minimum.accumulate(tmp - cols) + cols
    return int(prev[-1])


def normalized_edit_distance(a: str | Sequence[Hashable], b: str | Sequence[Hashable],
                             unit: str = "char") -> float:
    """Levenshtein distance / length of the longer input, in [0, 1]; 0.0 for two empty inputs.

    Symmetric and 0 only for equal inputs, but not a metric: the normalisation can break the
    triangle inequality (ab, aba, ba). Use :func:`edit_distance` where that matters."""
    ua, ub = _units(a, unit), _units(b, unit)
    longest = max(len(ua), len(ub))
    return edit_distance(ua, ub, unit) / longest if longest else 0.0


def rouge_l(a: str | Sequence[Hashable], b: str | Sequence[Hashable]) -> float:
    """ROUGE-L F1 on whitespace tokens: with P = LCS/|a| and R = LCS/|b|, F = 2PR/(P+R)
    = 2 LCS/(|a|+|b|). Symmetric; 1.0 for two empty texts, 0.0 when only one is empty."""
    ta, tb = _units(a, "token"), _units(b, "token")
    if not ta and not tb:
        return 1.0
    return 2 * lcs_length(ta, tb) / (len(ta) + len(tb))


# --------------------------------------------------------------------------- student vs teacher


def rows_by_problem(rows: Iterable[Mapping[str, Any]], side: str = "rows") -> dict[str, Mapping[str, Any]]:
    """Index one-row-per-problem results (e.g. greedy evaluation rows) by ``problem_id``."""
    out: dict[str, Mapping[str, Any]] = {}
    for r in rows:
        if r["problem_id"] in out:
            raise ValueError(f"{side}: problem_id {r['problem_id']!r} appears twice; "
                             "pass one row per problem (e.g. greedy evaluation rows)")
        out[r["problem_id"]] = r
    return out


def answer_agreement(rows_a: Iterable[Mapping[str, Any]], rows_b: Iterable[Mapping[str, Any]],
                     field: str = "predicted", equal: Callable[[str, str], bool] | None = None,
                     ) -> dict[str, Any]:
    """How often two models (e.g. student and teacher) give the same answer on the problems both
    answered, matched by ``problem_id``. Answers are compared on ``field`` (default the task-
    normalised ``predicted``), stripped; a missing answer never agrees. Also counts the 2x2 table
    of correctness and ``same_wrong``: both wrong with the same answer (a copied mistake)."""
    a, b = rows_by_problem(rows_a, "rows_a"), rows_by_problem(rows_b, "rows_b")
    eq = equal or operator.eq
    shared = sorted(set(a) & set(b))
    out = {"n": len(shared), "agree": 0, "only_in_a": len(set(a) - set(b)), "only_in_b": len(set(b) - set(a)),
           "both_correct": 0, "both_wrong": 0, "only_a_correct": 0, "only_b_correct": 0, "same_wrong": 0}
    cell = {(True, True): "both_correct", (False, False): "both_wrong",
            (True, False): "only_a_correct", (False, True): "only_b_correct"}
    for pid in shared:
        x, y = _norm(a[pid].get(field)), _norm(b[pid].get(field))
        same = x is not None and y is not None and bool(eq(x, y))
        ok_a, ok_b = a[pid].get("verdict") == "correct", b[pid].get("verdict") == "correct"
        out["agree"] += same
        out[cell[(ok_a, ok_b)]] += 1
        out["same_wrong"] += same and not ok_a and not ok_b
    out["agreement"] = out["agree"] / len(shared) if shared else float("nan")
    return out
