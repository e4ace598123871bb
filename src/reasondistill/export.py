"""Export a run's curated traces as a TRL dataset: conversational ``messages`` or prompt-completion JSONL.

Why: the verified traces are worth training on with other tools too (TRL's ``SFTTrainer``,
axolotl, LLaMA-Factory, …). This writes them in TRL's two conversational dataset types
(https://huggingface.co/docs/trl/dataset_formats), with the same assistant text our own build
stage trains on: ``<think>thinking</think>\\n\\nanswer`` (``build.think_tags``; without tags the
thinking and the answer are joined by a blank line), or the answer alone for a student whose
``target`` is ``answers_only``. One row per distinct (problem, completion), in curated order.

- ``messages``:          ``{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}``
- ``prompt_completion``: ``{"prompt": [{"role": "user", ...}], "completion": [{"role": "assistant", ...}]}``

``--with-reference`` adds each row's problem ``id`` and reference ``answer`` (extra columns: the
file can then be ingested again with ``reasondistill ingest FILE RUN --format messages``).

    reasondistill export runs/demo --format messages --student student_traces --out traces.jsonl
    # then, e.g.: datasets.load_dataset("json", data_files="traces.jsonl") → trl.SFTTrainer(train_dataset=...)

Tests: ``pytest tests/test_export.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable

from reasondistill.layout import Layout
from reasondistill.records import Problem, Trace, read_records, write_records

FORMATS = ("messages", "prompt_completion")
TARGETS = ("traces", "answers_only")


def to_rows(problems: dict[str, Problem], traces: Iterable[Trace], fmt: str, target: str = "traces",
            think_tags: bool = True, with_reference: bool = False) -> list[dict[str, Any]]:
    """TRL conversational rows for curated traces (the examples :func:`make_examples` builds)."""
    from reasondistill.data.build import make_examples

    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {FORMATS}, got {fmt!r}")
    rows = []
    for ex in make_examples(problems, traces, target, think_tags):
        user = [{"role": "user", "content": ex.prompt}]
        assistant = [{"role": "assistant", "content": ex.completion}]
        row: dict[str, Any] = ({"messages": user + assistant} if fmt == "messages"
                               else {"prompt": user, "completion": assistant})
        if with_reference:
            row.update(id=ex.problem_id, answer=problems[ex.problem_id].answer)
        rows.append(row)
    return rows


def export(run_dir: str | Path, fmt: str, out: str | Path | None = None, student: str | None = None,
           target: str | None = None, with_reference: bool = False) -> tuple[Path, int]:
    """Write the run's curated traces as ``fmt`` JSONL; returns the path and the number of rows.

    The target is the student's (``student``), else ``target``, else ``traces``; think tags follow
    the run's ``build.think_tags``.
    """
    from reasondistill.config import load_config

    run_dir = Path(run_dir)
    lay = Layout(run_dir)
    cfg_file = lay.config_file
    if not cfg_file.exists():
        raise FileNotFoundError(f"{run_dir} has no config.yaml: pass a run directory")
    cfg = load_config(cfg_file, [f"run_dir={run_dir}"])
    if student is not None:
        s = cfg.student(student)
        if target is not None and target != s.target:
            raise ValueError(f"--target {target} contradicts student {student!r}'s target {s.target!r}")
        target = s.target
    target = target or "traces"
    curated, problems_path = lay.curated, lay.train_problems
    for p in (curated, problems_path):
        if not p.exists():
            raise FileNotFoundError(f"{p} not found: run `reasondistill curate {run_dir}` first")
    problems = {p.id: p for p in read_records(problems_path, Problem)}
    rows = to_rows(problems, read_records(curated, Trace), fmt, target, cfg.build.think_tags, with_reference)
    path = Path(out) if out else lay.exports_dir / f"{student or target}.{fmt}.jsonl"
    write_records(path, rows)
    return path, len(rows)


def check_rows(rows: Iterable[dict[str, Any]], fmt: str) -> int:
    """Structural check of TRL's conversational format; raises ValueError naming the row. Returns the count."""
    n = 0
    for n, row in enumerate(rows, start=1):
        parts = {"messages": row.get("messages")} if fmt == "messages" else \
            {"prompt": row.get("prompt"), "completion": row.get("completion")}
        for key, msgs in parts.items():
            if not isinstance(msgs, list) or not msgs:
                raise ValueError(f"row {n}: '{key}' should be a non-empty list of messages")
            for m in msgs:
                if set(m) != {"role", "content"} or m["role"] not in ("system", "user", "assistant") \
                        or not isinstance(m["content"], str):
                    raise ValueError(f"row {n}: '{key}' holds a message that is not {{role, content}}: {m!r:.80}")
        if fmt == "prompt_completion" and parts["completion"][-1]["role"] != "assistant":
            raise ValueError(f"row {n}: the completion should be an assistant message")
    return n


def main(argv: list[str] | None = None) -> int:
    from reasondistill.hints import HintingParser

    ap = HintingParser(prog="reasondistill export", description="Write a run's curated traces as a TRL "
                       "dataset (JSON lines): conversational messages or prompt-completion.")
    ap.add_argument("run_dir", help="a run directory that has been curated")
    ap.add_argument("--format", required=True, choices=FORMATS, dest="fmt",
                    help="messages: one 'messages' list per row; prompt_completion: 'prompt' and 'completion'")
    ap.add_argument("--out", help="output file (default: RUN_DIR/export/<student or target>.<format>.jsonl)")
    ap.add_argument("--student", help="use this student's target (traces or answers_only)")
    ap.add_argument("--target", choices=TARGETS, help="without --student: what the assistant says (default: traces)")
    ap.add_argument("--with-reference", action="store_true", help="add each row's problem id and reference answer")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    from reasondistill.errors import run_verb

    def body() -> int:
        path, n = export(args.run_dir, args.fmt, args.out, args.student, args.target, args.with_reference)
        print(f"{n} rows → {path}")
        return 0
    return run_verb("export", body)


if __name__ == "__main__":
    sys.exit(main())
