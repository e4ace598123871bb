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


class BuildFiles:
    """``build/<student>/``: the tokenised dataset of one student (data/build.py, data/topk.py)."""

    def __init__(self, d: str | Path):
        self.dir = Path(d)

    def split(self, name: str) -> Path:
        return self.dir / f"{name}.safetensors"

    @property
    def train(self) -> Path:
        return self.split("train")

    @property
    def val(self) -> Path:
        return self.split("val")

    @property
    def stats(self) -> Path:
        return self.dir / "stats.json"

    def topk(self, k: int) -> Path:
        """The teacher's captured top-``k`` log-probs (the capture stage's output)."""
        return self.dir / "topk" / f"k{k}"

    @property
    def outputs(self) -> list[Path]:
        return [self.train, self.val, self.stats]


class TrainFiles:
    """``train/<student>/``: checkpoints, the final model and its curves (train/sft.py)."""

    def __init__(self, d: str | Path):
        self.dir = Path(d)

    @property
    def final(self) -> Path:
        return self.dir / "final"

    @property
    def metrics_csv(self) -> Path:
        return self.dir / "metrics.csv"

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"

    @property
    def progress(self) -> Path:
        return self.dir / "progress.json"

    @property
    def outputs(self) -> list[Path]:
        return [self.final, self.metrics_csv]


class EvalFiles:
    """``evaluate/<model>/`` (and its ``ood/``): greedy results and the optional extras
    (evaluate/accuracy.py, evaluate/sampled.py, evaluate/stages.py)."""

    def __init__(self, d: str | Path):
        self.dir = Path(d)

    def __getattr__(self, name: str) -> Path:
        try:
            return self.dir / _EVAL_FILES[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no file {name!r}") from None

    @property
    def ood(self) -> "EvalFiles":
        return EvalFiles(self.dir / "ood")

    @property
    def greedy_outputs(self) -> list[Path]:
        return [self.metrics, self.completions]

    @property
    def reported(self) -> list[Path]:
        """The files of this directory the report reads (sampled, OOD, budget, compare, router, traces)."""
        return [*self.greedy_outputs, *(self.dir / _EVAL_FILES[k] for k in REPORTED_EXTRAS), self.ood.metrics]


# evaluate/<model>/<file>, by attribute of EvalFiles
_EVAL_FILES = {"metrics": "metrics.json", "completions": "completions.jsonl", "provenance": "provenance.json",
               "samples": "samples.jsonl", "sampled": "sampled.json", "reliability": "reliability.png",
               "budget": "budget.json", "compare": "compare.json", "compare_reliability": "compare_reliability.png",
               "router": "router.json", "router_png": "router.png", "router_samples": "router_samples.jsonl"}
# the per-model JSON files the report shows beside the greedy metrics (report/evaluation.py)
REPORTED_EXTRAS = ("budget", "compare", "router", "provenance", "sampled")


class Layout:
    """Paths under a run directory's ``root``, by stage."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __truediv__(self, part: str) -> Path:
        return self.root / part

    # -- the run as a whole ---------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def skipped_path(self) -> Path:
        return self.root / "skipped.json"

    @property
    def stages_dir(self) -> Path:
        """Bookkeeping: each stage's state, the writer lock, the hash cache (rundir.py)."""
        return self.root / ".stages"

    @property
    def exports_dir(self) -> Path:
        """``reasondistill export`` output (export.py)."""
        return self.root / "export"

    # -- problems -------------------------------------------------------------------------------
    @property
    def train_problems(self) -> Path:
        return self.root / "problems" / "train.jsonl"

    @property
    def test_problems(self) -> Path:
        return self.root / "problems" / "test.jsonl"

    @property
    def ood_problems(self) -> Path:
        return self.root / "problems" / "ood.jsonl"

    @property
    def composition(self) -> Path:
        return self.root / "problems" / "composition.json"

    @property
    def problems_outputs(self) -> list[Path]:
        return [self.train_problems, self.test_problems, self.composition]

    # -- generate -------------------------------------------------------------------------------
    @property
    def traces(self) -> Path:
        return self.root / "generate" / "traces.jsonl"

    @property
    def generate_progress(self) -> Path:
        return self.root / "generate" / "progress.json"

    @property
    def shards_dir(self) -> Path:
        return self.root / "generate" / "shards"

    # -- curate ---------------------------------------------------------------------------------
    @property
    def curated(self) -> Path:
        return self.root / "curate" / "curated.jsonl"

    @property
    def verdicts(self) -> Path:
        return self.root / "curate" / "verdicts.jsonl"

    @property
    def curate_summary(self) -> Path:
        return self.root / "curate" / "summary.json"

    @property
    def pass_rates(self) -> Path:
        return self.root / "curate" / "pass_rates.jsonl"

    @property
    def decontamination(self) -> Path:
        return self.root / "curate" / "decontamination.json"

    @property
    def curate_outputs(self) -> list[Path]:
        return [self.curated, self.verdicts, self.curate_summary, self.pass_rates, self.decontamination]

    # -- build, train, evaluate (one directory per student or model) ----------------------------
    def build(self, student: str) -> BuildFiles:
        return BuildFiles(self.root / "build" / student)

    @property
    def train_root(self) -> Path:
        return self.root / "train"

    def train(self, student: str) -> TrainFiles:
        return TrainFiles(self.train_root / student)

    def train_log(self, student: str) -> Path:
        """A student's output when it trains in a child process (train_workers)."""
        return self.train_root / f"{student}.log"

    @property
    def eval_root(self) -> Path:
        return self.root / "evaluate"

    def eval(self, model: str) -> EvalFiles:
        return EvalFiles(self.eval_root / model)

    # -- report ---------------------------------------------------------------------------------
    @property
    def report_json(self) -> Path:
        return self.root / "report.json"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def loss_curves(self) -> Path:
        return self.root / "loss_curves.png"

    @property
    def plots_dir(self) -> Path:
        return self.root / "plots"

    @property
    def report_outputs(self) -> list[Path]:
        return [self.report_json, self.report_md, self.report_html]

    def evaluated(self) -> list[str]:
        """Models with a directory under ``evaluate/``, sorted."""
        return sorted(p.name for p in self.eval_root.iterdir() if p.is_dir()) if self.eval_root.is_dir() else []

    def trained(self) -> list[str]:
        """Students with a directory under ``train/``, sorted."""
        return sorted(p.name for p in self.train_root.iterdir() if p.is_dir()) if self.train_root.is_dir() else []

    def report_inputs(self) -> list[Path]:
        """The other stages' files the report reads, those that exist: curation summary, training
        curves and summaries, every evaluated model's results, and why stages were skipped."""
        files = [self.curate_summary, self.skipped_path]
        for s in self.trained():
            files += [self.train(s).summary, self.train(s).metrics_csv]
        for m in self.evaluated():
            files += self.eval(m).reported
        return [f for f in files if f.is_file()]
