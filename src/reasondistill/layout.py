"""The run directory's layout: every file a stage writes, named once.

Why: a run directory is a folder people open, copy and script against, so its paths are an
interface. Spelling them as literals in each stage let the writer and its readers (the next stage,
the report, export, shards, ingest) drift apart. Here each stage's directory and files are
properties, each stage's outputs a list, and everything else asks this module where a file is.
Nothing here touches the disk; :class:`reasondistill.rundir.RunDir` is a :class:`Layout`.

    lay = Layout("runs/demo")
    lay.traces                      # runs/demo/generate/traces.jsonl
    lay.build(s).train              # runs/demo/build/<s>/train.safetensors
    lay.eval(m).completions         # runs/demo/evaluate/<m>/completions.jsonl
    lay.report_inputs()             # what the report stage reads, as far as it exists

The per-directory classes (:class:`BuildFiles`, :class:`TrainFiles`, :class:`EvalFiles`) also
name the files of a directory given to a library function (``build_dataset(out_dir=...)``,
``evaluate_model(out_dir=...)``), so writer and reader share the name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class At:
    """A file or directory at ``parts`` below the owner's ``base`` attribute (a Path), read as a
    property: ``traces = At("generate", "traces.jsonl")`` makes ``layout.traces`` a Path."""

    def __init__(self, *parts: str, base: str = "root"):
        self.parts, self.base = parts, base

    def __get__(self, obj: Any, owner: type | None = None) -> Path:
        if obj is None:
            return self  # type: ignore[return-value]  # the descriptor itself, on the class
        return getattr(obj, self.base).joinpath(*self.parts)


class BuildFiles:
    """``build/<student>/``: the tokenised dataset of one student (data/build.py, data/topk.py)."""

    train = At("train.safetensors", base="dir")
    val = At("val.safetensors", base="dir")
    stats = At("stats.json", base="dir")

    def __init__(self, d: str | Path):
        self.dir = Path(d)

    def split(self, name: str) -> Path:
        return self.dir / f"{name}.safetensors"

    def topk(self, k: int) -> Path:
        """The teacher's captured top-``k`` log-probs (the capture stage's output)."""
        return self.dir / "topk" / f"k{k}"

    @property
    def outputs(self) -> list[Path]:
        return [self.train, self.val, self.stats]


class TrainFiles:
    """``train/<student>/``: checkpoints, the final model and its curves (train/sft.py)."""

    final = At("final", base="dir")
    checkpoints = At("checkpoints", base="dir")
    metrics_csv = At("metrics.csv", base="dir")
    summary = At("summary.json", base="dir")
    progress = At("progress.json", base="dir")

    def __init__(self, d: str | Path):
        self.dir = Path(d)

    @property
    def outputs(self) -> list[Path]:
        return [self.final, self.metrics_csv]


class EvalFiles:
    """``evaluate/<model>/`` (and its ``ood/``): greedy results and the optional extra stages'
    files (evaluate/accuracy.py, evaluate/sampled.py, evaluate/stages.py)."""

    metrics = At("metrics.json", base="dir")  # greedy: the evaluate stage
    completions = At("completions.jsonl", base="dir")
    partial = At("partial.jsonl", base="dir")  # completions so far of a greedy evaluation in progress
    provenance = At("provenance.json", base="dir")
    samples = At("samples.jsonl", base="dir")  # evaluate.samples
    sampled = At("sampled.json", base="dir")
    reliability = At("reliability.png", base="dir")
    budget = At("budget.json", base="dir")  # evaluate.budgets
    compare = At("compare.json", base="dir")  # students vs the teacher
    compare_reliability = At("compare_reliability.png", base="dir")
    router = At("router.json", base="dir")  # evaluate.router / `reasondistill route`
    router_png = At("router.png", base="dir")
    router_samples = At("router_samples.jsonl", base="dir")

    def __init__(self, d: str | Path):
        self.dir = Path(d)

    @property
    def ood(self) -> "EvalFiles":
        return EvalFiles(self.dir / "ood")

    @property
    def greedy_outputs(self) -> list[Path]:
        return [self.metrics, self.completions]

    @property
    def reported(self) -> list[Path]:
        """The files of this directory the report reads (sampled, OOD, budget, compare, router, traces)."""
        return [*self.greedy_outputs, self.budget, self.compare, self.router, self.provenance, self.sampled,
                self.ood.metrics]


class QuantizeFiles:
    """``quantize/<student>/<variant>/`` (quantize/stage.py): the fine-tune of qat/qad in ``train/``,
    the converted model in ``model/``, its greedy evaluation in ``eval/``, sizes and speeds in
    ``summary.json``."""

    model = At("model", base="dir")
    summary = At("summary.json", base="dir")
    progress = At("progress.json", base="dir")

    def __init__(self, d: str | Path):
        self.dir = Path(d)

    @property
    def train(self) -> TrainFiles:
        return TrainFiles(self.dir / "train")

    @property
    def eval(self) -> EvalFiles:
        return EvalFiles(self.dir / "eval")

    @property
    def outputs(self) -> list[Path]:
        return [self.model, *self.eval.greedy_outputs, self.summary]


class Layout:
    """Paths under a run directory's ``root``, by stage."""

    config_file = At("config.yaml")
    manifest = At("manifest.json")
    skipped_path = At("skipped.json")  # why stages had nothing to work on
    stages_dir = At(".stages")  # bookkeeping: stage states, the writer lock, the hash cache (rundir.py)
    exports_dir = At("export")  # `reasondistill export`
    # problems
    train_problems = At("problems", "train.jsonl")
    test_problems = At("problems", "test.jsonl")
    ood_problems = At("problems", "ood.jsonl")
    composition = At("problems", "composition.json")
    # generate
    traces = At("generate", "traces.jsonl")
    generate_progress = At("generate", "progress.json")
    shards_dir = At("generate", "shards")
    # curate
    curated = At("curate", "curated.jsonl")
    verdicts = At("curate", "verdicts.jsonl")
    curate_summary = At("curate", "summary.json")
    pass_rates = At("curate", "pass_rates.jsonl")
    decontamination = At("curate", "decontamination.json")
    # train and evaluate: one directory per student or model below these
    train_root = At("train")
    eval_root = At("evaluate")
    quantize_root = At("quantize")  # quantize/<student>/<variant>/
    # report
    report_json = At("report.json")
    report_md = At("report.md")
    report_html = At("report.html")
    loss_curves = At("loss_curves.png")
    policy_curves = At("policy_curves.png")
    plots_dir = At("plots")

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __truediv__(self, part: str) -> Path:
        return self.root / part

    # -- each stage's outputs -------------------------------------------------------------------
    @property
    def problems_outputs(self) -> list[Path]:
        return [self.train_problems, self.test_problems, self.composition]

    @property
    def curate_outputs(self) -> list[Path]:
        return [self.curated, self.verdicts, self.curate_summary, self.pass_rates, self.decontamination]

    @property
    def report_outputs(self) -> list[Path]:
        return [self.report_json, self.report_md, self.report_html]

    # -- per student or model -------------------------------------------------------------------
    def build(self, student: str) -> BuildFiles:
        return BuildFiles(self.root / "build" / student)

    def train(self, student: str) -> TrainFiles:
        return TrainFiles(self.train_root / student)

    def train_log(self, student: str) -> Path:
        """A student's output when it trains in a child process (train_workers)."""
        return self.train_root / f"{student}.log"

    def eval(self, model: str) -> EvalFiles:
        return EvalFiles(self.eval_root / model)

    def quantize(self, student: str, variant: str) -> QuantizeFiles:
        return QuantizeFiles(self.quantize_root / student / variant)

    def evaluated(self) -> list[str]:
        """Models with a directory under ``evaluate/`` (sorted); :meth:`trained`: students under ``train/``."""
        return _subdirs(self.eval_root)

    def trained(self) -> list[str]:
        return _subdirs(self.train_root)

    def report_inputs(self) -> list[Path]:
        """The other stages' files the report reads, those that exist: curation summary, training
        curves and summaries, every evaluated model's results, and why stages were skipped."""
        files = [self.curate_summary, self.skipped_path]
        for s in self.trained():
            files += [self.train(s).summary, self.train(s).metrics_csv]
        for m in self.evaluated():
            files += self.eval(m).reported
        for s in _subdirs(self.quantize_root):
            files += [self.quantize(s, v).summary for v in _subdirs(self.quantize_root / s)]
        return [f for f in files if f.is_file()]


def _subdirs(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []
