"""Tasks whose problems are read from files or datasets, and the generic question/answer one.

Why: every benchmark adapter (GSM8K, MATH, multiple choice, code; :mod:`.adapters`) reads rows
the same way, splits them the same way and orders them the same way; only turning a row into a
:class:`~reasondistill.records.Problem` and checking an answer differ. :class:`RowTask` does the
shared part:

* rows come from ``train_path``/``test_path`` (separate files), from the train/test splits of a
  ``datasets`` directory or hub id, or from one ``path`` split by a hash of the question text
  (``test_fraction`` of the questions are test; no seed or size moves a question across);
* ids are ``<name>:<id field>`` or, without an id field, ``<name>:<hash of the question>``
  (a repeated question is kept once); a repeated id field is an error naming both rows, even
  when a hash split puts them in different splits;
* an empty train split is an error saying where the rows went (an empty test split is not:
  evaluation is skipped);
* ``problems(split, n, seed)`` is a seeded shuffle of the split, then the first ``n`` (None: all);
* a malformed row, including a line the reader cannot read (not UTF-8, not JSON, not an object),
  raises an error naming file, line and field, or with ``skip_bad_rows`` is skipped, counted and
  its reason kept (the first few): :meth:`RowTask.left_out`, which the pipeline writes to
  ``problems/composition.json`` and prints.

    task = FileTask(path="qa.jsonl", fields={"question": "q", "answer": "a"})
    task.problems("test", n=None, seed=0)
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from pathlib import Path
from typing import Any

from reasondistill.records import Problem, RecordError
from reasondistill.checks import Check
from reasondistill.tasks.config import FileFields
from reasondistill.tasks.sources import Row, detect_format, field_value, is_dataset_dict, read_dataset, read_rows


SKIP_REASONS = 5  # skipped bad rows whose reason is recorded (per split); the rest are counted


def hash_split(text: str, test_fraction: float) -> str:
    """"test" for a fixed ``test_fraction`` of question texts, else "train" (seed-independent)."""
    h = int.from_bytes(hashlib.blake2b(text.strip().encode(), digest_size=8).digest(), "big")
    return "test" if h / 2**64 < test_fraction else "train"


def math_job(problem: Problem, answer: str) -> tuple:
    """The check of a free-form math answer as a pool job: math-verify can hang on hostile LaTeX."""
    from reasondistill.verify.math import verify_math

    return verify_math, (problem.answer, answer)


def text_id(text: str) -> str:
    return hashlib.blake2b(text.strip().encode(), digest_size=6).hexdigest()


class RowTask:
    """Shared machinery of file-backed tasks; subclasses set ``kind``/``fields_cls`` and write
    :meth:`parse` (row → Problem parts) and :meth:`check`."""

    kind = "file"
    fields_cls: Any = None

    def __init__(self, name: str | None = None, *, path: str | None = None, train_path: str | None = None,
                 test_path: str | None = None, hf_id: str | None = None, hf_config: str | None = None,
                 train_split: str = "train", test_split: str = "test", format: str = "auto",
                 test_fraction: float = 0.1, template: str = "{question}", skip_bad_rows: bool = False,
                 fields: dict[str, Any] | None = None, strategy: str | None = None):
        if sum(bool(x) for x in (path, hf_id, train_path or test_path)) != 1:
            raise ValueError("task: set exactly one of 'path', 'train_path'/'test_path' or 'hf_id'")
        self.name = name or self.kind
        self.path, self.train_path, self.test_path = path, train_path, test_path
        self.hf_id, self.hf_config = hf_id, hf_config
        self.splits = {"train": train_split, "test": test_split}
        self.format, self.test_fraction, self.template = format, test_fraction, template
        self.skip_bad_rows, self.strategy = skip_bad_rows, strategy
        self.fields = self.fields_cls(**(fields or {}))
        self.skipped: dict[str, int] = {}  # bad rows skipped per split (skip_bad_rows)
        self.skip_reasons: dict[str, list[str]] = {}  # the first SKIP_REASONS of them, "file:line: why"
        self.repeated: dict[str, int] = {}  # repeated questions kept once, per split
        self._cache: dict[str, list[Problem]] = {}

    # -- what subclasses provide -----------------------------------------------------------------
    def parse(self, row: Row) -> dict[str, Any]:
        """``question`` (rendered into the template), ``answer`` and optionally ``solution``,
        ``difficulty``, ``meta``, ``id``; raise RecordError (via field_value) on a bad row."""
        raise NotImplementedError

    def check_job(self, problem: Problem, answer: str) -> tuple | None:
        """``(function, args)`` whose call checks the answer in a worker process with a time limit
        (reasondistill.verify.checker), or None: :meth:`check` runs here (it cannot hang)."""
        return None

    def check(self, problem: Problem, answer: str) -> Check:
        job = self.check_job(problem, answer)
        if job is None:
            raise NotImplementedError
        func, args = job
        return func(*args)

    # -- the Task protocol ------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        src = {k: v for k, v in (("path", self.path), ("train_path", self.train_path), ("test_path", self.test_path),
                                 ("hf_id", self.hf_id), ("hf_config", self.hf_config)) if v}
        return {"name": self.name, "kind": self.kind, **src, "fields": self.fields.model_dump(),
                "split": "hash of the question" if self._hash_split() else self.splits,
                "skipped_bad_rows": dict(self.skipped), "repeated_questions": dict(self.repeated),
                **({"strategy": self.strategy} if self.strategy else {})}

    def left_out(self, split: str) -> dict[str, Any] | None:
        """What reading ``split`` left out: bad rows skipped (with the first reasons) and repeated
        questions kept once; None when nothing (the pipeline records it in problems/composition.json)."""
        self._pool(split)
        if not (self.skipped[split] or self.repeated[split]):
            return None
        return {"bad_rows": self.skipped[split], "repeated_questions": self.repeated[split],
                "first_bad_rows": list(self.skip_reasons[split])}

    def problems(self, split: str, n: int | None, seed: int) -> list[Problem]:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        pool = self._pool(split)
        order = list(range(len(pool)))
        random.Random(f"{self.name}:{split}:{seed}").shuffle(order)
        if n is not None:
            order = order[:n]
        return [dataclasses.replace(pool[i], meta=dict(pool[i].meta)) for i in order]

    def input_files(self) -> list[Path]:
        """Local files the problems come from (their hashes make the problems stage re-run on change)."""
        return [Path(p) for p in (self.path, self.train_path, self.test_path) if p and Path(p).exists()]

    # -- reading ----------------------------------------------------------------------------------
    def _hash_split(self) -> bool:
        if not self.path:
            return False
        return not (detect_format(self.path, self.format) == "hf" and is_dataset_dict(self.path))

    def _rows(self, split: str, on_error=None):
        if self.hf_id:
            return read_dataset(self.hf_id, split=self.splits[split], config=self.hf_config, hub=True)
        if self.path:
            return read_rows(self.path, self.format, split=self.splits[split], on_error=on_error)
        path = self.train_path if split == "train" else self.test_path
        if not path:
            raise ValueError(f"task {self.name}: no {split} problems: set task.{split}_path")
        return read_rows(path, self.format, split=self.splits[split] if is_dataset_dict(path) else None,
                         on_error=on_error)

    def _pool(self, split: str) -> list[Problem]:
        if split in self._cache:
            return self._cache[split]
        hashed = self._hash_split()
        out: list[Problem] = []
        seen: dict[str, str] = {}  # every id of the file (both splits of a hash split) → its row
        bad: list[RecordError] = []  # rows skipped (skip_bad_rows); unreadable ones come from the reader
        repeated = rows = elsewhere = unparsed = 0
        for row in self._rows(split, bad.append if self.skip_bad_rows else None):
            rows += 1
            try:
                parts = self.parse(row)
                here = not hashed or hash_split(parts["question"], self.test_fraction) == split
                explicit = parts.get("id") is not None
                pid = f"{self.name}:{parts['id'] if explicit else text_id(parts['question'])}"
                if pid in seen:
                    if not explicit:  # the same question: always in the same split
                        repeated += here
                        continue
                    raise RecordError(f"{row.where}: field {self.fields.id!r} (task.fields.id): id "
                                      f"{parts['id']!r} repeats the one at {seen[pid]}")
            except RecordError as exc:
                if not self.skip_bad_rows:
                    raise
                bad.append(exc)
                unparsed += 1
                continue
            seen[pid] = row.where
            if not here:  # the other split's (read for its ids)
                elsewhere += 1
                continue
            meta = dict(parts.get("meta") or {})
            if self.strategy:
                meta["strategy"] = self.strategy
            out.append(Problem(id=pid, task=self.name, prompt=self.template.replace("{question}", parts["question"]),
                               answer=parts["answer"], solution=parts.get("solution") or "",
                               difficulty=parts.get("difficulty") or 0, meta=meta))
        source = self.hf_id or self.path or (self.train_path if split == "train" else self.test_path)
        if not rows and not bad:
            raise RecordError(f"{source}: no rows (an empty file?): task {self.name} has no {split} problems")
        if split == "train" and not out:  # (an empty test split only skips evaluation)
            why = self._empty_train(rows + len(bad) - unparsed, elsewhere, bad, repeated)
            raise RecordError(f"{source}: {why}")
        self.skipped[split], self.repeated[split] = len(bad), repeated
        self.skip_reasons[split] = [str(e) for e in bad[:SKIP_REASONS]]
        self._cache[split] = out
        return out

    def _empty_train(self, total: int, elsewhere: int, bad: list[RecordError], repeated: int) -> str:
        """Why the task has no training problem: where its ``total`` rows went instead."""
        went, fix = [], []
        if elsewhere:
            went.append(f"task.test_fraction={self.test_fraction:g} put {elsewhere} in the test split")
            fix.append("lower task.test_fraction, or give train_path and test_path")
        if bad:
            went.append(f"{len(bad)} malformed rows skipped (task.skip_bad_rows; the first: {bad[0]})")
            fix.append("fix the malformed rows")
        if repeated:
            went.append(f"{repeated} repeated questions kept once")
        return (f"the train split is empty (0 of {total} rows; {'; '.join(went)}): task {self.name} has nothing "
                f"to train on; {' or '.join(fix) or 'give it more rows'}")


class FileTask(RowTask):
    """Any question/answer file: ``verifier`` "math" (math-verify equivalence, as for GSM8K/MATH)
    or "exact" (the same text after trimming and case folding)."""

    kind = "file"
    fields_cls = FileFields

    def __init__(self, name: str | None = None, *, verifier: str = "math", **kw: Any):
        super().__init__(name, **kw)
        if verifier not in ("math", "exact"):
            raise ValueError(f"task.verifier: 'math' or 'exact', got {verifier!r}")
        self.verifier = verifier

    def parse(self, row: Row) -> dict[str, Any]:
        f = self.fields
        return {"question": field_value(row, "question", f.question),
                "answer": field_value(row, "answer", f.answer),
                "solution": field_value(row, "solution", f.solution, required=False),
                "difficulty": field_value(row, "difficulty", f.difficulty, required=False, kind="int"),
                "id": field_value(row, "id", f.id, required=False)}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "verifier": self.verifier}

    def check_job(self, problem: Problem, answer: str) -> tuple | None:
        return math_job(problem, answer) if self.verifier == "math" else None

    def check(self, problem: Problem, answer: str) -> Check:
        if self.verifier == "math":
            return super().check(problem, answer)
        got = " ".join(answer.split()).casefold()
        if not got:
            return Check("unparseable", "no answer found", None)
        want = " ".join(problem.answer.split()).casefold()
        return Check("correct", "match", got) if got == want else Check("wrong", "mismatch", got)
