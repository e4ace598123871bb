"""What a run's numbers were measured on: hashes of its test set and of its verifier.

Why: two runs' accuracies can only be compared when they were measured on the same problems and
judged by the same rules. ``reasondistill report`` stores both hashes in ``report.json``, and
``reasondistill compare`` refuses runs whose hashes differ (or, with ``--allow-mismatch``, says so
loudly in its output).

- test set: sha256 of the sorted (id, prompt, reference answer) of ``problems/test.jsonl`` (and
  of ``problems/ood.jsonl`` when the run has an OOD split);
- verifier: sha256 of what decides a verdict: per task (each source of a mixture) its name and
  checking options (``verifier``, ``wall_seconds``, ``memory_mb``), the reasondistill version and
  the math-verify version.

    fingerprints(Layout("runs/demo"), cfg)   # {"test_set": {...}, "verifier": {...}}
    mismatches({"a": report_a, "b": report_b})   # ["test set differs: a 3f2c.. vs b 91d0..", ...]

Tests: ``pytest tests/report/test_compare_hashes.py``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from reasondistill.records import iter_jsonl

VERIFIER_KEYS = ("verifier", "wall_seconds", "memory_mb")


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def problems_hash(path: Path) -> dict[str, Any] | None:
    """sha256 and count of a problem file's (id, prompt, answer), order-independent; None if absent."""
    if not path.exists():
        return None
    rows = sorted((r["id"], r["prompt"], r["answer"]) for _, r in iter_jsonl(path))
    return {"sha256": _sha(rows), "n": len(rows)}


def _checks(section: Mapping[str, Any]) -> list[dict[str, Any]]:
    if section.get("name") == "mixture":
        return [c for src in section.get("sources", []) for c in _checks(src)]
    return [{"name": section.get("name"), **{k: section[k] for k in VERIFIER_KEYS if k in section}}]


def verifier_identity(task_section: Mapping[str, Any]) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    import reasondistill

    try:
        mv = version("math-verify")
    except PackageNotFoundError:
        mv = None
    ident = {"tasks": _checks(task_section), "reasondistill": reasondistill.__version__, "math_verify": mv}
    return {"sha256": _sha(ident), **ident}


def fingerprints(lay, cfg) -> dict[str, Any]:
    test = problems_hash(lay.test_problems)
    ood = problems_hash(lay.ood_problems)
    return {"test_set": {**(test or {"sha256": None, "n": 0}), **({"ood": ood} if ood else {})},
            "verifier": verifier_identity(cfg.task.model_dump(mode="json"))}


def mismatches(reports: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """(differences, unknowns): lines naming runs whose test set or verifier differ from the first
    run's, and runs whose report.json has no hashes (written before they existed)."""
    diffs, unknown = [], []
    labels = list(reports)
    for what, key in (("test set", "test_set"), ("verifier", "verifier")):
        have = {k: (r.get(key) or {}).get("sha256") for k, r in reports.items()}
        for k in labels:
            if have[k] is None and k not in unknown:
                unknown.append(k)
        known = [k for k in labels if have[k] is not None]
        for k in known[1:]:
            if have[k] != have[known[0]]:
                extra = ""
                if key == "test_set":
                    extra = f" ({reports[known[0]][key].get('n')} vs {reports[k][key].get('n')} problems)"
                diffs.append(f"{what} differs: {known[0]} {have[known[0]][:12]} vs {k} {have[k][:12]}{extra}")
        if key == "test_set":  # the OOD splits too, when both runs have one
            ood = {k: ((r.get(key) or {}).get("ood") or {}).get("sha256") for k, r in reports.items()}
            with_ood = [k for k in labels if ood[k]]
            diffs += [f"OOD test set differs: {with_ood[0]} {ood[with_ood[0]][:12]} vs {k} {ood[k][:12]}"
                      for k in with_ood[1:] if ood[k] != ood[with_ood[0]]]
    return diffs, unknown
