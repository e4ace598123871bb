"""The problems and generate stages of a run whose traces were ingested (``teacher.kind: ingested``).

Why apart from ``ingest.py``: the pipeline calls these stages, while ``ingest.py`` (the verb that
reads a file of traces into a run) builds a Pipeline; with the stages here the imports point one way.

    Pipeline(cfg).generate()   # for teacher.kind "ingested": ingested_generate(pipeline)
"""

from __future__ import annotations

from typing import Any

from reasondistill.records import write_records


def ingested_problems(pipe, force: bool = False) -> dict[str, Any]:
    """Pipeline.problems for an ingested run: the training problems are the ingested ones; only the
    test split comes from the configured task."""
    out_test = pipe.rd.test_problems
    conf = {"task": pipe.cfg.task, "seed": pipe.cfg.seed, "train": "ingested"}

    def fn(_fp):
        n, seed = pipe.cfg.task.n_test, pipe.cfg.seed
        select = getattr(pipe.task, "select", None)  # a mixture picks per source
        test = select("test", n, seed)[0] if select else pipe.task.problems("test", n, seed)
        write_records(out_test, test)
        return {"test": len(test)}
    inputs = getattr(pipe.task, "input_files", lambda: [])()  # a file task's data files
    return pipe.run_stage("problems", conf, inputs, [out_test], fn, force)


def ingested_generate(pipe, force: bool = False) -> dict[str, Any]:
    """Pipeline.generate for an ingested run: nothing to sample; the ingested traces are the output."""
    from reasondistill.rundir import StageInputMissing

    pipe.problems()
    train, out = pipe.rd.train_problems, pipe.rd.traces
    state = pipe.rd.stage_state("ingest")
    if state is None or not train.exists() or not out.exists():
        raise StageInputMissing(f"{out} not found: teacher.kind is 'ingested'; run "
                                f"`reasondistill ingest FILE {pipe.rd.root} --format r1|messages` first")
    if pipe.rd.hashes([train, out]) != state.get("outputs"):
        pipe.log(f"       note: {train.name} or {out.name} changed since they were ingested; using them as they are")
    pipe.log(f"[skip] generate: traces were ingested from {state['config']['file']}")
    return state.get("result") or {}
