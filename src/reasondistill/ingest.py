"""Ingest reasoning traces someone already has, so curate → build → train run on them without a teacher.

Why: teacher traces are often produced elsewhere (a hosted R1, Ollama, a shared dataset). This
turns such a file into the run directory's ``problems/train.jsonl`` and ``generate/traces.jsonl``
and marks the run ``teacher.kind: ingested``: the generate stage then uses the ingested traces
instead of sampling, and ``curate``, ``build``, ``train`` run unchanged. Ingested problems are
recorded with task ``math`` and judged by :mod:`reasondistill.verify.math`; test problems still
come from the configured task.

Formats (a JSON array or JSON lines; one row = one trace; rows with the same problem become
samples 0, 1, … of that problem):

- ``r1``: the rows of "Build a Reasoning Model (From Scratch)" (ch08 distillation data):
  ``problem``, ``gtruth_answer``, ``message_thinking``, ``message_content``. The thinking may be
  wrapped once in ``<think>…</think>``; any other tag (in the thinking or the content) is kept, so
  curate flags the trace as a malformed ``<think>`` block, as it does for ``messages``.
- ``messages``: OpenAI-style ``messages`` — an optional system message, one user message and a
  final assistant message whose ``reasoning_content`` (or ``reasoning``) holds the thinking, or
  whose content holds ``<think>…</think>`` then the answer — plus a reference answer in
  ``answer`` (or ``gtruth_answer``, ``ground_truth``, ``reference``, ``solution``). A system
  message is recorded as the trace's ``sampling["system_prompt"]`` (as generate records the
  teacher's; tasks/strategy.py): the student is not trained on it (prompt erasure).

A problem's id is the row's ``id`` (``problem_id``, ``unique_id``) or a hash of its text. Every
row is checked before anything is written; an error names the file, the line and the field.
Outputs that differ from what is already in the run directory are moved aside (``*.stale-N``).

    reasondistill ingest distill_data.json runs/r1 --format r1 --config my.yaml students.0.train.lr=1e-4
    reasondistill curate runs/r1 && reasondistill build runs/r1 && reasondistill train runs/r1

Tests: ``pytest tests/test_ingest.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from reasondistill.layout import Layout
from reasondistill.records import Problem, RecordError, Trace, json_rows, to_dict, write_records
from reasondistill.thinking import CLOSE, OPEN, format_target, split_thinking

FORMATS = ("r1", "messages")
TASK = "math"
ID_KEYS = ("id", "problem_id", "unique_id")
ANSWER_KEYS = ("answer", "gtruth_answer", "ground_truth", "reference", "solution")


# -- reading ---------------------------------------------------------------------------------------
def read_rows(path: Path) -> list[tuple[int, Any]]:
    """(line, row) for every row of a JSON array or a JSON-lines file."""
    return json_rows(path)


def _text(row: dict, key: str, where: str, *, required: bool = True, numbers: bool = False) -> str | None:
    if key not in row or row[key] is None:
        if required:
            raise RecordError(f"{where}: field '{key}' is missing")
        return None
    value = row[key]
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise RecordError(f"{where}: field '{key}' should be a string, got {value!r:.60}")
    return value


def _unwrap(text: str) -> str:
    """A thinking field without the one ``<think>…</think>`` pair around it, if it has one. Any other
    tag stays, so the trace's text is a malformed ``<think>`` block that curate flags (as for
    ``messages`` with tags in the content) rather than a repaired one the student would train on."""
    text = text.strip()
    if text.startswith(OPEN) and text.endswith(CLOSE):
        text = text[len(OPEN):-len(CLOSE)].strip()
    return text


def parse_r1(row: dict, where: str) -> dict[str, Any]:
    """An r1 row as {prompt, answer, thinking, final, text}."""
    prompt = _text(row, "problem", where)
    gold = _text(row, "gtruth_answer", where, numbers=True)
    thinking = _unwrap(_text(row, "message_thinking", where))
    final = _text(row, "message_content", where).strip()  # a <think> here stays: curate flags it
    return {"prompt": prompt, "answer": gold, "thinking": thinking, "final": final,
            "text": format_target(thinking, final)}


def parse_messages(row: dict, where: str) -> dict[str, Any]:
    """A messages row as {prompt, answer, thinking, final, text, system}."""
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RecordError(f"{where}: field 'messages' should be a non-empty list of messages")
    roles = []
    for k, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RecordError(f"{where}: field 'messages[{k}]' should be an object with a 'role'")
        roles.append(m["role"])
    expected = (["system"] if roles[0] == "system" else []) + ["user", "assistant"]
    if roles != expected:
        raise RecordError(f"{where}: field 'messages' should be [system,] user, assistant; got {roles}")
    system = _text(msgs[0], "content", f"{where}: messages[0]") if roles[0] == "system" else None
    user, assistant = msgs[-2], msgs[-1]
    k = len(msgs) - 1
    prompt = _text(user, "content", f"{where}: messages[{k - 1}]")
    content = _text(assistant, "content", f"{where}: messages[{k}]", required=False) or ""
    reasoning = None
    for key in ("reasoning_content", "reasoning"):
        reasoning = _text(assistant, key, f"{where}: messages[{k}]", required=False)
        if reasoning:
            break
    if reasoning:
        thinking, final = _unwrap(reasoning), content.strip()  # stray tags stay for curate to flag
        text = format_target(thinking, final)
    else:  # <think>…</think> inside the content; a malformed block is kept for curate to judge
        thinking, final, _ok = split_thinking(content)
        text = content
    key = next((a for a in ANSWER_KEYS if a in row), None)
    if key is None:
        raise RecordError(f"{where}: field 'answer' is missing (a reference answer is needed to verify the trace; "
                          f"also accepted: {', '.join(ANSWER_KEYS[1:])})")
    gold = _text(row, key, where, numbers=True)
    return {"prompt": prompt, "answer": gold, "thinking": thinking, "final": final, "text": text, "system": system}


def _count(usage: dict, key: str) -> int:
    """A token count from a row's ``usage``; 0 when unknown (then curate.max_completion_tokens cannot apply)."""
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def problem_id(row: dict, prompt: str, where: str) -> str:
    for key in ID_KEYS:
        if row.get(key) is not None:
            value = row[key]
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise RecordError(f"{where}: field '{key}' should be a string or an integer, got {value!r:.60}")
            return str(value)
    return "ingested:" + hashlib.sha256(" ".join(prompt.split()).encode()).hexdigest()[:16]


def parse_file(path: str | Path, fmt: str, teacher: str | None = None) -> tuple[list[Problem], list[Trace]]:
    """Problems and traces from a file; raises RecordError (file:line: field) on the first bad row."""
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    parse = parse_r1 if fmt == "r1" else parse_messages
    teacher = teacher or f"ingested:{path.name}"
    problems: dict[str, Problem] = {}
    traces: list[Trace] = []
    lines: dict[str, int] = {}
    samples: dict[str, int] = {}
    for line, row in read_rows(path):
        where = f"{path}:{line}"
        if not isinstance(row, dict):
            raise RecordError(f"{where}: expected a JSON object, got {type(row).__name__}")
        r = parse(row, where)
        if not r["prompt"].strip():
            raise RecordError(f"{where}: field '{'problem' if fmt == 'r1' else 'messages'}' has an empty problem")
        pid = problem_id(row, r["prompt"], where)
        old = problems.get(pid)
        if old is None:
            meta = {"ingested_from": path.name, "line": line}
            problems[pid] = Problem(id=pid, task=TASK, prompt=r["prompt"], answer=r["answer"], meta=meta)
            lines[pid] = line
        elif old.prompt.split() != r["prompt"].split() or old.answer != r["answer"]:
            what = "problem text" if old.prompt.split() != r["prompt"].split() else "reference answer"
            raise RecordError(f"{where}: problem {pid!r} was seen at line {lines[pid]} with a different {what}")
        usage = row.get("usage") if isinstance(row.get("usage"), dict) else {}
        finish = row.get("finish_reason") or "stop"
        if finish not in ("stop", "length"):
            raise RecordError(f"{where}: field 'finish_reason' should be 'stop' or 'length', got {finish!r:.40}")
        samples[pid] = samples.get(pid, -1) + 1
        traces.append(Trace(problem_id=pid, sample=samples[pid], thinking=r["thinking"], answer=r["final"],
                            text=r["text"], prompt_tokens=_count(usage, "prompt_tokens"),
                            completion_tokens=_count(usage, "completion_tokens"), finish_reason=finish,
                            teacher=teacher, usage=usage,
                            sampling={"ingested_from": path.name, "line": line,
                                      **({"system_prompt": r["system"]} if r.get("system") else {})}))
    if not traces:
        raise RecordError(f"{path}: no rows")
    return list(problems.values()), traces


# -- the run directory -----------------------------------------------------------------------------
def _same(path: Path, records: list[Any]) -> bool:
    body = "".join(json.dumps(to_dict(r), ensure_ascii=False) + "\n" for r in records)
    return path.exists() and path.read_text(encoding="utf-8") == body


def _load_config(run_dir: Path, config: str | Path | None, overrides: list[str]):
    from reasondistill.config import load_config

    cfg_file = Layout(run_dir).config_file
    source = config if config is not None else (cfg_file if cfg_file.exists() else None)
    return load_config(source, [*overrides, f"run_dir={run_dir}", "teacher.kind=ingested"])


def ingest(path: str | Path, run_dir: str | Path, fmt: str, config: str | Path | None = None,
           overrides: list[str] | None = None, log=print, force: bool = False) -> dict[str, Any]:
    """Write ``problems/train.jsonl`` and ``generate/traces.jsonl`` of ``run_dir`` from ``path``.

    The run's config is ``config`` (else the run directory's ``config.yaml``, else the defaults)
    with ``overrides`` and ``teacher.kind: ingested``. Recorded as the run's ``ingest`` stage.
    """
    from reasondistill.pipeline import Pipeline
    from reasondistill.rundir import archive

    path, run_dir = Path(path), Path(run_dir)
    problems, traces = parse_file(path, fmt)  # every row is checked before anything is written
    pipe = Pipeline(_load_config(run_dir, config, overrides or []), log=log, show_progress=False)
    train, out = pipe.rd.train_problems, pipe.rd.traces

    def fn(_fp):
        for target, records in ((train, problems), (out, traces)):
            if target.exists() and not _same(target, records):
                archive(target, log)
            write_records(target, records)
        log(f"       {len(traces)} traces of {len(problems)} problems from {path}")
        return {"file": str(path), "format": fmt, "problems": len(problems), "traces": len(traces)}
    result = pipe.rd.run_stage("ingest", {"file": str(path.resolve()), "format": fmt}, [path], [train, out], fn,
                               force=force, log=log)
    pipe.problems()  # the configured task's test problems (decontamination and evaluation use them)
    return result


# -- command line ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from reasondistill.hints import HintingParser

    p = HintingParser(prog="reasondistill ingest", description="Turn a file of existing reasoning traces into "
                      "a run directory's problems and traces (no teacher needed); then run curate, build, "
                      "train on it.")
    p.add_argument("file", help="a JSON array or JSON-lines file of traces")
    p.add_argument("run_dir", help="the run directory to write (created if missing)")
    p.add_argument("--format", required=True, choices=FORMATS, dest="fmt",
                   help="r1: problem/gtruth_answer/message_thinking/message_content rows; messages: OpenAI-style "
                   "messages with reasoning_content or <think> in the content, and an 'answer' field")
    p.add_argument("--config", help="config YAML for the run (default: RUN_DIR/config.yaml, else the defaults)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. task.n_test=200")
    p.add_argument("--force", action="store_true", help="re-ingest even if the file and outputs are unchanged")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    from reasondistill.errors import run_verb

    def body() -> int:
        ingest(args.file, args.run_dir, args.fmt, args.config, args.overrides, force=args.force)
        print(f"next: reasondistill curate {args.run_dir}")
        return 0
    return run_verb("ingest", body, crash_dir=lambda: Path(args.run_dir) if Path(args.run_dir).is_dir() else None)


if __name__ == "__main__":
    sys.exit(main())
