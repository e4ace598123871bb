"""The records every stage reads and writes, and crash-safe JSON-lines files to hold them.

Why: each stage of the pipeline hands the next one a file. Those files must survive a crash
(append-only, flushed per line, a torn last line detected and redone) and bad input must be
reported by file, line and field instead of failing somewhere downstream.

    from reasondistill.records import Problem, read_records, JsonlWriter
    problems = read_records("runs/demo/problems/train.jsonl", Problem)
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import os
import secrets
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, TypeVar

T = TypeVar("T")


class RecordError(ValueError):
    """A record in a file is malformed; the message names the file, the line and the field."""


@dataclass
class Problem:
    """A reasoning problem with a checkable answer."""

    id: str
    task: str
    prompt: str
    answer: str
    solution: str = ""  # a reference step-by-step solution, when the task has one
    difficulty: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Trace:
    """One sampled completion of a teacher (or a solver) for one problem."""

    problem_id: str
    sample: int
    thinking: str
    answer: str
    text: str  # the raw completion, exactly as decoded
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"
    teacher: str
    sampling: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # set (with finish_reason "error") when the teacher kept failing
    usage: dict[str, Any] = field(default_factory=dict)  # e.g. API prompt/completion tokens


# What a task's check says of an answer (tasks/base.py: Check.verdict).
CheckVerdict = Literal["correct", "wrong", "unparseable"]
# What curation and evaluation say of a completion: its answer's check, or "truncated" when the
# token limit cut it off first (curate/verdicts.py).
TraceVerdict = Literal[CheckVerdict, "truncated"]


@dataclass
class Verdict:
    """The verifier's judgement of one trace: correct, wrong, unparseable or truncated."""

    problem_id: str
    sample: int
    verdict: TraceVerdict
    reason: str
    predicted: str | None = None
    malformed_think: bool = False  # unparseable because the <think> block is broken (curate.require_think)


def to_dict(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record)


def record_hash(record: Any) -> str:
    """A short hash of a record's content (every field), e.g. to tell an edited problem from the same one."""
    import hashlib

    return hashlib.sha256(json.dumps(to_dict(record), sort_keys=True).encode()).hexdigest()[:16]


def _check_type(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_check_type(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is dict:
        return isinstance(value, dict)
    if origin is list:
        return isinstance(value, list)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build a dataclass record from a dict, naming the offending field on error."""
    prefix = f"{where}: " if where else ""
    if not isinstance(data, dict):
        raise RecordError(f"{prefix}expected a JSON object for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecordError(f"{prefix}field '{f.name}' is missing ({cls.__name__} needs it)")
            continue
        value = data[f.name]
        if not _check_type(value, hints[f.name]):
            raise RecordError(
                f"{prefix}field '{f.name}' should be {_type_name(hints[f.name])}, got {value!r:.60}"
            )
        kwargs[f.name] = value
    return cls(**kwargs)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def iter_jsonl(path: str | Path, on_error: Callable[[RecordError], None] | None = None
               ) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for every non-blank line; a bad line raises RecordError, or is
    handed to ``on_error`` and reading goes on. A UTF-8 byte order mark opening the file is skipped."""
    path = Path(path)
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = (raw.removeprefix(codecs.BOM_UTF8) if lineno == 1 else raw).decode("utf-8")
                if not line.strip():
                    continue
                obj = _json_line(path, lineno, line)
            except UnicodeDecodeError as exc:
                err = RecordError(f"{path}:{lineno}: not UTF-8 text ({exc.reason} at byte {exc.start} of the line)")
            except RecordError as exc:
                err = exc
            else:
                yield lineno, obj
                continue
            if on_error is None:
                raise err
            on_error(err)


def _json_line(path: Path, lineno: int, line: str) -> Any:
    try:
        return json.loads(line.rstrip("\r\n"))  # with the newline, an error at the end would be "column 1"
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None


def read_text(path: str | Path, lenient: bool = False) -> str:
    """A UTF-8 text file (a byte order mark opening it is dropped); one that is not UTF-8 raises
    RecordError naming it and the line, unless ``lenient``: then each bad byte becomes a lone
    surrogate (U+DC80-U+DCFF, see :func:`has_bad_bytes`) for the caller to report per row."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig", "surrogateescape" if lenient else "strict")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise RecordError(f"{path}:{line}: not UTF-8 text ({exc.reason}); convert the file to UTF-8") from None


def has_bad_bytes(value: Any) -> bool:
    """Does ``value`` (text, or a list/dict holding text) carry bytes a lenient :func:`read_text` could not decode?"""
    if isinstance(value, str):
        return any("\udc80" <= ch <= "\udcff" for ch in value)
    if isinstance(value, dict):
        return any(has_bad_bytes(k) or has_bad_bytes(v) for k, v in value.items())
    return isinstance(value, list) and any(has_bad_bytes(v) for v in value)


def json_rows(path: str | Path) -> list[tuple[int, Any]]:
    """(line, value) for every element of a top-level JSON array, or every line of a JSON-lines file."""
    text = read_text(path)
    if text.lstrip().startswith("["):
        return json_array_rows(Path(path), text)
    return list(iter_jsonl(path))


def json_array_rows(path: Path, text: str) -> list[tuple[int, Any]]:
    """The elements of the top-level JSON array in ``text``, each with the line it starts on. Errors
    name the file and line: invalid JSON, a missing ',' or ']', an unclosed array, and anything
    but white space after the closing ']' (a second array pasted on is not silently dropped)."""
    dec, rows = json.JSONDecoder(), []

    def skip(j: int) -> int:
        while j < len(text) and text[j] in " \t\r\n":
            j += 1
        return j

    def line(j: int) -> int:
        return text.count("\n", 0, j) + 1

    i = skip(0)
    if i >= len(text) or text[i] != "[":
        raise RecordError(f"{path}:{line(i)}: expected a JSON array (use .jsonl for one object per line)")
    i = skip(i + 1)
    while i < len(text) and text[i] != "]":
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        rows.append((line(i), obj))
        i = skip(end)
        if i < len(text) and text[i] == ",":
            i = skip(i + 1)
        elif i >= len(text) or text[i] != "]":
            raise RecordError(f"{path}:{line(i)}: expected ',' or ']' after array element {len(rows)}")
    if i >= len(text):
        raise RecordError(f"{path}:{line(i)}: the JSON array is not closed")
    after = skip(i + 1)
    if after < len(text):
        raise RecordError(f"{path}:{line(after)}: text after the end of the JSON array")
    return rows


def read_records(path: str | Path, cls: type[T]) -> list[T]:
    return [from_dict(cls, obj, f"{path}:{lineno}") for lineno, obj in iter_jsonl(path)]


def write_records(path: str | Path, records: Iterable[Any]) -> None:
    """Write a whole file atomically (temp file + rename): readers never see half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for rec in records:
                obj = rec if isinstance(rec, dict) else to_dict(rec)
                fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's content, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tmp_path(path: str | Path) -> Path:
    """A temporary name beside ``path``, unique to this process and call (pid + random suffix), so
    concurrent writers of one file (e.g. DDP ranks) never write into each other's temp file."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def write_text(path: str | Path, text: str) -> None:
    """Write a whole text file atomically (temp file + rename): readers see the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def repair_tail(path: str | Path) -> int:
    """Cut a torn last line left by a crash; return how many bytes were cut.

    A line is complete when it ends in a newline and parses as JSON. The cut bytes are kept in
    ``<path>.torn`` so nothing is silently thrown away.
    """
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    if not data:
        return 0
    end = len(data)
    keep = data.rfind(b"\n", 0, end) + 1 if not data.endswith(b"\n") else end
    if keep == end:  # last line is newline-terminated: check that it parses
        prev = data.rfind(b"\n", 0, end - 1) + 1
        try:
            json.loads(data[prev:end])
            return 0
        except ValueError:
            keep = prev
    torn = data[keep:]
    with open(path.with_name(path.name + ".torn"), "ab") as fh:
        fh.write(torn + b"\n")
    with open(path, "r+b") as fh:
        fh.truncate(keep)
    return len(torn)


class JsonlWriter:
    """Append records to a JSON-lines file, one flushed line at a time.

    Each line is written whole with a single ``write`` and flushed, so a crash leaves at most
    one torn line, which :func:`repair_tail` removes on the next start.
    """

    def __init__(self, path: str | Path, fsync_every: int = 64):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_tail(self.path)
        self._fh = self.path.open("a", encoding="utf-8")
        self._since_sync = 0
        self.fsync_every = fsync_every

    def write(self, record: Any) -> None:
        obj = record if isinstance(record, dict) else to_dict(record)
        self._fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self._fh.flush()
        self._since_sync += 1
        if self._since_sync >= self.fsync_every:
            os.fsync(self._fh.fileno())
            self._since_sync = 0

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
