"""The ``reasondistill`` command: one verb per stage, plus ``run`` (all stages) and ``demo``.

Why: every stage reads and writes one run directory, so each verb takes either a config YAML or
a run directory (whose ``config.yaml`` is used), then ``key=value`` overrides. Heavy libraries
are imported inside the verbs, so ``reasondistill --help`` stays fast. Help texts are plain text
(no docstrings, no markup); a misspelled verb or option is answered with the verb's usage and the
closest name (:mod:`reasondistill.hints`).

    reasondistill demo --out runs/demo
    reasondistill run configs/demo.yaml run_dir=runs/mine students.0.train.lr=3e-3
    reasondistill train runs/mine --student student_traces
    reasondistill config show runs/mine          # the resolved config, each key with its description
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reasondistill.errors import UserError
from reasondistill.hints import HintingParser

STAGE_HELP = {
    "generate": "sample teacher traces for the training problems (resumable)",
    "curate": "verify traces and filter them; per-problem teacher pass rates",
    "build": "chat template, tokenise, answer-only loss mask, length filter, split by problem",
    "capture": "store the teacher's top-k log-probs per answer token (students with distill.source offline_topk)",
    "train": "train the students (hard or soft distillation); resumes from the last checkpoint",
    "evaluate": "greedy-decode held-out problems with the teacher and students; verify (plus, as configured in "
                "evaluate: samples for pass@k/maj@k, an OOD split, thinking budgets, student vs teacher, router)",
    "quantize": "PTQ/QAT/QAD variants of the trained students (their quantize sections): real quantized weights, "
                "evaluated like the students, with size and decode speed",
    "report": "write report.json, report.md, report.html (self-contained, with a trace viewer) and plots",
}


OVERRIDES_HELP = "config overrides, e.g. evaluate.samples=4 or students.0.train.lr=1e-3"


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="a config YAML or a run directory (uses its config.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    p.add_argument("--force", action="store_true", help="re-run even if inputs and config are unchanged (generate "
                   "and train then continue from the traces and checkpoints already written: delete them to "
                   "start over)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _verb(sub, verb: str, text: str, description: str | None = None) -> HintingParser:
    """A verb's parser; it remembers itself so that an argument it leaves over is reported with its usage."""
    p = sub.add_parser(verb, help=text, description=description or text)
    p.set_defaults(parser=p)
    return p


def build_parser() -> HintingParser:
    ap = HintingParser(prog="reasondistill", description="Distil step-by-step reasoning from a "
                       "teacher language model into a small student.",
                       epilog="Run 'reasondistill VERB --help' for a verb's options.")
    sub = ap.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, text in STAGE_HELP.items():
        p = _verb(sub, verb, text)
        _add_target(p)
        if verb in ("build", "capture", "train", "quantize"):
            p.add_argument("--student", help="only this student (default: all)")
        if verb == "capture":
            p.add_argument("--estimate", action="store_true", help="only print the disk the capture will need "
                           "(examples x mean answer tokens x bytes/token); captures nothing")
        if verb == "evaluate":
            p.add_argument("--model", help="only this model: 'teacher' or a student name")
        if verb == "generate":
            from reasondistill.sharding import parse_shard

            p.add_argument("--shard", type=parse_shard, metavar="I/N", help="only shard I of N (0 <= I < N) of the "
                           "problems, into generate/shards/; then 'reasondistill merge RUN' (docs/scaling.md)")
    p = _verb(sub, "route", "student-first cascade: accuracy vs share of problems sent to the teacher",
              "Each student answers with k samples; below a vote-agreement threshold the problem goes to the "
              "teacher. Writes evaluate/<student>/router.json and router.png.")
    _add_target(p)
    p.add_argument("--student", help="only this student (default: all)")
    p.add_argument("--k", type=int, help="student samples per problem (default: evaluate.router.k or 4)")
    p.add_argument("--thresholds", type=lambda s: [float(x) for x in s.split(",")],
                   help="comma-separated agreement thresholds (default: evaluate.router.thresholds or 0,0.1,..,1)")
    p = _verb(sub, "run", "run every stage from one config",
              "Run all stages in order; stages whose config and inputs are unchanged are skipped.")
    _add_target(p)
    p = _verb(sub, "demo", "the offline demo: bundled teacher, chained arithmetic, three students",
              "Sample the bundled tiny teacher, curate, train a student on the verified traces and one on "
              "answers only, evaluate all three on the same held-out problems.")
    p.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    p.add_argument("--force", action="store_true", help="re-run even if inputs and config are unchanged (generate "
                   "and train then continue from the traces and checkpoints already written: delete them to "
                   "start over)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_verb(sub)
    for verb, (_module, text) in DELEGATED.items():
        sub.add_parser(verb, help=text, add_help=False)  # listed here; parsed by its own module
    return ap


def _add_config_verb(sub) -> None:
    p = _verb(sub, "config", "show a resolved config with every default and each key's description",
              "Show a config as YAML with every default filled in and each key's description as a comment, "
              "or print the config reference (docs/config.md).")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = _verb(actions, "show", "print the resolved config: defaults filled in, descriptions as comments")
    show.add_argument("target", nargs="?", metavar="CONFIG",
                      help="a config YAML or a run directory (uses its config.yaml); default: the defaults")
    show.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    _verb(actions, "docs", "print the config reference in Markdown (docs/config.md is this output)")


# verbs that own their argument parsing: module, help line
DELEGATED = {
    "serve": ("reasondistill.serve", "serve a local model over an OpenAI-compatible HTTP API"),
    "score": ("reasondistill.verify.score", "score a JSON/JSONL file of model outputs against references"),
    "compare": ("reasondistill.report.compare", "several runs in one table and one set of plots (compare RUN... --out DIR)"),
    "ingest": ("reasondistill.ingest", "existing traces (r1 or OpenAI messages JSON/JSONL) into a run, no teacher"),
    "export": ("reasondistill.export", "the curated traces as a TRL dataset (messages or prompt/completion JSONL)"),
    "check": ("reasondistill.preflight", "check a config before running it: files, models, tokenizers, EOS, lengths"),
    "merge": ("reasondistill.shards", "merge 'generate --shard I/N' outputs (from any machines) into generate/traces.jsonl"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        import importlib

        return importlib.import_module(DELEGATED[argv[0]][0]).main(argv[1:])
    args, extra = build_parser().parse_known_args(argv)  # key=value overrides may also follow the options
    if extra and (not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra)):
        args.parser.reject(extra)  # exits 2 with the verb's usage and the closest option
    if extra:
        args.overrides = [*args.overrides, *extra]
    from reasondistill.errors import run_verb

    if args.verb == "config":
        return run_verb("config", lambda: _config(args))
    where: dict[str, Path] = {}  # the run directory, once known: where a crash's traceback is saved
    return run_verb(args.verb, lambda: _dispatch(args, where), crash_dir=lambda: where.get("run_dir"))


def _config(args) -> int:
    """``config show [CONFIG] [key=value ...]`` and ``config docs``."""
    from reasondistill import config_fields
    from reasondistill.config import RunConfig, load_config, load_run_config

    if args.action == "docs":
        print(config_fields.reference(RunConfig, CONFIG_DOCS_INTRO), end="")
        return 0
    target, overrides = args.target, list(args.overrides)
    if target is not None and "=" in target and not Path(target).exists():  # only overrides were given
        target, overrides = None, [target, *overrides]
    cfg = load_run_config(target, overrides) if target is not None else load_config(None, overrides)
    print(config_fields.show(cfg), end="")
    return 0


CONFIG_DOCS_INTRO = """# Config reference

Every key of a run config, by section, with its type, default and meaning. Generated from the
pydantic models (src/reasondistill/config.py, tasks/config.py, train/config.py) by
`reasondistill config docs > docs/config.md`; a test fails when this file is stale. To see a
config with every default filled in and these descriptions as comments:
`reasondistill config show [CONFIG] [key=value ...]`. A `task` section is one of several kinds,
chosen by its `name`; `students[]` is a list of student sections.
"""


def _dispatch(args, where: dict[str, Path]) -> int:
    from transformers.utils import logging as hf_logging

    from reasondistill.config import demo_config_path, load_run_config
    from reasondistill.pipeline import Pipeline

    hf_logging.disable_progress_bar()  # our own bars report progress; theirs flood the log
    from reasondistill.quantize.scheme import silence_torchao_import

    silence_torchao_import()  # transformers imports torchao (when installed) for every model it loads

    if args.verb == "demo":
        cfg = load_run_config(demo_config_path(), [f"run_dir={args.out}", *args.overrides])
    else:
        cfg = load_run_config(args.target, args.overrides)
    pipe = Pipeline(cfg, show_progress=not args.quiet)
    where["run_dir"] = pipe.rd.root
    if args.verb in ("run", "demo"):
        pipe.run(force=args.force)
        if pipe.rd.main:  # under torchrun the other ranks stay quiet
            import json

            from reasondistill.report.build import models_table

            report = json.loads(pipe.rd.report_json.read_text())
            print("\n" + models_table(report))
            print(f"\nreport: {pipe.rd / 'report.md'}")
    elif args.verb == "capture" and args.estimate:
        pipe.capture_estimate(args.student)
    elif args.verb in ("build", "capture", "train", "quantize"):
        if not pipe.cfg.students:
            raise UserError(f"the config has no students, so `{args.verb}` has nothing to do: add a students: "
                            "section (configs/demo.yaml has three)")
        getattr(pipe, args.verb)(args.student, force=args.force)
    elif args.verb == "evaluate":
        pipe.evaluate(args.model, force=args.force)
    elif args.verb == "route":
        pipe.route(args.student, k=args.k, thresholds=args.thresholds, force=args.force)
    elif args.verb == "generate" and args.shard:
        from reasondistill.shards import generate_shard

        generate_shard(pipe, *args.shard, force=args.force)
    else:
        getattr(pipe, args.verb)(force=args.force)
    from reasondistill.distributed import shutdown

    shutdown()  # under torchrun: leave the process group together, so no rank aborts at exit
    return 0


if __name__ == "__main__":
    sys.exit(main())
