"""The pipeline: problems → generate → curate → build → train → evaluate → report, in one run directory.

Why: each stage is a small function over files in the run directory, so any stage can be re-run
alone (``reasondistill curate runs/demo``) and ``reasondistill run CONFIG`` chains them all. A
stage whose config and inputs are unchanged is skipped (see :mod:`reasondistill.rundir`);
generation and training resume where they stopped.

    p = Pipeline(load_config("configs/demo.yaml"))
    p.run()            # or p.generate(); p.curate(); ...
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from reasondistill.config import RunConfig, StudentConfig, config_changes, dump_config
from reasondistill.errors import UserError
from reasondistill.models import local_files
from reasondistill.records import (JsonlWriter, Problem, Trace, read_records, record_hash, repair_tail,
                                   write_json, write_records, write_text)
from reasondistill.rundir import RunDir, StageInputMissing
from reasondistill.tasks.base import load_task
from reasondistill.tasks.strategy import record_system_prompt, sample_by_system_prompt
from reasondistill.teachers.factory import make_teacher


def load_traces(path: Path) -> dict[tuple[str, int], Trace]:
    """Traces by (problem, sample); when a key repeats (a retried failure) the later line wins."""
    if not path.exists():
        return {}
    return {(t.problem_id, t.sample): t for t in read_records(path, Trace)}


# fields added after runs existed, left out of a student's fingerprint while at their defaults, so
# that upgrading does not retrain old runs: (path in StudentConfig.model_dump, default)
_LATER_FIELDS = ((("distill",), None), (("attn_implementation",), None), (("train", "packing"), False),
                 (("train", "pack_tokens"), None), (("lora",), None), (("policy",), None))


def _fingerprinted(s: StudentConfig, world: int = 1) -> dict[str, Any]:
    """The student's config as its train stage fingerprints it (see ``_LATER_FIELDS``). Under ``world``
    processes ``train.batch_size`` counts the examples of all of them (the global batch): a run resumes
    with any number of processes whose batch sizes add up to the same, and not with a different one."""
    conf = s.model_dump(mode="json")
    conf["train"]["batch_size"] *= world
    conf["train"].pop("sharding", None)  # DDP or FSDP train the same model: a run resumes under either
    conf.pop("quantize", None)  # the quantize stage's own section: changing it never retrains the student
    for path, default in _LATER_FIELDS:
        *parents, key = path
        d = conf
        for k in parents:
            d = d[k]
        if d.get(key, default) == default:
            d.pop(key, None)
    return conf


class Pipeline:
    def __init__(self, cfg: RunConfig, log: Callable[[str], None] = print, show_progress: bool = True):
        self.cfg = cfg
        self._problems_said = False
        self.log = log
        self.show_progress = show_progress
        self.rd = RunDir(cfg.run_dir)
        with self.rd.writer():  # a run directory another process holds is refused before anything is written
            if self.rd.main:  # under torchrun every rank starts here; the others read config.yaml meanwhile
                self._save_config()
            self.rd.update_manifest(seeds={"run": cfg.seed, "generate": cfg.generate.seed,
                                           "students": {s.name: self._seed(s) for s in cfg.students}})
        self.task = load_task(cfg.task.task_spec())

    # -- helpers -------------------------------------------------------------------------------
    def _save_config(self) -> None:
        """Write config.yaml, first saying which keys change in an existing one (an override given to
        one verb stays in the run's config: later verbs on the run directory use it)."""
        import yaml

        path, text = self.rd.config_file, dump_config(self.cfg)
        try:
            old = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            old = None
        changes = config_changes(old, yaml.safe_load(text)) if isinstance(old, dict) else []
        if changes:
            shown = changes[:6] + ([f"and {len(changes) - 6} more"] if len(changes) > 6 else [])
            self.log(f"{path}: saving {len(changes)} changed key(s), used from now on by every verb on this run "
                     f"directory: " + "; ".join(shown))
        write_text(path, text)

    def _seed(self, s: StudentConfig) -> int:
        return self.cfg.seed if s.seed is None else s.seed

    def run_stage(self, name, config, inputs, outputs, fn, force=False, every_rank=False):
        """:meth:`RunDir.run_stage` with this pipeline's log."""
        return self.rd.run_stage(name, config, inputs, outputs, fn, force=force, log=self.log, every_rank=every_rank)

    def _student_tokenizer_name(self, s: StudentConfig) -> str:
        from reasondistill.preflight import student_tokenizer

        return student_tokenizer(self.cfg, s)

    def _verifying(self):
        """One verifier pool for the stage, with the run's limits (verify/checker.py)."""
        from reasondistill.verify.checker import verifier_scope

        return verifier_scope(**self.cfg.verify.model_dump())

    def no_data(self, name: str) -> str | None:
        """Why student ``name`` has nothing to train on (its build was skipped), else None."""
        try:
            stats = json.loads(self.rd.build(name).stats.read_text())
        except (OSError, ValueError):
            return None
        return stats.get("skipped")

    # -- stages --------------------------------------------------------------------------------
    def problems(self, force: bool = False) -> dict[str, Any]:
        if self.cfg.teacher.kind == "ingested":  # training problems came with the traces (ingest.py)
            from reasondistill.ingested import ingested_problems

            return ingested_problems(self, force)
        out_train, out_test = self.rd.train_problems, self.rd.test_problems
        conf = {"task": self.cfg.task, "seed": self.cfg.seed}

        def fn(_fp):
            from reasondistill.tasks.mixture import composition_warnings, select_problems

            train, comp_train = select_problems(self.task, "train", self.cfg.task.n_train, self.cfg.seed)
            test, comp_test = select_problems(self.task, "test", self.cfg.task.n_test, self.cfg.seed)
            write_records(out_train, train)
            write_records(out_test, test)
            composition = {"train": comp_train, "test": comp_test}  # problems per source (mixture: wanted vs taken)
            write_json(self.rd.composition, composition)
            for line in composition_warnings(comp_train) + composition_warnings(comp_test):
                self.log(f"       {line}")
            return {"train": len(train), "test": len(test), "composition": composition}
        inputs = getattr(self.task, "input_files", lambda: [])()  # data files: a changed file re-runs the stage
        # generate and evaluate both need it: checked each time, its "[skip]" line said once per pipeline
        said = self._problems_said
        log = (lambda msg: None if msg.startswith("[skip]") else self.log(msg)) if said else self.log
        self._problems_said = True
        return self.rd.run_stage("problems", conf, inputs, self.rd.problems_outputs, fn, force=force, log=log)

    def generate(self, force: bool = False, shard: tuple[int, int] | None = None) -> dict[str, Any]:
        """Sample the teacher; ``shard=(i, N)``: only shard i of N of the problems (see shards.py)."""
        if self.cfg.teacher.kind == "ingested":  # nothing to sample: `reasondistill ingest` wrote the traces
            from reasondistill.ingested import ingested_generate

            return ingested_generate(self, force)
        self.problems()
        problems_path, out = self.rd.train_problems, self.rd.traces
        conf, inputs = self.generate_conf()
        stage, progress_file = "generate", self.rd.generate_progress
        if shard is not None:
            from reasondistill.sharding import in_shard, shard_files

            out, progress_file = shard_files(self.rd.root, *shard)
            stage = f"generate:shard-{shard[0]}-of-{shard[1]}"

        def fn(fp):
            from reasondistill.progress import progress_bar

            # traces of a run started before transport keys, then batch_size, left the fingerprint are this
            # config's too
            legacy = tuple(self.rd.fingerprint(conf | {"teacher": t, "sampling": self.cfg.generate.sampling()}, inputs)
                           for t in (self.cfg.teacher.fingerprinted(legacy=True), self.cfg.teacher.fingerprinted()))
            problems = read_records(problems_path, Problem)
            # the settings alone (no problems file) and each problem's content: when only the problems
            # changed, the traces of the unchanged ones are kept, not sampled again
            settings = self.rd.fingerprint(conf, [p for p in inputs if p != problems_path])
            self.rd.restart_if_stale(out, progress_file, fp, self.log, also=legacy,
                                     rows=(settings, {p.id: record_hash(p) for p in problems}))
            repair_tail(out)
            if shard is not None:
                problems = [p for p in problems if in_shard(p.id, *shard)]
            n = self.cfg.generate.n
            # a trace the teacher failed on (finish_reason "error") is tried again; the newer line wins
            done = {k for k, t in load_traces(out).items() if t.finish_reason != "error"}
            resumed = len(done)
            todo = [p for p in problems if any((p.id, s) not in done for s in range(n))]
            if resumed:
                self.log(f"       resuming: {resumed} traces already written, {len(todo)} problems to go")
            written, ok, last_error = 0, 0, None
            if todo:
                teacher = make_teacher(self.cfg.teacher)
                unreachable = getattr(teacher, "unreachable", None)  # an API teacher: one GET /models first
                why = unreachable() if callable(unreachable) else None
                if why:
                    raise UserError(f"{why}. Nothing was sent; {len(todo)} problems are still to do "
                                    f"(`reasondistill check` probes the server)")
                with JsonlWriter(out) as writer, progress_bar("generate", len(todo), self.show_progress) as bar:
                    for system, batch in sample_by_system_prompt(teacher, todo, self.cfg.generate.sampling(),
                                                                 self.cfg.teacher.system_prompt):
                        for tr in batch:
                            if (tr.problem_id, tr.sample) not in done:
                                writer.write(record_system_prompt(tr, system))
                                done.add((tr.problem_id, tr.sample))
                                written += 1
                                ok += tr.finish_reason != "error"
                                last_error = tr.error or last_error
                        bar(len(batch) // n)
            if written and not ok:  # nothing this run asked for came back: a wrong model, URL, key, prompt...
                raise UserError(f"all {written} traces of this run failed at the teacher; last error: "
                                f"{last_error or 'not recorded'}. They are kept in {out} with their error; fix "
                                "the cause and run generate again to retry them")
            failed = self._failed_traces(out, last_error)
            return {"traces": len(done), "written_now": written, "resumed_from": resumed, "failed": failed}
        # traces that failed at the teacher last time make the stage not current: a plain re-run retries them
        retry = bool(((self.rd.stage_state(stage) or {}).get("result") or {}).get("failed"))
        if retry and not force:
            self.log(f"       {stage}: retrying the traces that failed at the teacher last time")
        return self.run_stage(stage, conf, inputs, [out], fn, force or retry)

    def _failed_traces(self, out: Path, last_error: str | None) -> int:
        """After sampling: how many traces failed at the teacher (an error when more than
        ``generate.max_failed_share`` did, every trace kept), and a line for those that cannot be sampled."""
        traces = load_traces(out)
        failed = sum(t.finish_reason == "error" for t in traces.values())
        share, most = failed / max(1, len(traces)), self.cfg.generate.max_failed_share
        if failed and share > most:  # e.g. the server died part-way: do not go on with what is left
            last = last_error or next((t.error for t in traces.values() if t.error), None)
            raise UserError(f"{failed} of {len(traces)} traces ({share:.0%}) failed at the teacher, more than "
                            f"generate.max_failed_share ({most:g}); last error: {last or 'not recorded'}. All "
                            f"are kept in {out}; run generate again to retry the failed ones")
        if failed:
            self.log(f"       {failed} traces failed at the teacher (recorded with their error; "
                     "re-run generate to retry them)")
        unfit = [t.error for t in traces.values() if t.finish_reason == "length" and t.error]
        if unfit:  # e.g. a prompt longer than the teacher's context: the same on every try, so not retried
            self.log(f"       {len(unfit)} traces could not be sampled and are recorded as truncated at 0 tokens "
                     f"(curate drops them), e.g.: {unfit[0]}")
        return failed

    def generate_conf(self) -> tuple[dict[str, Any], list[Path]]:
        """The generate stage's config section and input files (also what shards.py checks shards by)."""
        # batch_size is left out: a trace is a function of its problem, sample index and the settings,
        # however the problems are batched (teachers/sampling.py), so lowering it after running out of
        # memory resumes the traces already written
        conf = {"teacher": self.cfg.teacher.fingerprinted(),
                "sampling": self.cfg.generate.sampling().model_dump(mode="json", exclude={"batch_size"})}
        local = local_files(self.cfg.teacher.model) if self.cfg.teacher.kind in ("hf", "vllm") else []
        return conf, [self.rd.train_problems, *local]

    def curate(self, force: bool = False) -> dict[str, Any]:
        from reasondistill.curate.filters import curate, kept_line

        problems_path, traces_path = self.rd.train_problems, self.rd.traces
        self.rd.need(problems_path, traces_path, stage="generate")
        outputs = self.rd.curate_outputs
        test_path = self.rd.test_problems  # decontamination: drop training problems overlapping these
        if self.cfg.curate.decontaminate is not None and not test_path.exists():
            self.problems()

        def fn(_fp):
            from reasondistill.curate.decontam import apply_to_curation

            problems = {p.id: p for p in read_records(problems_path, Problem)}
            traces = list(load_traces(traces_path).values())
            unknown = sorted({t.problem_id for t in traces} - problems.keys())
            if unknown:
                raise ValueError(f"{traces_path}: {len(unknown)} traces name problems not in {problems_path}, "
                                 f"e.g. {unknown[0]!r}")
            with self._verifying():
                kept, verdicts, summary, pass_rates = curate(problems, traces, self.task, self.cfg.curate,
                                                             self._token_counter(counter))
            kept = apply_to_curation(kept, summary, list(problems.values()), test_path, self.cfg.curate.decontaminate,
                                     self.rd.decontamination)
            write_records(self.rd.curated, kept)
            write_records(self.rd.verdicts, verdicts)
            write_json(self.rd.curate_summary, summary)
            write_records(self.rd.pass_rates, pass_rates)
            self.log(f"       {kept_line(summary)}")
            if not kept:
                self.log("       nothing to train on: students are skipped; the teacher is still evaluated")
            return summary
        # lengths the source did not count are counted with the (first) student's tokenizer
        counter = (self._student_tokenizer_name(self.cfg.students[0]) if self.cfg.students else self.cfg.teacher.model
                   ) if self.cfg.curate.max_completion_tokens or self.cfg.curate.select == "shortest" else None
        conf = {"curate": self.cfg.curate, "task": self.cfg.task} | ({"count_tokens_with": counter} if counter else {})
        from reasondistill.curate.benchmarks import benchmark_paths

        inputs = [problems_path, traces_path, test_path, *benchmark_paths(self.cfg.curate.decontaminate)]
        return self.run_stage("curate", conf, inputs, outputs, fn, force)

    @staticmethod
    def _token_counter(name: str | None):
        """Counts a text's tokens with tokenizer ``name``, loaded on first use (most traces carry counts)."""
        if name is None:
            return None
        loaded = []

        def count(text: str) -> int:
            if not loaded:
                from reasondistill.models import load_tokenizer

                try:
                    loaded.append(load_tokenizer(name))
                except OSError as exc:
                    raise ValueError(f"curate.max_completion_tokens: some traces carry no token count, and the "
                                     f"tokenizer {name!r} that would count them cannot be loaded ({exc})") from None
            return len(loaded[0](text, add_special_tokens=False)["input_ids"])
        return count

    def build(self, student: str | None = None, force: bool = False) -> dict[str, Any]:
        return {s.name: self._build_one(s, force) for s in self._students(student)}

    def _build_one(self, s: StudentConfig, force: bool) -> dict[str, Any]:
        from reasondistill.data.build import build_dataset, make_examples
        from reasondistill.models import load_tokenizer

        problems_path, curated = self.rd.train_problems, self.rd.curated
        self.rd.need(curated, stage="curate")
        b = self.rd.build(s.name)
        tok_name = self._student_tokenizer_name(s)
        conf = {"build": self.cfg.build, "target": s.target, "tokenizer": tok_name, "seed": self.cfg.seed}

        def fn(_fp):
            problems = {p.id: p for p in read_records(problems_path, Problem)}
            examples = make_examples(problems, read_records(curated, Trace), s.target, self.cfg.build.think_tags)
            stats = build_dataset(examples, load_tokenizer(tok_name), b.dir, max_length=self.cfg.build.max_length,
                                  val_fraction=self.cfg.build.val_fraction, seed=self.cfg.seed,
                                  order=self.cfg.build.order, curriculum_by=self.cfg.build.curriculum_by,
                                  pass_rates=self._pass_rates() if by_pass_rate else None)
            if examples:
                self.log(f"       {s.name}: {stats['train']['examples']} train / {stats['val']['examples']} val "
                         f"examples, {stats['dropped_too_long']} too long")
            stats = self._build_skip(stats, b.stats)
            self.rd.mark_skipped(f"build:{s.name}", stats.get("skipped"), self.log)
            return stats
        by_pass_rate = self.cfg.build.order == "curriculum" and self.cfg.build.curriculum_by == "pass_rate"
        inputs = [problems_path, curated, *local_files(tok_name)] + ([self.rd.pass_rates] if by_pass_rate else [])
        return self.run_stage(f"build:{s.name}", conf, inputs, b.outputs, fn, force)

    def _pass_rates(self) -> dict[str, float]:
        """The teacher's pass rate per training problem (curate/pass_rates.jsonl)."""
        from reasondistill.records import iter_jsonl

        self.rd.need(self.rd.pass_rates, stage="curate")
        return {r["problem_id"]: r["pass_rate"] for _, r in iter_jsonl(self.rd.pass_rates)}

    def _build_skip(self, stats: dict[str, Any], stats_file: Path) -> dict[str, Any]:
        """``stats`` with ``skipped`` set (and saved) when the build left no training example."""
        from reasondistill.records import write_json

        if stats["train"]["examples"]:
            return stats
        if not stats["examples_in"]:
            summary = self.rd.curate_summary
            why = "curate kept no trace"
            if summary.exists():
                from reasondistill.curate.filters import kept_line

                why = kept_line(json.loads(summary.read_text())).removeprefix("curate: ")
            reason = f"no training data: {why}"
        elif stats["dropped_too_long"]:
            reason = (f"no training example: {stats['dropped_too_long']} of {stats['examples_in']} are longer than "
                      f"build.max_length={self.cfg.build.max_length}" + (f", {stats['val']['examples']} went to validation"
                                                                          if stats["val"]["examples"] else ""))
        else:
            reason = (f"no training example: all {stats['val']['examples']} went to validation "
                      f"(build.val_fraction={self.cfg.build.val_fraction})")
        stats = {**stats, "skipped": reason}
        write_json(stats_file, stats)
        return stats

    def _trainable(self, students: list[StudentConfig], stage: str) -> list[StudentConfig]:
        """The students that have training data; the others are skipped with one line each."""
        out = []
        for s in students:
            reason = self.no_data(s.name)
            if stage == "train":
                self.rd.mark_skipped(f"train:{s.name}", reason, self.log)
            elif reason:
                self.log(f"[skip] {stage}:{s.name}: {reason}")
            if reason is None:
                out.append(s)
        return out

    def train(self, student: str | None = None, force: bool = False) -> dict[str, Any]:
        from reasondistill.distributed import world_size

        asked = self._students(student)
        students = self._trainable(asked, "train")
        skipped = {s.name: {"skipped": self.no_data(s.name)} for s in asked if s not in students}
        workers = min(self.cfg.train_workers, len(students))
        if workers > 1 and world_size() == 1:
            from reasondistill.train.parallel import train_in_processes

            return {**skipped, **train_in_processes(self, students, workers, force)}
        return {**skipped, **{s.name: self._train_one(s, force) for s in students}}

    def _train_one(self, s: StudentConfig, force: bool) -> dict[str, Any]:
        from reasondistill.distributed import world_size
        from reasondistill.models import init_model, load_model, load_tokenizer
        from reasondistill.train.sft import cross_entropy_sum, train_model

        if s.policy is not None:  # trained on its own rollouts (train/policy.py)
            from reasondistill.train.policy_stage import train_policy_student

            return train_policy_student(self, s, force)
        b, t = self.rd.build(s.name), self.rd.train(s.name)
        self.rd.need(b.train, stage="build")
        world = world_size()
        stage = f"train:{s.name}"
        conf = {"student": _fingerprinted(s, world), "seed": self._seed(s)}
        if s.distill is not None and self.cfg.logit_teacher is not None:  # (absent: fingerprints as before)
            conf["logit_teacher"] = self.cfg.logit_teacher.model_dump(mode="json")
        soft_inputs = self.soft_inputs_of(s, force)  # soft distillation: teacher files or captured top-k
        inputs = [b.train, b.val, *local_files(s.model or ""), *soft_inputs]
        done_by = ((self.rd.stage_state(stage) or {}).get("result") or {}).get("processes") or 1
        if world == 1 and done_by > 1 and not force:  # trained under torchrun, now `run`/`train` in one process:
            as_trained = {**conf, "student": _fingerprinted(s, done_by)}  # that training, with its process count,
            if self.rd.is_current(stage, self.rd.fingerprint(as_trained, inputs), t.outputs):  # is this config's
                conf = as_trained

        def fn(fp):
            # main process only; under torchrun the other ranks wait here (no resuming from a stale run);
            # a multi-process run fingerprinted with the per-process batch (before the global one) resumes
            legacy = (self.rd.fingerprint({**conf, "student": _fingerprinted(s)}, inputs),) if world > 1 else ()
            self.rd.restart_if_stale(t.dir, t.progress, fp, self.log, also=legacy)
            self.say_resume(s.name, t.checkpoints, s.train.resume)
            tokenizer = load_tokenizer(self._student_tokenizer_name(s))
            if s.lora:  # adapters on the pretrained model (train/lora.py)
                from reasondistill.train.lora import apply_lora, load_base, trainable_line

                model = apply_lora(load_base(s.model, s.lora, s.attn_implementation), s.lora, self._seed(s))
                if self.rd.main:
                    self.log(f"       {s.name}: LoRA r={s.lora.r}: {trainable_line(model)}")
            elif s.model:
                model = load_model(s.model, attn_implementation=s.attn_implementation)
            else:
                attn = {"attn_implementation": s.attn_implementation} if s.attn_implementation else {}
                model = init_model(s.init.spec() | attn, tokenizer, self._seed(s))
            objective = self._objective(s, tokenizer, model) if s.distill else cross_entropy_sum
            return train_model(model, tokenizer, b.train, b.val, t.dir, s.train,
                               seed=self._seed(s), objective=objective, name=s.name, show_progress=self.show_progress)
        return self.run_stage(stage, conf, inputs, t.outputs, fn, force,
                              every_rank=True)  # every process trains; the main process keeps the books

    def say_resume(self, name: str, root: Path, resume: bool) -> None:
        """One line when a training run continues from a checkpoint rather than from its start."""
        from reasondistill.train.checkpoint import checkpoints

        found = checkpoints(root) if resume else []
        if found and self.rd.main:
            self.log(f"       {name}: resuming from {found[-1].name} ({found[-1]})")

    # -- soft distillation (train.kd): capture stage and objectives -----------------------------
    def capture(self, student: str | None = None, force: bool = False) -> dict[str, Any]:
        """Capture the teacher's top-k log-probs for the students with ``distill.source: offline_topk``."""
        students = [s for s in self._students(student) if s.distill and s.distill.source == "offline_topk"]
        capturable = self._trainable(students, "capture")
        if student is not None and not students:
            raise ValueError(f"student {student!r} has no `distill: {{source: offline_topk, top_k: K}}` section: "
                             "nothing to capture")
        if not students:
            self.log("[skip] capture: no student uses distill.source 'offline_topk'")
        return {s.name: self._capture_one(s, force) for s in capturable}

    def capture_estimate(self, student: str | None = None) -> dict[str, Any]:
        """The disk each offline_topk student's capture will need (data/capture_estimate.py); needs the
        build or at least the curated traces, never the teacher model."""
        from reasondistill.data import capture_estimate as ce
        from reasondistill.models import load_tokenizer

        out = {}
        for s in (x for x in self._students(student) if x.distill and x.distill.source == "offline_topk"):
            b, dc = self.rd.build(s.name), s.distill
            tok = load_tokenizer(self._student_tokenizer_name(s))
            teacher_tok = load_tokenizer(self._local_teacher()) if dc.cross_tokenizer else None
            built = [b.split(x) for x in ("train", "val") if b.split(x).exists()]
            completions = None
            if not built:
                from reasondistill.data.build import make_examples

                self.rd.need(self.rd.curated, stage="curate")
                problems = {p.id: p for p in read_records(self.rd.train_problems, Problem)}
                completions = [e.completion for e in make_examples(problems, read_records(self.rd.curated, Trace),
                                                                   s.target, self.cfg.build.think_tags)]
            m = ce.measure(tok, built, completions, teacher_tok)
            vocab = len(teacher_tok) if teacher_tok is not None else self._student_vocab(s, tok)
            out[s.name] = ce.estimate_capture(m["examples"], m["answer_tokens"], dc.top_k, dc.cache, vocab,
                                              m.get("ratio"), m["prompt_tokens"], 4 * vocab * 8)
            self.log(ce.format_estimate(out[s.name], s.name))
        if not out:
            self.log("capture: no student uses distill.source 'offline_topk'")
        return out

    def _topk_dir(self, s: StudentConfig) -> Path:
        return self.rd.build(s.name).topk(s.distill.top_k)

    def _local_teacher(self) -> str:
        """The model soft students learn the logits of: ``logit_teacher``, else an hf teacher."""
        return self._logit_teacher().model

    def _logit_teacher(self):
        """The logit teacher's section (teachers/logits.py): model, dtype, attn_implementation."""
        from reasondistill.teachers.logits import require_logit_teacher

        return require_logit_teacher(self.cfg)

    def soft_inputs_of(self, s: StudentConfig, force: bool) -> list[Path]:
        if s.distill is None:
            return []
        if s.distill.source == "offline_topk":
            from reasondistill.data.topk import INDEX

            self._capture_one(s, force)
            return [self._topk_dir(s) / INDEX]
        return local_files(self._local_teacher()) + ([self.rd.train_problems] if s.distill.cross_tokenizer else [])

    def _capture_one(self, s: StudentConfig, force: bool) -> dict[str, Any]:
        from reasondistill.data.dataset import TokenizedDataset
        from reasondistill.data.topk import capture_topk
        from reasondistill.models import load_model, load_tokenizer, resolve_dtype
        from reasondistill.progress import progress_bar
        from reasondistill.train.kd import check_same_tokenizer

        b = self.rd.build(s.name)
        self.rd.need(b.train, stage="build")
        teacher_name, spec = self._local_teacher(), self._logit_teacher()
        d = self._topk_dir(s)
        splits = {x: b.split(x) for x in ("train", "val") if b.split(x).exists()}
        dtype = resolve_dtype(spec.dtype)  # "auto" fingerprints as what it resolved to here
        conf = {"teacher": teacher_name, "dtype": dtype, "top_k": s.distill.top_k,
                "temperature": s.distill.temperature, "student": s.model, "tokenizer": self._student_tokenizer_name(s),
                **({"cache": s.distill.cache} if s.distill.cache != "fp16" else {}),
                **({"cross_tokenizer": True} if s.distill.cross_tokenizer else {})}
        inputs = [*splits.values(), *local_files(teacher_name)] + ([self.rd.train_problems] if s.distill.cross_tokenizer
                                                                    else [])

        def fn(_fp):
            import hashlib
            import json

            tokenizer = load_tokenizer(self._student_tokenizer_name(s))
            if s.distill.cross_tokenizer:
                return self._capture_cross(s, tokenizer, teacher_name, dtype, splits, d)
            check_same_tokenizer(tokenizer, load_tokenizer(teacher_name))
            teacher = load_model(teacher_name, dtype, attn_implementation=spec.attn_implementation)
            vocab = min(self._student_vocab(s, tokenizer), teacher.get_output_embeddings().weight.shape[0])
            if vocab < len(tokenizer):
                raise ValueError(f"{s.name}: {vocab} output rows for a tokenizer of {len(tokenizer)} tokens")
            teacher_id = hashlib.sha256(json.dumps([teacher_name, dtype,
                                                    self.rd.hashes(local_files(teacher_name))]).encode()).hexdigest()
            n = sum(len(TokenizedDataset(p)) for p in splits.values())
            with progress_bar(f"capture {s.name}", n, self.show_progress) as bar:
                stats = capture_topk(teacher, splits, d, s.distill.top_k, s.distill.temperature, vocab_size=vocab,
                                     pad_id=tokenizer.pad_token_id, teacher_id=teacher_id, log=self.log, progress=bar,
                                     cache=s.distill.cache)
            self.log(f"       {s.name}: teacher top-{s.distill.top_k} of {stats['tokens']} answer tokens, "
                     f"{stats['bytes_per_token']} bytes/token on disk")
            return stats
        return self.run_stage(f"capture:{s.name}", conf, inputs, [d], fn, force)

    def _problem_prompts(self) -> dict[str, str]:
        return {p.id: p.prompt for p in read_records(self.rd.train_problems, Problem)}

    def _capture_cross(self, s: StudentConfig, tokenizer, teacher_name: str, dtype, splits, d) -> dict[str, Any]:
        """The cross-tokenizer cache: the teacher's tokens, strings and top-k (train/cross_kd.py)."""
        from reasondistill.models import load_model, load_tokenizer
        from reasondistill.train.cross_kd import capture_cross_tokenizer

        stats = capture_cross_tokenizer(load_model(teacher_name, dtype), load_tokenizer(teacher_name), tokenizer,
                                        splits, self._problem_prompts(), d, s.distill.top_k, s.distill.temperature,
                                        cache=s.distill.cache, log=self.log)
        self.log(f"       {s.name}: teacher top-{s.distill.top_k} of {stats['tokens']} teacher answer tokens "
                 f"(cross-tokenizer), {stats['bytes_per_token']} bytes/token on disk")
        return stats

    def _student_vocab(self, s: StudentConfig, tokenizer) -> int:
        """Output rows of the student: the tokenizer's size for a fresh student (see init_model)."""
        if s.model is None:
            return len(tokenizer)
        from transformers import AutoConfig

        from reasondistill.models import resolve

        return int(AutoConfig.from_pretrained(resolve(s.model)).vocab_size)

    def _objective(self, s: StudentConfig, tokenizer, model):
        """The training objective a student's ``distill`` section describes (train/kd.py)."""
        from reasondistill.train.kd import OfflineTopKKD, OnlineKD, make_loss, shared_vocab_size

        dc = s.distill
        if dc.cross_tokenizer:
            return self._cross_objective(s, tokenizer)
        loss = make_loss(dc)
        if dc.source == "offline_topk":
            from reasondistill.data.topk import TopKReader

            return OfflineTopKKD(loss, TopKReader(self._topk_dir(s)))
        from reasondistill.teachers.logits import load_logit_teacher

        teacher, teacher_tokenizer = load_logit_teacher(self._logit_teacher())
        objective = OnlineKD(teacher, loss, student_tokenizer=tokenizer, teacher_tokenizer=teacher_tokenizer)
        shared_vocab_size(model, teacher, tokenizer)
        if dc.features is not None:
            from reasondistill.train.features import FeatureKD

            objective = FeatureKD(objective, model, dc.features.layers, dc.features.loss, dc.features.weight,
                                  seed=self._seed(s))
        if dc.source == "on_policy":
            from reasondistill.train.onpolicy import OnPolicyKD

            objective = OnPolicyKD(objective, tokenizer, dc.defaulted("lambda_on_policy"), seed=self._seed(s))
        return objective

    def _cross_objective(self, s: StudentConfig, tokenizer):
        """A student of another tokenizer (distill.cross_tokenizer): train/cross_kd.py."""
        from reasondistill.train import cross_kd

        dc = s.distill
        if dc.source == "offline_topk":  # no teacher model or tokenizer: the capture holds its tokens and strings
            maps, size = cross_kd.vocab_maps_for_cache(self._topk_dir(s), tokenizer)
            loss = cross_kd.make_cross_loss(dc.cross_tokenizer, maps, len(tokenizer), size, dc)
            return cross_kd.CachedCrossTokenizerKD(loss, self._topk_dir(s), tokenizer)
        from reasondistill.data.token_alignment import VocabMaps, token_bytes
        from reasondistill.teachers.logits import load_logit_teacher

        teacher, teacher_tok = load_logit_teacher(self._logit_teacher())  # logit_teacher, else an hf teacher
        size = cross_kd.teacher_vocab_size(teacher, teacher_tok)
        maps = VocabMaps.build(tokenizer, teacher_tok, token_bytes(tokenizer), token_bytes(teacher_tok), size)
        loss = cross_kd.make_cross_loss(dc.cross_tokenizer, maps, len(tokenizer), size, dc)
        prompts = cross_kd.PromptMap.build(list(self._problem_prompts().values()), tokenizer, teacher_tok)
        objective = cross_kd.CrossTokenizerKD(teacher, loss, tokenizer, teacher_tok, prompts)
        if dc.source == "on_policy":
            from reasondistill.train.onpolicy import OnPolicyKD

            objective = OnPolicyKD(objective, tokenizer, dc.defaulted("lambda_on_policy"), seed=self._seed(s))
        return objective

    def evaluate(self, model: str | None = None, force: bool = False) -> dict[str, Any]:
        self.problems()
        test_path = self.rd.test_problems
        targets = self._eval_targets(model)
        if not (test_path.exists() and read_records(test_path, Problem)):
            self.rd.mark_skipped("evaluate", f"the test split is empty (0 problems in {test_path}): nothing to "
                                 "evaluate; give the task test problems (task.n_test, test_path or test_fraction)",
                                 self.log)
            return {}
        self.rd.mark_skipped("evaluate", None)
        with self._verifying():  # one verifier pool for every model and every extra
            results = {name: self._evaluate_one(name, path, test_path, force) for name, path in targets}
            self._evaluate_beyond_greedy(targets, force)
        return results

    def _models(self) -> list[tuple[str, str]]:
        """(name, model path) of every model the config evaluates: the teacher (unless ingested or
        ``evaluate.teacher`` is off) and every student's ``final/``."""
        teacher = self.cfg.evaluate.teacher and self.cfg.teacher.kind != "ingested"
        return ([("teacher", self.cfg.teacher.model)] if teacher else []) + \
            [(s.name, str(self.rd.train(s.name).final)) for s in self.cfg.students]

    def _eval_targets(self, model: str | None) -> list[tuple[str, str]]:
        """(name, model path) to evaluate: the teacher (through its own kind: hf, openai, vllm) and every
        student with training data; a student with none, or ingested traces' teacher, is skipped with one line."""
        from reasondistill.evaluate.backends import INGESTED

        ingested = self.cfg.teacher.kind == "ingested"
        if self.cfg.evaluate.teacher and model in (None, "teacher"):
            self.rd.mark_skipped("evaluate:teacher", INGESTED if ingested else None, self.log)
        targets = self._models()
        if model is not None:
            targets = [t for t in targets if t[0] == model]
            if not targets and model == "teacher" and ingested:
                return []  # skipped above, with the reason
            if not targets:
                raise KeyError(f"no model named {model!r}; known: teacher, {[s.name for s in self.cfg.students]}")
        out = []
        for name, path in targets:
            if name == "teacher":
                out.append((name, path))
                continue
            reason = self.no_data(name)
            self.rd.mark_skipped(f"evaluate:{name}", reason and f"not trained: {reason}", self.log)
            if reason is None:
                out.append((name, path))
        return out

    def _evaluate_one(self, name: str, path: str, test_path: Path, force: bool) -> dict[str, Any]:
        from reasondistill.evaluate.accuracy import evaluate_model
        from reasondistill.evaluate.backends import evaluation_backend

        if name != "teacher":
            self.rd.need(Path(path), stage="train")
        d = self.rd.eval(name).dir

        def fn(fp):
            problems = read_records(test_path, Problem)
            m = evaluate_model(evaluation_backend(self.cfg, name, path), problems, self.task,
                               batch_size=self.cfg.evaluate.batch_size,
                               max_new_tokens=self.cfg.evaluate.max_new_tokens, out_dir=d, name=name,
                               resume_key=fp, show_progress=self.show_progress)  # stopped part way: resumes
            self.log(f"       {name}: accuracy {m['accuracy']:.3f} on {m['n']} problems"
                     + (f" ({m['timeouts']} answers past the verify time limit: unparseable)" if m.get("timeouts") else ""))
            return m
        stage, conf, inputs, outputs = self._greedy_stage(name, path)
        return self.run_stage(stage, conf, inputs, outputs, fn, force)

    def _greedy_stage(self, name: str, path: str) -> tuple[str, dict[str, Any], list[Path], list[Path]]:
        """A model's greedy evaluation stage: (stage name, config, inputs, outputs) as fingerprinted."""
        from reasondistill.evaluate.backends import backend_conf, model_inputs

        conf = {"evaluate": self._greedy_conf(), "model": path} | backend_conf(self.cfg, name)
        return (f"evaluate:{name}", conf, [self.rd.test_problems, *model_inputs(name, path)],
                self.rd.eval(name).greedy_outputs)

    def _mark_stale_evaluations(self) -> None:
        """Before a report: a model whose greedy evaluation on disk was made under another config or
        model than the current one (an evaluate re-run that stopped part way, a retrained student) is
        marked skipped with the reason, so the report leaves it out and says why, instead of showing it
        beside fresh numbers."""
        for name, path in self._models():
            stage, conf, inputs, outputs = self._greedy_stage(name, path)
            if not all(p.exists() for p in outputs) or stage in self.rd.skipped():
                continue
            if not all(Path(p).exists() for p in inputs) or \
                    not self.rd.is_current(stage, self.rd.fingerprint(conf, inputs), outputs):
                self.rd.mark_skipped(stage, "stale: evaluated under another config or model than the current "
                                     f"one; re-run `reasondistill evaluate {self.rd.root} --model {name}`", self.log)

    # -- evaluation beyond greedy: sampled, OOD, budgets, vs teacher, router (evaluate/stages.py) ----
    def _greedy_conf(self) -> dict[str, Any]:
        """The settings greedy evaluation depends on (the same fingerprint as before the extras existed)."""
        return self.cfg.evaluate.model_dump(include={"batch_size", "max_new_tokens", "teacher"})

    def _evaluate_beyond_greedy(self, targets: list[tuple[str, str]], force: bool = False) -> dict[str, Any]:
        from reasondistill.evaluate.stages import run_beyond_greedy

        return run_beyond_greedy(self, targets, force)

    def route(self, student: str | None = None, k: int | None = None, thresholds: list[float] | None = None,
              force: bool = False) -> dict[str, Any]:
        """Student-first cascade for one or all students (needs the teacher's greedy evaluation)."""
        from reasondistill.evaluate.stages import run_router

        with self._verifying():
            return run_router(self, student, k, thresholds, force)

    def quantize(self, student: str | None = None, force: bool = False) -> dict[str, Any]:
        """PTQ / QAT / QAD variants of the trained students with a ``quantize`` section (quantize/stage.py)."""
        from reasondistill.quantize.stage import quantize_variant

        asked = [s for s in self._students(student) if s.quantize]
        if student is not None and not asked:
            raise ValueError(f"student {student!r} has no `quantize` section: nothing to quantize")
        if not asked:
            self.log("[skip] quantize: no student has a quantize section")
            return {}
        self.problems()
        with self._verifying():
            return {f"{s.name}/{q.label}": quantize_variant(self, s, q, self._seed(s), force)
                    for s in self._trainable(asked, "quantize") for q in s.quantize}

    def report(self, force: bool = False) -> dict[str, Any]:
        from reasondistill.report.build import write_report

        self._mark_stale_evaluations()
        inputs = self.rd.report_inputs()  # the other stages' outputs the report reads (layout.py)
        if not inputs:
            raise StageInputMissing(f"nothing to report in {self.rd.root}: run `reasondistill evaluate` first")
        def fn(_fp):
            return write_report(self.rd.root, self.cfg)
        return self.run_stage("report", {"students": [s.name for s in self.cfg.students]}, inputs,
                              self.rd.report_outputs, fn, force)

    def _students(self, name: str | None) -> list[StudentConfig]:
        return [self.cfg.student(name)] if name else list(self.cfg.students)

    def run(self, force: bool = False) -> dict[str, Any]:
        from reasondistill.preflight import require_ok

        require_ok(self.cfg)  # every problem `reasondistill check` finds stops the run before its first stage
        with self.rd.writer():  # one writer for the whole run, not only stage by stage
            return self._run_all(force)

    def _run_all(self, force: bool) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.generate(force)
        self.curate(force)
        self.build(force=force)
        self.train(force=force)
        self.evaluate(force=force)
        self.quantize(force=force)
        report = self.report(force=True)
        self.log(f"done in {time.perf_counter() - t0:.1f}s: {self.rd.report_md}")
        return report
