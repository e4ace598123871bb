"""Rows of problem files: JSONL, JSON (an array), CSV, Parquet and Hugging Face ``datasets``.

Why: real problem sets come in many formats, and a bad row must be reported where it is (file,
line or row, field) rather than failing somewhere downstream. Every reader yields :class:`Row`
objects carrying their location; :func:`field_value` reads one mapped field of a row and raises
:class:`~reasondistill.records.RecordError` naming the file, the line and the field.

JSONL, JSON and CSV need only the standard library; Parquet needs ``pyarrow`` (or ``pandas``) and
a ``datasets`` directory (``save_to_disk``) or hub id needs ``datasets``
(``pip install 'reasondistill[data]'``). Both are imported only when used.

    for row in read_rows("data/gsm8k/test.jsonl"):
        q = field_value(row, "question", "question")   # "data/gsm8k/test.jsonl:3: field ..." on error
    rows = read_dataset("data/math500_saved", split="test")   # a save_to_disk directory
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from reasondistill.records import RecordError, has_bad_bytes, iter_jsonl, json_array_rows, read_text

EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet",
              ".pq": "parquet"}


@dataclass(frozen=True)
class Row:
    """One record of a problem file and where it came from (for error messages)."""

    where: str  # e.g. "data/train.jsonl:12", "data/train.csv:5 (row 4)", "dir[test]: row 7"
    data: dict[str, Any]


def detect_format(path: str | Path, fmt: str = "auto") -> str:
    """``fmt`` unless "auto": a directory is a ``datasets`` directory, else the file's extension decides."""
    if fmt != "auto":
        return fmt
    p = Path(path)
    if p.is_dir():
        return "hf"
    for suffix in reversed(p.suffixes):
        if suffix.lower() in EXTENSIONS:
            return EXTENSIONS[suffix.lower()]
    raise RecordError(f"{p}: cannot tell the format from the name; set task.format to one of "
                      "jsonl, json, csv, parquet, hf")


def read_rows(path: str | Path, fmt: str = "auto", split: str | None = None,
              on_error: Callable[[RecordError], None] | None = None) -> Iterator[Row]:
    """The rows of one file (or of ``split`` of a ``datasets`` directory), in file order.

    A row that cannot be read (not UTF-8, not JSON, not an object, too many CSV values) raises
    RecordError, or is handed to ``on_error`` and reading goes on. A file broken as a whole (a JSON
    array's syntax, an unreadable Parquet file) always raises."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: problem file not found (paths are relative to the working directory "
                                f"{Path.cwd()})")
    kind = detect_format(p, fmt)
    readers = {"jsonl": _jsonl, "json": _json_array, "csv": _csv, "parquet": _parquet}
    if kind == "hf":
        yield from read_dataset(str(p), split=split)
        return
    if kind not in readers:
        raise RecordError(f"{p}: unknown format {kind!r}")
    yield from readers[kind](p, on_error or _raise)


def _raise(err: RecordError) -> None:
    raise err


def _bad_object(where: str, obj: Any, lenient: bool = False) -> RecordError | None:
    """Why ``obj`` is not a row, or None; ``lenient``: read with :func:`read_text`'s ``lenient``."""
    if not isinstance(obj, dict):
        return RecordError(f"{where}: expected an object with named fields, got {type(obj).__name__}")
    if lenient and has_bad_bytes(obj):
        return RecordError(f"{where}: not UTF-8 text; convert the file to UTF-8")
    return None


def _jsonl(p: Path, on_error: Callable[[RecordError], None]) -> Iterator[Row]:
    for lineno, obj in iter_jsonl(p, on_error):
        where = f"{p}:{lineno}"
        if (err := _bad_object(where, obj)) is not None:
            on_error(err)
            continue
        yield Row(where, obj)


def _json_array(p: Path, on_error: Callable[[RecordError], None]) -> Iterator[Row]:
    """A JSON array of objects, each row knowing its line and item number."""
    lenient = on_error is not _raise  # skipping bad rows: a row with bytes that are not UTF-8 is one
    for item, (line, obj) in enumerate(json_array_rows(p, read_text(p, lenient)), start=1):
        where = f"{p}:{line} (item {item})"
        if (err := _bad_object(where, obj, lenient)) is not None:
            on_error(err)
            continue
        yield Row(where, obj)


def _csv(p: Path, on_error: Callable[[RecordError], None]) -> Iterator[Row]:
    lenient = on_error is not _raise  # else not UTF-8: an error naming the file and line
    with io.StringIO(read_text(p, lenient), newline="") as fh:
        reader = csv.DictReader(fh)
        start = 2  # the line the next record starts on (line 1 is the header)
        for n, rec in enumerate(reader, start=1):
            where = f"{p}:{start} (row {n})"
            start = reader.line_num + 1
            if None in rec:
                on_error(RecordError(f"{where}: {len(reader.fieldnames or []) + len(rec[None])} values for "
                                     f"{len(reader.fieldnames or [])} columns"))
            elif lenient and has_bad_bytes(rec):
                on_error(RecordError(f"{where}: not UTF-8 text; convert the file to UTF-8"))
            else:
                yield Row(where, dict(rec))


def _parquet(p: Path, _on_error: Callable[[RecordError], None]) -> Iterator[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        pq = None
    if pq is not None:
        import pyarrow as pa

        n = 0
        try:
            batches = pq.ParquetFile(p).iter_batches(batch_size=1024)
            for batch in batches:
                for rec in batch.to_pylist():
                    n += 1
                    yield Row(f"{p}: row {n}", rec)
        except (pa.ArrowException, OSError) as exc:
            raise RecordError(f"{p}: not a readable Parquet file ({exc})") from None
        return
    try:
        import pandas as pd
    except ImportError:
        raise ImportError(f"{p}: reading Parquet needs pyarrow (pip install 'reasondistill[data]')") from None
    for n, rec in enumerate(pd.read_parquet(p).to_dict("records"), start=1):
        yield Row(f"{p}: row {n}", rec)


def _datasets():
    try:
        import datasets
    except ImportError:
        raise ImportError("task: a Hugging Face dataset (task.format 'hf', a save_to_disk directory or "
                          "task.hf_id) needs the `datasets` package: pip install 'reasondistill[data]'") from None
    return datasets


def read_dataset(path_or_id: str, split: str | None = None, config: str | None = None,
                 hub: bool = False) -> Iterator[Row]:
    """Rows of a ``save_to_disk`` directory (a Dataset, or ``split`` of a DatasetDict) or of a hub
    dataset (``hub=True``; needs the network: with ``HF_HUB_OFFLINE=1`` only the local cache works)."""
    datasets = _datasets()
    if hub:
        try:
            ds = datasets.load_dataset(path_or_id, config, split=split)
        except Exception as exc:  # offline, unknown id, unknown split: say which and why
            raise RecordError(f"task.hf_id {path_or_id!r} (config {config!r}, split {split!r}): could not load "
                              f"from the hub: {type(exc).__name__}: {exc}"[:600]) from None
        label = f"{path_or_id}[{split}]"
    else:
        ds = datasets.load_from_disk(path_or_id)
        label = path_or_id
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise RecordError(f"{path_or_id}: no split {split!r} in this dataset; it has {sorted(ds)} "
                                  "(set task.train_split / task.test_split)")
            ds = ds[split]
            label = f"{path_or_id}[{split}]"
    for n, rec in enumerate(ds, start=1):
        yield Row(f"{label}: row {n}", dict(rec))


def is_dataset_dict(path: str | Path) -> bool:
    """Is ``path`` a ``DatasetDict.save_to_disk`` directory (splits inside) rather than one Dataset?"""
    return (Path(path) / "dataset_dict.json").exists()


def field_value(row: Row, role: str, key: str | list[str] | None, *, required: bool = True,
                kind: str = "text") -> Any:
    """The value of mapped field ``key`` (config ``task.fields.<role>``) in ``row``.

    ``kind`` "text": a non-empty string (numbers become strings); "int"; "list": a list (a JSON
    list inside a string is accepted, e.g. from CSV); "any". A missing or empty optional field
    is None; a missing required one raises RecordError naming the location and the field.
    """
    if key is None:
        return None
    if isinstance(key, list):  # several fields, one value each (e.g. choices in columns A, B, C, D)
        return [field_value(row, role, k, required=required, kind="text") for k in key]
    name = f"field {key!r} (task.fields.{role})"
    value = row.data.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            what = "is missing" if key not in row.data else "is empty"
            known = ", ".join(sorted(map(str, row.data))[:12])
            raise RecordError(f"{row.where}: {name} {what}; the row has: {known}")
        return None
    if kind == "text":
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise RecordError(f"{row.where}: {name} should be text, got {type(value).__name__} {value!r:.60}")
        if isinstance(value, float) and not math.isfinite(value):  # JSON's NaN/Infinity, a blank numeric cell
            raise RecordError(f"{row.where}: {name} is {value!r}, not a usable value")
        return value if isinstance(value, str) else str(value)
    if kind == "int":
        try:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise RecordError(f"{row.where}: {name} should be an integer, got {value!r:.60}") from None
    if kind == "list":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise RecordError(f"{row.where}: {name} should be a list (or a JSON list in a string), "
                                  f"got {value!r:.60}") from None
        if hasattr(value, "tolist"):  # numpy arrays from pandas
            value = value.tolist()
        if not isinstance(value, (list, tuple)) or not value:
            raise RecordError(f"{row.where}: {name} should be a non-empty list, got {value!r:.60}")
        return list(value)
    return value
