"""Benchmark files to decontaminate against (``curate.decontaminate.against``), read as problems.

Why: the run's own test split is not the only set a user reports on; a training problem that also
sits in AIME, MATH-500 or GSM8K's test set inflates those numbers. Each entry is a path (or
``{path, field, format, split, label}``) to a file in any format the tasks read (JSONL, JSON,
CSV, Parquet, a ``datasets`` directory; :mod:`reasondistill.tasks.sources`). Only the problem
text matters for the n-gram overlap: it is taken from ``field``, or from the first of
:data:`TEXT_FIELDS` a row has; a row with none is an error naming the file and line.

    for label, problems in read_benchmarks(cfg.curate.decontaminate): ...

Tests: ``pytest tests/curate/test_decontam_benchmarks.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reasondistill.records import Problem, RecordError

TEXT_FIELDS = ("question", "problem", "prompt", "input", "text", "Question", "Problem")


def _entries(cfg) -> list[Any]:
    return list(getattr(cfg, "against", None) or []) if cfg is not None else []


def _spec(entry: Any) -> dict[str, Any]:
    if isinstance(entry, str):
        return {"path": entry, "field": None, "format": "auto", "split": "test", "label": None}
    return entry.model_dump()


def benchmark_paths(cfg) -> list[Path]:
    """The files (or directories) of ``cfg.against``: inputs of the curate stage."""
    return [Path(_spec(e)["path"]) for e in _entries(cfg)]


def _label(spec: dict[str, Any], taken: set[str]) -> str:
    label = spec["label"] or Path(spec["path"]).name
    base, i = label, 2
    while label in taken:
        label, i = f"{base}#{i}", i + 1
    return label


def read_benchmark(spec: dict[str, Any], label: str) -> list[Problem]:
    """The problem texts of one benchmark file as Problems (ids ``label:N``, N the row number)."""
    from reasondistill.tasks.sources import read_rows

    out = []
    for n, row in enumerate(read_rows(spec["path"], spec["format"], spec["split"]), start=1):
        keys = [spec["field"]] if spec["field"] else [k for k in TEXT_FIELDS if k in row.data]
        text = row.data.get(keys[0]) if keys else None
        if not isinstance(text, str) or not text.strip():
            wanted = f"field {spec['field']!r}" if spec["field"] else f"one of the fields {', '.join(TEXT_FIELDS)}"
            raise RecordError(f"{row.where}: curate.decontaminate.against: the row has no {wanted} with the problem "
                              "text (set `field:` for this benchmark)")
        out.append(Problem(id=f"{label}:{n}", task=label, prompt=text, answer=""))
    return out


def read_benchmarks(cfg) -> list[tuple[str, list[Problem]]]:
    """(label, problems) of every benchmark of ``cfg.against``, in order."""
    out: list[tuple[str, list[Problem]]] = []
    for entry in _entries(cfg):
        spec = _spec(entry)
        label = _label(spec, {lab for lab, _ in out})
        out.append((label, read_benchmark(spec, label)))
    return out
