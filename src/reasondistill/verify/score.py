"""``reasondistill score``: score a JSON/JSONL file of model outputs against reference answers.

Why: outputs often come from elsewhere (another harness, an API batch, a colleague). This scores
any such file with the same verifiers the pipeline uses, writes one verdict per row next to it
(``<stem>.verdicts.jsonl``) so every number can be traced to its rows, and prints one JSON object:

    python -m reasondistill.verify.score outputs.jsonl --gold answer --pred response --task gsm8k
    {"file": ..., "task": "gsm8k", "n": 1319, "correct": 1188, "accuracy": 0.9007,
     "verdicts": {"correct": 1188, "wrong": 120, "unparseable": 11},
     "rejects": {"mismatch": 120, "no answer found": 9, "timeout": 2}, "verdicts_file": ...}

Fields may be dotted paths (``choices.0.message.content``). A file is a JSON array of objects or
one object per line. Bad input (invalid JSON, a missing or non-text field) stops with an error
naming the file, the line and the field, and exit code 2; a ``null`` prediction is not bad input
but a row without an answer (unparseable, "prediction is null"). A completion with a closed
``<think>…</think>`` block is judged on the text after it.

The prediction field may hold a whole completion or an answer already extracted from one, so a
prediction that is itself just an answer (``29``, ``$18.00``, ``x = 4``, ``\\frac{1}{2}``: one short
line without words) is compared whole when no ``\\boxed{}``, ``####`` or "the answer is" is in it.
Tasks: ``math`` (reference answer or ``\\boxed{}``; no last-number fallback unless
``--last-number``), ``gsm8k`` (reference may be a full solution ending in ``#### N``; last-number
fallback on), ``choice`` (reference: letter, option text or 0-based index, as the task loader reads
it; prediction: a letter in either case when it is the whole prediction, or an option's text, or a
whole number that is no option's text, read as a 0-based index like the reference; ``--options
FIELD`` names the list of options). When most rows have no answer found, the summary has a
``hint`` naming ``--last-number`` and ``--task``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from reasondistill.checks import Check
from reasondistill.records import RecordError, json_rows, write_records
from reasondistill.thinking import CLOSE

TASKS = ("math", "gsm8k", "choice")
NULL_PREDICTION = "prediction is null"
NO_ANSWER = "no answer found"  # the reason verify/math.py and verify/choice.py give


def load_rows(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every row of a JSON array or JSON-lines file."""
    path = Path(path)
    try:
        rows = json_rows(path)
    except OSError as exc:
        raise RecordError(f"{path}: cannot read ({exc.strerror or exc})") from None
    for line, obj in rows:
        if not isinstance(obj, dict):
            raise RecordError(f"{path}:{line}: expected a JSON object, got {type(obj).__name__}")
    return rows


def get_field(obj: dict[str, Any], field: str, where: str, *, text: bool = True) -> Any:
    """``obj[field]`` for a dotted path; numbers become text. Errors name file, line and field."""
    value: Any = obj
    for part in field.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            raise RecordError(f"{where}: field '{field}' is missing")
    if not text:
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RecordError(f"{where}: field '{field}' should be text or a number, got {json.dumps(value)[:60]}")
    return str(value)


def answer_part(completion: str) -> str:
    """The text after a closed ``</think>``, else the whole completion."""
    return completion.rpartition(CLOSE)[2] if CLOSE in completion else completion


def build_items(rows: list[tuple[int, dict]], path: Path, gold: str, pred: str, task: str,
                options: str | None, last_number: bool) -> list[tuple]:
    """One check_item tuple per row: (gold, prediction or None if null, the task's arguments).

    Predictions are answer fields: math takes a bare answer whole (``whole_answer``) and choice
    reads a bare whole number as a 0-based index (``number_is_index``).
    """
    items = []
    for line, obj in rows:
        where = f"{path}:{line}"
        g = get_field(obj, gold, where)
        raw = get_field(obj, pred, where, text=False)
        p = None if raw is None else answer_part(get_field(obj, pred, where))
        if task == "choice":
            opts = get_field(obj, options, where, text=False) if options else None
            if opts is not None and not isinstance(opts, (list, dict)):
                raise RecordError(f"{where}: field '{options}' should be a list or an object of options")
            items.append((g, p, opts, True))
        else:
            items.append((g, p, last_number, True))
    return items


def check_all(task: str, items: list[tuple], workers: int, timeout: float, progress: bool | None) -> list:
    """Checks for every item through the pipeline's verifier (verify/checker.py: worker processes
    with a time and memory limit), or in this process without limits when ``workers`` is 0. A
    null prediction is not checked: Check("unparseable", "prediction is null")."""
    from reasondistill.verify import choice, math
    from reasondistill.verify.checker import Verifier, run_job

    func = choice.check_item if task == "choice" else math.check_item
    jobs = [(func, (item,)) for item in items if item[1] is not None]
    if workers == 0:
        done = [run_job(job) for job in jobs]
    else:
        with Verifier(timeout=timeout, workers=workers) as verifier:
            done = verifier.check_jobs(jobs, progress=progress, description=f"scoring ({task})")
    checked = iter(done)
    return [Check("unparseable", NULL_PREDICTION, None) if item[1] is None else next(checked) for item in items]


def no_answer_hint(task: str, last_number: bool, reasons: Counter) -> str | None:
    """What to try when more than half of the rows had no answer found, else None."""
    n = sum(reasons.values())
    if not n or reasons[NO_ANSWER] * 2 <= n:
        return None
    tries = [] if last_number or task == "choice" else ["--last-number to take the last number of each output"]
    tries.append(f"--task {' or '.join(t for t in TASKS if t != task)} if the answers are of that kind")
    return f"{reasons[NO_ANSWER]} of {n} rows have no answer the {task} task can read; try " + ", or ".join(tries)


def verdicts_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.stem + ".verdicts.jsonl")


def score_file(path: str | Path, gold: str, pred: str, *, task: str = "math", options: str | None = None,
               last_number: bool | None = None, workers: int = 2, timeout: float = 10.0,
               progress: bool | None = None) -> dict[str, Any]:
    """Score a file, write ``<stem>.verdicts.jsonl`` beside it, and return the summary."""
    if task not in TASKS:
        raise ValueError(f"--task: unknown task {task!r}; choose from {', '.join(TASKS)}")
    path = Path(path)
    rows = load_rows(path)
    use_last = (task == "gsm8k") if last_number is None else last_number
    items = build_items(rows, path, gold, pred, task, options, use_last)
    checks = check_all(task, items, workers, timeout, progress)
    out = verdicts_path(path)
    write_records(out, ({"index": i, "line": line, "verdict": c.verdict, "reason": c.reason,
                         "predicted": c.predicted, "gold": item[0]}
                        for i, ((line, _), c, item) in enumerate(zip(rows, checks, items, strict=True))))
    verdicts = Counter(c.verdict for c in checks)
    n = len(checks)
    summary = {"file": str(path), "task": task, "n": n, "correct": verdicts["correct"],
               "accuracy": verdicts["correct"] / n if n else None,
               "verdicts": {v: verdicts[v] for v in ("correct", "wrong", "unparseable")},
               "rejects": dict(Counter(c.reason for c in checks if c.verdict != "correct").most_common()),
               "verdicts_file": str(out)}
    hint = no_answer_hint(task, use_last, Counter(c.reason for c in checks))
    return {**summary, "hint": hint} if hint else summary


def build_parser() -> argparse.ArgumentParser:
    from reasondistill.hints import HintingParser

    p = HintingParser(prog="reasondistill score", description="Score model outputs against reference "
                      "answers; writes <stem>.verdicts.jsonl beside FILE.")
    p.add_argument("file", metavar="FILE", help="JSON array or JSON-lines file of model outputs")
    p.add_argument("--gold", required=True, metavar="FIELD", help="field with the reference answer")
    p.add_argument("--pred", required=True, metavar="FIELD", help="field with the model output")
    p.add_argument("--task", choices=TASKS, default="math", help="how answers are compared (default: math)")
    p.add_argument("--options", metavar="FIELD", help="choice: field with the list of options")
    p.add_argument("--last-number", action=argparse.BooleanOptionalAction, default=None,
                   help="fall back to the last number in the output (default: on for gsm8k only)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="verifier processes; 0 = in this process, without time limits")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per item before it counts as 'timeout'")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers < 0 or args.timeout <= 0:
        print("error: --workers must be >= 0 and --timeout > 0", file=sys.stderr)
        return 2
    from reasondistill.errors import run_verb

    def body() -> int:
        summary = score_file(args.file, args.gold, args.pred, task=args.task, options=args.options,
                             last_number=args.last_number, workers=args.workers, timeout=args.timeout,
                             progress=False if args.no_progress else None)
        print(json.dumps(summary, ensure_ascii=False))
        return 0
    return run_verb("score", body)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
