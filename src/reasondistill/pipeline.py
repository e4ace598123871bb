"""The pipeline: problems → generate → curate → build → train → evaluate → report, in one run directory.

Why: each stage is a small function over files in the run directory, so any stage can be re-run
alone (``reasondistill curate runs/demo``) and ``reasondistill run CONFIG`` chains them all. A
stage whose config and inputs are unchanged is skipped (see :mod:`reasondistill.rundir`);
generation and training resume where they stopped.

    p = Pipeline(load_config("configs/demo.yaml"))
    p.run()            # or p.generate(); p.curate(); ...
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from reasondistill.config import RunConfig, StudentConfig, dump_config
from reasondistill.records import (JsonlWriter, Problem, Trace, read_records, repair_tail, write_json,
                                   write_records)
from reasondistill.rundir import RunDir
from reasondistill.tasks.base import load_task

STAGES = ("generate", "curate", "build", "train", "evaluate", "report")


class StageInputMissing(FileNotFoundError):
    pass


def load_traces(path: Path) -> dict[tuple[str, int], Trace]:
    """Traces by (problem, sample); when a key repeats (a retried failure) the later line wins."""
    if not path.exists():
        return {}
    return {(t.problem_id, t.sample): t for t in read_records(path, Trace)}


def _archive(path: Path, log: Callable[[str], None]) -> None:
    """Move an output made under another config aside instead of deleting it."""
    i = 1
    while path.with_name(f"{path.name}.stale-{i}").exists():
        i += 1
    dest = path.with_name(f"{path.name}.stale-{i}")
    path.rename(dest)
    log(f"       config changed: kept the previous output as {dest}")


class Pipeline:
    def __init__(self, cfg: RunConfig, log: Callable[[str], None] = print, show_progress: bool = True):
        self.cfg = cfg
        self.log = log
        self.show_progress = show_progress
        self.rd = RunDir(cfg.run_dir)
        (self.rd / "config.yaml").write_text(dump_config(cfg))
        self.rd.update_manifest(seeds={"run": cfg.seed, "generate": cfg.generate.seed,
                                       "students": {s.name: self._seed(s) for s in cfg.students}})
        self.task = load_task(cfg.task.task_spec())

    # -- helpers -------------------------------------------------------------------------------
    def _seed(self, s: StudentConfig) -> int:
        return self.cfg.seed if s.seed is None else s.seed

    def _need(self, *paths: Path, stage: str) -> None:
        for p in paths:
            if not p.exists():
                raise StageInputMissing(f"{p} not found: run `reasondistill {stage} {self.rd.root}` first")

    @staticmethod
    def _local(name: str) -> list[Path]:
        """Files that identify a model or tokenizer when it is local (hub ids hash by name only)."""
        from reasondistill.models import resolve

        path = Path(resolve(name))
        return [f for f in (path / "config.json", path / "model.safetensors", path / "tokenizer.json")
                if f.exists()] if path.is_dir() else []

    def _stage(self, name, config, inputs, outputs, fn, force=False):
        return self.rd.run_stage(name, config, inputs, outputs, fn, force=force, log=self.log)

    def _student_tokenizer_name(self, s: StudentConfig) -> str:
        return s.model or s.tokenizer or self.cfg.teacher.model

    # -- stages --------------------------------------------------------------------------------
    def problems(self, force: bool = False) -> dict[str, Any]:
        out_train, out_test = self.rd / "problems/train.jsonl", self.rd / "problems/test.jsonl"
        conf = {"task": self.cfg.task, "seed": self.cfg.seed}

        def fn(_fp):
            train = self.task.problems("train", self.cfg.task.n_train, self.cfg.seed)
            test = self.task.problems("test", self.cfg.task.n_test, self.cfg.seed)
            write_records(out_train, train)
            write_records(out_test, test)
            return {"train": len(train), "test": len(test)}
        return self._stage("problems", conf, [], [out_train, out_test], fn, force)

    def generate(self, force: bool = False) -> dict[str, Any]:
        self.problems()
        problems_path = self.rd / "problems/train.jsonl"
        out = self.rd / "generate/traces.jsonl"
        conf = {"teacher": self.cfg.teacher, "sampling": self.cfg.generate}
        inputs = [problems_path, *(self._local(self.cfg.teacher.model) if self.cfg.teacher.kind == "hf" else [])]

        def fn(fp):
            from reasondistill.progress import progress_bar

            progress_file = self.rd / "generate/progress.json"
            if out.exists():
                try:
                    import json
                    old = json.loads(progress_file.read_text()).get("fingerprint")
                except (OSError, ValueError):
                    old = None
                if old != fp:
                    _archive(out, self.log)
            write_json(progress_file, {"fingerprint": fp})
            repair_tail(out)
            problems = read_records(problems_path, Problem)
            n = self.cfg.generate.n
            # a trace the teacher failed on (finish_reason "error") is tried again; the newer line wins
            done = {k for k, t in load_traces(out).items() if t.finish_reason != "error"}
            resumed = len(done)
            todo = [p for p in problems if any((p.id, s) not in done for s in range(n))]
            if resumed:
                self.log(f"       resuming: {resumed} traces already written, {len(todo)} problems to go")
            written = 0
            if todo:
                teacher = self.cfg.teacher.make()
                with JsonlWriter(out) as writer, progress_bar("generate", len(todo), self.show_progress) as bar:
                    for batch in teacher.sample(todo, self.cfg.generate, self.cfg.teacher.system_prompt):
                        for tr in batch:
                            if (tr.problem_id, tr.sample) not in done:
                                writer.write(tr)
                                done.add((tr.problem_id, tr.sample))
                                written += 1
                        bar(len(batch) // n)
            failed = sum(t.finish_reason == "error" for t in load_traces(out).values())
            if failed:
                self.log(f"       {failed} traces failed at the teacher (recorded with their error; "
                         "re-run generate to retry them)")
            return {"traces": len(done), "written_now": written, "resumed_from": resumed, "failed": failed}
        return self._stage("generate", conf, inputs, [out], fn, force)

    def curate(self, force: bool = False) -> dict[str, Any]:
        from reasondistill.curate.filters import curate

        problems_path, traces_path = self.rd / "problems/train.jsonl", self.rd / "generate/traces.jsonl"
        self._need(problems_path, traces_path, stage="generate")
        d = self.rd / "curate"
        outputs = [d / "curated.jsonl", d / "verdicts.jsonl", d / "summary.json", d / "pass_rates.jsonl"]

        def fn(_fp):
            problems = {p.id: p for p in read_records(problems_path, Problem)}
            traces = list(load_traces(traces_path).values())
            unknown = sorted({t.problem_id for t in traces} - problems.keys())
            if unknown:
                raise ValueError(f"{traces_path}: {len(unknown)} traces name problems not in {problems_path}, "
                                 f"e.g. {unknown[0]!r}")
            kept, verdicts, summary, pass_rates = curate(problems, traces, self.task, self.cfg.curate)
            write_records(outputs[0], kept)
            write_records(outputs[1], verdicts)
            write_json(outputs[2], summary)
            write_records(outputs[3], pass_rates)
            self.log(f"       {summary['traces']} traces: {summary['verdicts']}; dropped {summary['dropped']}; "
                     f"kept {summary['kept']}")
            return summary
        return self._stage("curate", {"curate": self.cfg.curate, "task": self.cfg.task}, [problems_path, traces_path],
                           outputs, fn, force)

    def build(self, student: str | None = None, force: bool = False) -> dict[str, Any]:
        return {s.name: self._build_one(s, force) for s in self._students(student)}

    def _build_one(self, s: StudentConfig, force: bool) -> dict[str, Any]:
        from reasondistill.data.build import build_dataset, make_examples
        from reasondistill.models import load_tokenizer

        problems_path, curated = self.rd / "problems/train.jsonl", self.rd / "curate/curated.jsonl"
        self._need(curated, stage="curate")
        d = self.rd / "build" / s.name
        tok_name = self._student_tokenizer_name(s)
        conf = {"build": self.cfg.build, "target": s.target, "tokenizer": tok_name, "seed": self.cfg.seed}

        def fn(_fp):
            problems = {p.id: p for p in read_records(problems_path, Problem)}
            examples = make_examples(problems, read_records(curated, Trace), s.target, self.cfg.build.think_tags)
            stats = build_dataset(examples, load_tokenizer(tok_name), d, max_length=self.cfg.build.max_length,
                                  val_fraction=self.cfg.build.val_fraction, seed=self.cfg.seed)
            self.log(f"       {s.name}: {stats['train']['examples']} train / {stats['val']['examples']} val "
                     f"examples, {stats['dropped_too_long']} too long")
            return stats
        inputs = [problems_path, curated, *self._local(tok_name)]
        outputs = [d / "train.safetensors", d / "val.safetensors", d / "stats.json"]
        return self._stage(f"build:{s.name}", conf, inputs, outputs, fn, force)

    def train(self, student: str | None = None, force: bool = False) -> dict[str, Any]:
        return {s.name: self._train_one(s, force) for s in self._students(student)}

    def _train_one(self, s: StudentConfig, force: bool) -> dict[str, Any]:
        import json

        from reasondistill.models import init_model, load_model, load_tokenizer
        from reasondistill.train.sft import train_model

        b = self.rd / "build" / s.name
        self._need(b / "train.safetensors", stage="build")
        d = self.rd / "train" / s.name
        conf = {"student": s, "seed": self._seed(s)}

        def fn(fp):
            progress_file = d / "progress.json"
            if d.exists():
                try:
                    old = json.loads(progress_file.read_text()).get("fingerprint")
                except (OSError, ValueError):
                    old = None
                if old != fp:
                    _archive(d, self.log)
            d.mkdir(parents=True, exist_ok=True)
            write_json(progress_file, {"fingerprint": fp})
            tokenizer = load_tokenizer(self._student_tokenizer_name(s))
            model = load_model(s.model) if s.model else init_model(s.init.spec(), tokenizer, self._seed(s))
            return train_model(model, tokenizer, b / "train.safetensors", b / "val.safetensors", d, s.train,
                               seed=self._seed(s), name=s.name, show_progress=self.show_progress)
        inputs = [b / "train.safetensors", b / "val.safetensors", *self._local(s.model or "")]
        return self._stage(f"train:{s.name}", conf, inputs, [d / "final", d / "metrics.csv"], fn, force)

    def evaluate(self, model: str | None = None, force: bool = False) -> dict[str, Any]:
        from reasondistill.evaluate.accuracy import evaluate_model

        self.problems()
        test_path = self.rd / "problems/test.jsonl"
        targets: list[tuple[str, str]] = []
        if self.cfg.evaluate.teacher and self.cfg.teacher.kind == "hf":
            targets.append(("teacher", self.cfg.teacher.model))
        targets += [(s.name, str(self.rd / "train" / s.name / "final")) for s in self.cfg.students]
        if model is not None:
            targets = [t for t in targets if t[0] == model]
            if not targets:
                raise KeyError(f"no model named {model!r}; known: teacher, {[s.name for s in self.cfg.students]}")
        results = {}
        for name, path in targets:
            if name != "teacher":
                self._need(Path(path), stage=f"train")
            d = self.rd / "evaluate" / name

            def fn(_fp, name=name, path=path, d=d):
                problems = read_records(test_path, Problem)
                m = evaluate_model(path, problems, self.task, batch_size=self.cfg.evaluate.batch_size,
                                   max_new_tokens=self.cfg.evaluate.max_new_tokens, out_dir=d, name=name)
                self.log(f"       {name}: accuracy {m['accuracy']:.3f} on {m['n']} problems")
                return m
            inputs = [test_path, *(self._local(path) if name == "teacher" else [Path(path)])]
            results[name] = self._stage(f"evaluate:{name}", {"evaluate": self.cfg.evaluate, "model": path},
                                        inputs, [d / "metrics.json", d / "completions.jsonl"], fn, force)
        return results

    def report(self, force: bool = False) -> dict[str, Any]:
        from reasondistill.report.build import write_report

        inputs = sorted((self.rd / "evaluate").glob("*/metrics.json")) + sorted((self.rd / "train").glob("*/summary.json")) \
            + sorted((self.rd / "train").glob("*/metrics.csv")) + [p for p in [self.rd / "curate/summary.json"] if p.exists()]
        if not inputs:
            raise StageInputMissing(f"nothing to report in {self.rd.root}: run `reasondistill evaluate` first")
        outputs = [self.rd / "report.json", self.rd / "report.md"]

        def fn(_fp):
            return write_report(self.rd.root, self.cfg)
        return self._stage("report", {"students": [s.name for s in self.cfg.students]}, inputs, outputs, fn, force)

    def _students(self, name: str | None) -> list[StudentConfig]:
        return [self.cfg.student(name)] if name else list(self.cfg.students)

    def run(self, force: bool = False) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.generate(force)
        self.curate(force)
        self.build(force=force)
        self.train(force=force)
        self.evaluate(force=force)
        report = self.report(force=True)
        self.log(f"done in {time.perf_counter() - t0:.1f}s: {self.rd.root}/report.md")
        return report
