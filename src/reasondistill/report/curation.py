"""The report's lines on what curation measured and used: the pass-rate band, the K-trace selection
with its diversity, near-duplicate problems and decontamination hits per benchmark.

Why apart from :mod:`.build`: these are the newer curate outputs (curate/select.py, minhash.py,
benchmarks.py); :func:`curation_lines` turns ``curate/summary.json`` into Markdown bullets.

    curation_lines(json.load(open("runs/demo/curate/summary.json")))
"""

from __future__ import annotations

from typing import Any, Mapping


def _num(x: Any, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def curation_lines(cur: Mapping[str, Any]) -> list[str]:
    out = []
    band = cur.get("pass_rate_band")
    if band:
        out.append(f"- teacher pass-rate band [{band['min']}, {band['max']}]: {band['problems_below_min']} problems "
                   f"below (hopeless), {band['problems_above_max']} above (trivial) dropped")
    sel = cur.get("select")
    if sel:
        line = (f"- K = {sel['max_per_problem']} traces per problem chosen by `{sel['mode']}`: mean pairwise distance "
                f"kept {_num(sel['mean_pairwise_distance_kept'])} vs available "
                f"{_num(sel['mean_pairwise_distance_available'])} over {sel['problems_measured']} problems keeping two "
                f"or more ({sel['distance']})")
        if sel.get("mean_tokens_kept") is not None:
            line += f"; mean tokens kept {_num(sel['mean_tokens_kept'], '.1f')} vs available " \
                    f"{_num(sel['mean_tokens_available'], '.1f')}"
        out.append(line)
    nd = cur.get("near_duplicates")
    if nd:
        out.append(f"- near-duplicate problems (MinHash, Jaccard >= {nd['threshold']}): {nd['problems']} dropped")
    per = (cur.get("decontamination") or {}).get("benchmarks")
    if per:
        out.append("- decontamination hits per benchmark: " +
                   ", ".join(f"{k} {v['hits']} (of {v['problems']} problems)" for k, v in per.items()))
    return out
