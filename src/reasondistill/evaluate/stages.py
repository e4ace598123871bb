"""The pipeline's evaluation beyond greedy accuracy, as skippable stages in ``evaluate/<model>/``.

Why: sampled metrics, the OOD split, thinking budgets, student-vs-teacher comparison and the
cascade router are each optional (``evaluate.samples``, ``evaluate.ood``, ``evaluate.budgets``,
``evaluate.router``) and each is its own stage, so changing one re-runs only that one and the
greedy evaluation is never touched. Called by :meth:`Pipeline.evaluate` and :meth:`Pipeline.route`.

Files per model directory ``evaluate/<model>/``: ``sampled.json`` + ``samples.jsonl`` +
``reliability.png`` (samples > 0); ``ood/metrics.json`` + ``ood/completions.jsonl`` (ood);
``budget.json`` (``evaluate.budget``); for students ``compare.json`` (teacher evaluated) and ``router.json`` +
``router.png`` (router; ``router_samples.jsonl`` when ``samples`` < ``router.k``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from reasondistill.records import Problem, iter_jsonl, read_records, write_json, write_records


def _rows(path: Path) -> list[dict[str, Any]]:
    return [obj for _, obj in iter_jsonl(path)]


def _inputs(name: str, path: str) -> list[Path]:
    from reasondistill.evaluate.backends import model_inputs

    return model_inputs(name, path)


def _backend(pipe, name: str, path: str):
    """The evaluation backend of ``name`` (evaluate/backends.py), built when a stage runs."""
    from reasondistill.evaluate.backends import evaluation_backend

    return evaluation_backend(pipe.cfg, name, path)


def _backend_conf(pipe, name: str) -> dict[str, Any]:
    from reasondistill.evaluate.backends import backend_conf

    return backend_conf(pipe.cfg, name)


def hf_only(pipe, name: str) -> bool:
    """Whether ``name`` is decoded by transformers here (budget forcing needs the logits)."""
    return pipe.cfg.teacher.kind == "hf" if name == "teacher" else pipe.cfg.evaluate.backend == "hf"


def run_beyond_greedy(pipe, targets: Sequence[tuple[str, str]], force: bool = False) -> dict[str, Any]:
    ev = pipe.cfg.evaluate
    out: dict[str, Any] = {}
    for name, path in targets:
        greedy_provenance(pipe, name, path)
        if ev.samples:
            out[f"sampled:{name}"] = sampled_stage(pipe, name, path, force)
        if ev.ood is not None:
            out[f"ood:{name}"] = ood_stage(pipe, name, path, force)
        if ev.budget_settings() is not None and hf_only(pipe, name):
            out[f"budget:{name}"] = budget_stage(pipe, name, path, force)
        elif ev.budget_settings() is not None:
            pipe.log(f"[skip] budget:{name}: thinking budgets force </think> through the logits, so they need the "
                     "hf backend")
    teacher_rows = pipe.rd.eval("teacher").completions
    for name, _ in targets:
        if name == "teacher" or not teacher_rows.exists():
            continue
        out[f"compare:{name}"] = compare_stage(pipe, name, force)
        if ev.router is not None:
            out[f"route:{name}"] = route_stage(pipe, name, ev.router.k, ev.router.thresholds, force)
    return out


def greedy_provenance(pipe, name: str, path: str) -> None:
    """``provenance.json`` beside the greedy results: what determines them (template, decoding, model hash)."""
    from reasondistill.evaluate.backends import local_tokenizer
    from reasondistill.models import resolve

    e = pipe.rd.eval(name)
    if not e.completions.exists():
        return
    ev = pipe.cfg.evaluate
    try:
        weights = Path(resolve(path)) / "model.safetensors"
    except FileNotFoundError:  # an API model name
        weights = Path("/nonexistent")
    write_json(e.provenance, {
        "model": path, "model_sha256": pipe.rd.file_hash(weights) if weights.is_file() else None,
        **_backend_conf(pipe, name),
        "prompt_template": getattr(local_tokenizer(path), "chat_template", None), "system_prompt": None,
        "decoding": "greedy", "sampling": {"n": 1, "temperature": 0.0}, "max_new_tokens": ev.max_new_tokens,
        "batch_size": ev.batch_size, "seed": None, "note": "greedy results do not depend on the batch size "
        "(tests/evaluate/test_sampled.py)"})


def _sampling_conf(pipe, path: str, n: int, ks: Sequence[int]) -> dict[str, Any]:
    ev = pipe.cfg.evaluate
    return {"samples": n, "k": list(ks), "temperature": ev.temperature, "top_p": ev.top_p, "seed": ev.seed,
            "max_new_tokens": ev.max_new_tokens, "batch_size": ev.batch_size, "model": path}


def sampled_stage(pipe, name: str, path: str, force: bool = False) -> Any:
    """``evaluate.samples`` samples per test problem: ``samples.jsonl`` and the metrics in ``sampled.json``."""
    from reasondistill.evaluate.sampled import evaluate_sampled

    ev = pipe.cfg.evaluate
    n, test_path, e = ev.samples, pipe.rd.test_problems, pipe.rd.eval(name)
    conf = _sampling_conf(pipe, path, n, ev.k) | _backend_conf(pipe, name)

    def fn(_fp):
        res = evaluate_sampled(_backend(pipe, name, path), read_records(test_path, Problem), pipe.task, samples=n, k=conf["k"],
                               temperature=ev.temperature, top_p=ev.top_p, max_new_tokens=ev.max_new_tokens,
                               batch_size=ev.batch_size, seed=ev.seed, out_dir=e.dir, name=name)
        top = str(max(conf["k"]))
        pipe.log(f"       {name}: pass@{top} {res['pass@k'][top]['value']:.3f}, maj@{top} "
                 f"{res['maj@k'][top]['value']:.3f}, avg@{n} {res['avg@n']['value']:.3f}")
        return {"pass@k": res["pass@k"], "maj@k": res["maj@k"], "avg@n": res["avg@n"]}
    return pipe.run_stage(f"evaluate-sampled:{name}", conf, [test_path, *_inputs(name, path)],
                          [e.samples, e.sampled], fn, force)


def router_samples_stage(pipe, name: str, path: str, k: int, force: bool = False) -> Any:
    """``k`` samples per test problem for the router alone (when ``evaluate.samples`` < k): rows in
    ``router_samples.jsonl``, no metrics."""
    from reasondistill.evaluate.sampled import completion_rows
    from reasondistill.teachers.sampling import SamplingParams

    ev = pipe.cfg.evaluate
    test_path, e = pipe.rd.test_problems, pipe.rd.eval(name)

    def fn(_fp):
        backend = _backend(pipe, name, path)
        params = SamplingParams(n=k, temperature=ev.temperature, top_p=ev.top_p, seed=ev.seed,
                                max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size)
        write_records(e.router_samples, completion_rows(backend, backend.tokenizer, read_records(test_path, Problem),
                                                        pipe.task, params))
        return {"samples": k}
    return pipe.run_stage(f"evaluate-router-samples:{name}", _sampling_conf(pipe, path, k, [k]) | _backend_conf(pipe, name),
                          [test_path, *_inputs(name, path)], [e.router_samples], fn, force)


def ood_task(pipe):
    """The task of the OOD split: ``evaluate.ood.task`` (any task section), or the run's chained_arith
    task at the harder levels ``min_ops``..``max_ops``."""
    from reasondistill.tasks.base import load_task

    ood = pipe.cfg.evaluate.ood
    if ood.task is not None:
        return load_task(ood.task.task_spec())
    return load_task({**pipe.cfg.task.task_spec(), "min_ops": ood.min_ops, "max_ops": ood.max_ops})


def ood_problems(pipe, task=None) -> list[Problem]:
    """The OOD split: up to ``evaluate.ood.n`` test-split problems of :func:`ood_task` (for harder
    chained_arith levels hash-disjoint from training)."""
    from reasondistill.tasks.mixture import select_problems

    task = task or ood_task(pipe)
    problems, _ = select_problems(task, "test", pipe.cfg.evaluate.ood.n, pipe.cfg.seed)
    for p in problems:
        p.meta["split"] = "ood"
    return problems


def ood_source(ood) -> str:
    """How the report names the OOD split's source."""
    if ood.task is None:
        return f"chained_arith, {ood.min_ops}-{ood.max_ops} operations"
    t = ood.task
    where = getattr(t, "test_path", None) or getattr(t, "path", None) or getattr(t, "hf_id", None)
    return f"{t.name}" + (f" ({where})" if where else "")


def ood_stage(pipe, name: str, path: str, force: bool = False) -> Any:
    from reasondistill.evaluate.accuracy import evaluate_model
    from reasondistill.evaluate.metrics import with_ci

    ev = pipe.cfg.evaluate
    o = pipe.rd.eval(name).ood
    conf = {"ood": ev.ood, "task": pipe.cfg.task, "seed": pipe.cfg.seed, "batch_size": ev.batch_size,
            "max_new_tokens": ev.max_new_tokens, "model": path} | _backend_conf(pipe, name)
    if ev.ood.task is not None:  # its data files: a changed file re-runs the stage
        inputs_extra = getattr(ood_task(pipe), "input_files", lambda: [])()
    else:
        inputs_extra = []

    def fn(_fp):
        task = ood_task(pipe)
        problems = ood_problems(pipe, task)
        write_records(pipe.rd.ood_problems, problems)
        m = evaluate_model(_backend(pipe, name, path), problems, task, batch_size=ev.batch_size,
                           max_new_tokens=ev.max_new_tokens, out_dir=o.dir, name=name)  # the OOD task's own verifier
        rows = _rows(o.completions)
        m.update({"split": "ood", "min_ops": ev.ood.min_ops, "max_ops": ev.ood.max_ops, "source": ood_source(ev.ood),
                  "note": "harder difficulty levels than training ever saw" if ev.ood.task is None else
                  "problems from another source than training (evaluate.ood.task)",
                  "accuracy_ci": with_ci([r["verdict"] == "correct" for r in rows])})
        write_json(o.metrics, m)
        pipe.log(f"       {name}: OOD accuracy {m['accuracy']:.3f} ({m['source']})")
        return {"accuracy": m["accuracy"], "n": m["n"]}
    return pipe.run_stage(f"evaluate-ood:{name}", conf, [*_inputs(name, path), *inputs_extra], o.greedy_outputs, fn,
                          force)


def budget_stage(pipe, name: str, path: str, force: bool = False) -> Any:
    from reasondistill.evaluate.budget import budget_curve

    ev = pipe.cfg.evaluate
    test_path, e = pipe.rd.test_problems, pipe.rd.eval(name)
    b = ev.budget_settings()
    answer_tokens = b.answer_tokens or ev.max_new_tokens  # after </think>: as much as an unforced answer may take
    conf = {"budgets": b.budgets, "answer_tokens": answer_tokens, "batch_size": ev.batch_size, "model": path}
    if b.min_thinking or b.force_open:
        conf |= {"min_thinking": b.min_thinking, "force_open": b.force_open}

    def fn(_fp):
        res = budget_curve(path, read_records(test_path, Problem), pipe.task, b.budgets, answer_tokens=answer_tokens,
                           min_thinking=b.min_thinking, force_open=b.force_open, batch_size=ev.batch_size,
                           out_dir=e.dir, name=name)
        pipe.log(f"       {name}: accuracy by thinking budget " +
                 ", ".join(f"{p['budget']}: {p['accuracy']['value']:.3f}" for p in res["points"]))
        return {str(p["budget"]): p["accuracy"]["value"] for p in res["points"]}
    return pipe.run_stage(f"evaluate-budget:{name}", conf, [test_path, *_inputs(name, path)], [e.budget], fn, force)


def compare_stage(pipe, name: str, force: bool = False) -> Any:
    from reasondistill.evaluate.compare_models import compare_to_teacher

    root, e, t = pipe.rd.test_problems, pipe.rd.eval(name), pipe.rd.eval("teacher")
    samples = e.samples
    inputs = [root, e.completions, t.completions] + ([samples] if samples.exists() else [])

    def fn(_fp):
        res = compare_to_teacher(_rows(e.completions), _rows(t.completions),
                                 read_records(root, Problem), pipe.task,
                                 student_samples=_rows(samples) if samples.exists() else None, out_dir=e.dir, name=name)
        falloff = res["falloff"]["first_falloff"]
        pipe.log(f"       {name} vs teacher: answer agreement {res['agreement']['agreement']:.3f}, "
                 + (f"at no difficulty more than {res['falloff']['threshold']:.0%} behind the teacher" if falloff is None else
                    f"first fall-off at difficulty {falloff}"))
        return {"agreement": res["agreement"]["agreement"], "first_falloff": res["falloff"]["first_falloff"]}
    return pipe.run_stage(f"compare:{name}", {"compare": 1}, inputs, [e.compare], fn, force)


def route_stage(pipe, name: str, k: int, thresholds: Sequence[float], force: bool = False) -> Any:
    from reasondistill.evaluate.router import route_student

    ev = pipe.cfg.evaluate
    root, e, t = pipe.rd.test_problems, pipe.rd.eval(name), pipe.rd.eval("teacher")
    pipe.rd.need(t.completions, stage="evaluate")
    model = str(pipe.rd.train(name).final)
    if ev.samples >= k:
        samples = e.samples
        if not samples.exists():
            sampled_stage(pipe, name, model, force)
    else:
        samples = e.router_samples
        router_samples_stage(pipe, name, model, k, force)

    def fn(_fp):
        res = route_student(_rows(samples), _rows(t.completions), read_records(root, Problem), pipe.task,
                            k, thresholds, out_dir=e.dir, name=name)
        c = res["chosen"]
        pipe.log(f"       {name} → teacher: " + (f"threshold {c['threshold']:.2f} sends {c['teacher_share']:.1%} "
                 f"to the teacher ({c['teacher_calls']} calls, {c.get('teacher_prompt_tokens', 0)}+"
                 f"{c.get('teacher_completion_tokens', 0)} tokens), accuracy {c['accuracy']:.3f} "
                 f"(teacher {res['teacher_accuracy']:.3f})" if c
                 else "no threshold reaches the teacher's accuracy within 1 point"))
        return {"chosen": c, "teacher_accuracy": res["teacher_accuracy"]}
    conf = {"k": k, "thresholds": list(thresholds)}
    return pipe.run_stage(f"route:{name}", conf, [root, samples, t.completions], [e.router, e.router_png], fn, force)


def run_router(pipe, student: str | None = None, k: int | None = None, thresholds: Sequence[float] | None = None,
               force: bool = False) -> dict[str, Any]:
    """``reasondistill route``: the cascade for one or all students (teacher greedy rows must exist)."""
    from reasondistill.evaluate.router import DEFAULT_THRESHOLDS

    from reasondistill.evaluate.backends import INGESTED

    if pipe.cfg.teacher.kind == "ingested":
        raise ValueError(f"route: the teacher is {INGESTED}: there is no teacher to send problems to")
    r = pipe.cfg.evaluate.router
    k = k or (r.k if r else 4)
    thresholds = list(thresholds or (r.thresholds if r else DEFAULT_THRESHOLDS))
    names = [student] if student else [s.name for s in pipe.cfg.students]
    routed = []
    for n in names:
        pipe.cfg.student(n)  # KeyError naming the known students
        reason = pipe.no_data(n)
        if reason:
            pipe.log(f"[skip] route:{n}: not trained: {reason}")
            continue
        pipe.rd.need(pipe.rd.train(n).final, stage="train")
        routed.append(n)
    return {n: route_stage(pipe, n, k, thresholds, force) for n in routed}
