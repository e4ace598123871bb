"""Math verification throughput on GSM8K references: 1 vs 2 worker processes.

    python bench/verify_throughput.py             # all 1319 GSM8K test references x 4 forms; one JSON object
    python bench/verify_throughput.py --quick     # 200 references x 4 forms
    python bench/verify_throughput.py --data /path/to/test.jsonl

Pairs: every GSM8K test solution (``#### N`` reference) paired with four completions built from
it: the reference solution itself (correct, "hash" extraction), "... so the answer is
\\boxed{N}" (correct, boxed), "The answer is N+1." (wrong) and a completion with no number at all
(unparseable, no answer). That is the mix curation sees: mostly parseable, some wrong, a few
with nothing to parse.

Each worker count runs ``reasondistill.verify.math.verify_math_many`` (``verify.pool.run_pool``
with ``check_item``, ``warm_up`` as initializer, 10 s per-item timeout) over all pairs;
``verifications_per_s`` counts the whole call, worker start-up (spawn + math-verify import +
warm-up, also measured alone as ``startup_s``) included; ``verifications_per_s_after_startup``
subtracts that start-up estimate. ``in_process`` is ``verify_math`` in a
plain loop in this process after a warm-up, for reference. Verdict counts must agree across
all three. If the GSM8K file is absent the script prints a JSON object with ``skipped``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path

DEFAULT_DATA = Path(os.environ.get("GSM8K_TEST", "/work/shared/data/gsm8k/test.jsonl"))


def pairs(data: Path, limit: int | None) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    if limit:
        rows = rows[:limit]
    out = []
    for r in rows:
        ref = r["answer"]
        n = ref.rsplit("####", 1)[-1].strip().replace(",", "")
        body = ref.rsplit("####", 1)[0].strip()
        wrong = str(int(n) + 1) if n.lstrip("-").isdigit() else n + "1"
        out += [(ref, ref),
                (ref, f"{body}\nSo the answer is $\\boxed{{{n}}}$."),
                (ref, f"Let me think.\nThe answer is {wrong}."),
                (ref, "I am not sure how to solve this one.")]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="200 references instead of all")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    if not args.data.exists():
        print(json.dumps({"bench": "verify_throughput", "skipped": True,
                          "reason": f"GSM8K test file not found at {args.data} (set --data or GSM8K_TEST)"}))
        return

    from reasondistill.verify.math import check_item, verify_math_many, warm_up
    from reasondistill.verify.pool import run_pool

    items = pairs(args.data, 200 if args.quick else None)
    golds, comps = [g for g, _ in items], [c for _, c in items]
    result: dict = {"bench": "verify_throughput", "data": str(args.data), "pairs": len(items),
                    "forms": ["reference itself", "boxed correct", "answer-is wrong", "no number"]}

    t = time.perf_counter()
    warm_up()
    result["in_process_warm_up_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    from reasondistill.verify.math import verify_math

    base = [verify_math(g, c) for g, c in items]
    s = time.perf_counter() - t
    verdicts = Counter(c.verdict for c in base)
    result["in_process"] = {"seconds": round(s, 2), "verifications_per_s": round(len(items) / s, 1)}
    result["verdicts"] = dict(verdicts)

    for w in args.workers:
        t = time.perf_counter()
        run_pool(check_item, [items[0]] * w, workers=w, chunk_size=1, initializer=warm_up, progress=False)
        startup = time.perf_counter() - t
        t = time.perf_counter()
        checks = verify_math_many(golds, comps, workers=w, timeout=10.0, progress=False)
        s = time.perf_counter() - t
        agree = [c.verdict for c in checks] == [c.verdict for c in base]
        result[f"workers_{w}"] = {"seconds": round(s, 2), "verifications_per_s": round(len(items) / s, 1),
                                  "startup_s": round(startup, 2),
                                  "verifications_per_s_after_startup": round(len(items) / max(s - startup, 1e-9), 1),
                                  "verdicts_agree_with_in_process": agree}
    if 1 in args.workers and 2 in args.workers:
        result["speedup_2_over_1"] = round(result["workers_2"]["verifications_per_s"]
                                           / result["workers_1"]["verifications_per_s"], 2)
    result["note"] = "2 cores shared with other workers: the 2-worker gain is bounded by the free core"
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
