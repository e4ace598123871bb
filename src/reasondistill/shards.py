"""Teacher generation split over machines: ``generate --shard i/N`` and ``merge``.

Why: sampling a big teacher over many problems is the slow stage, and it parallelises perfectly
over problems. ``reasondistill generate RUN --shard i/N`` generates only the problems whose id
hashes to shard i of N (a fixed partition: shards are disjoint and together cover every problem,
whatever order or machine they run on), into ``generate/shards/traces-i-of-N.jsonl``, resumably
like the normal stage. Each shard file has a ``.meta.json`` beside it with a fingerprint of the
generate config (teacher, sampling) and of the content of its inputs (problems, local teacher
files); ``reasondistill merge RUN`` checks that every shard has this run's fingerprint, merges
them into ``generate/traces.jsonl`` (one trace per (problem, sample); a later trace replaces an
earlier one unless it is a failure), reports missing shards, and, once every trace is there,
records the generate stage as done, so ``curate`` (or ``run``) carries on as usual. Sampling is
seeded per (problem, sample), so merged shards equal one unsharded run.

    reasondistill generate runs/big --shard 0/4        # machine A; 1/4, 2/4, 3/4 on B, C, D
    # copy the other machines' runs/big/generate/shards/*-of-4.* into runs/big/generate/shards/
    reasondistill merge runs/big                       # or: merge runs/big --from /mnt/b/runs/big
    reasondistill run runs/big                         # generate is skipped; curate onwards run
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from reasondistill.layout import Layout
from reasondistill.sharding import SHARD_FILE, shard_of, shard_files
from reasondistill.records import Problem, Trace, read_records, write_json, write_records

def _meta_path(traces: Path) -> Path:
    return traces.with_name(traces.name[: -len(".jsonl")] + ".meta.json")


def generation_fingerprint(pipe) -> dict[str, str]:
    """What a shard must share with this run to be merged into it: the generate config and the
    content of its inputs (by content only, so a run directory or model copied elsewhere matches)."""
    from reasondistill.rundir import jsonable

    conf, inputs = pipe.generate_conf()
    config = hashlib.sha256(json.dumps(jsonable(conf), sort_keys=True).encode()).hexdigest()[:16]
    content = hashlib.sha256(json.dumps(sorted(pipe.rd.hashes(inputs).values())).encode()).hexdigest()[:16]
    return {"fingerprint": f"{config}-{content}", "config": config, "inputs": content}


def generate_shard(pipe, i: int, n: int, force: bool = False) -> dict[str, Any]:
    """Generate shard i of N of the training problems into ``generate/shards/`` (resumable)."""
    if pipe.cfg.teacher.kind == "ingested":
        raise ValueError("teacher.kind 'ingested': the traces come from `reasondistill ingest`; nothing to shard")
    from reasondistill.rundir import WriterLock

    # shards of one run may generate side by side (also in one shared directory): one writer per shard
    pipe.rd.lock = WriterLock(pipe.rd.stages_dir / f"writer-shard-{i}-of-{n}.lock")
    pipe.problems()
    traces, _progress = shard_files(pipe.rd.root, i, n)
    if pipe.rd.main:
        write_json(_meta_path(traces), {"shard": i, "of": n, **generation_fingerprint(pipe)})
    return pipe.generate(force=force, shard=(i, n))


def find_shards(root: Path, sources: list[Path] = ()) -> list[tuple[int, int, Path]]:
    """(i, N, file) of every shard file in the run directory, then in each source (a run directory
    or a directory of shard files), in that order."""
    found = []
    for src in [Path(root), *map(Path, sources)]:
        d = Layout(src).shards_dir if Layout(src).shards_dir.is_dir() else src
        if not d.is_dir():
            raise FileNotFoundError(f"{src}: no such directory (expected a run directory or a directory of shards)")
        here = [(int(m.group(1)), int(m.group(2)), f) for f in d.glob("traces-*-of-*.jsonl")
                if (m := SHARD_FILE.match(f.name))]
        found += sorted(here)
    return found


def _keep(old: Trace | None, new: Trace) -> bool:
    """A later trace replaces an earlier one, except that a failure never replaces a success."""
    return old is None or new.finish_reason != "error" or old.finish_reason == "error"


def merge(pipe, sources: list[Path] = (), log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Merge shard files into ``generate/traces.jsonl``; record the generate stage once complete."""
    from reasondistill.pipeline import load_traces

    log = log or pipe.log
    rd = pipe.rd
    pipe.problems()
    found = find_shards(rd.root, list(sources))
    if not found:
        raise FileNotFoundError(f"no shard files (generate/shards/traces-I-of-N.jsonl) in {rd.root}"
                                + "".join(f" or {s}" for s in sources)
                                + f": run `reasondistill generate {rd.root} --shard I/N` first")
    splits = sorted({n for _, n, _ in found})
    if len(splits) > 1:
        raise ValueError(f"shards of different splits ({', '.join(f'of {n}' for n in splits)}): merge one split at a time")
    n_shards = splits[0]
    want = generation_fingerprint(pipe)
    for i, _, f in found:
        try:
            meta = json.loads(_meta_path(f).read_text())
        except (OSError, ValueError):
            raise ValueError(f"{f}: no readable {_meta_path(f).name} beside it (copy it with the shard, or "
                             "re-run `generate --shard` to write it)") from None
        if meta.get("fingerprint") != want["fingerprint"]:
            what = "teacher/sampling config" if meta.get("config") != want["config"] else "problems or teacher files"
            raise ValueError(f"{f}: generated with a different {what} than this run (fingerprint "
                             f"{meta.get('fingerprint')} != {want['fingerprint']}): not merged")

    problems = read_records(rd.train_problems, Problem)
    order = {p.id: k for k, p in enumerate(problems)}
    n = pipe.cfg.generate.n
    conf, inputs = pipe.generate_conf()
    out, progress = rd.traces, rd.generate_progress
    fp = rd.fingerprint(conf, inputs)
    merged: dict[tuple[str, int], Trace] = {}
    try:
        same_run = json.loads(progress.read_text()).get("fingerprint") == fp
    except (OSError, ValueError):
        same_run = False
    if same_run:  # traces already here (an earlier merge, or generate run here) count as the earliest source
        merged.update(load_traces(out))
    for i, _, f in found:
        for t in read_records(f, Trace):
            if t.problem_id not in order or shard_of(t.problem_id, n_shards) != i:
                raise ValueError(f"{f}: trace for problem {t.problem_id!r}, which is not in shard {i} of "
                                 f"{n_shards} of this run's problems")
            key = (t.problem_id, t.sample)
            if _keep(merged.get(key), t):
                merged[key] = t
    ok = {k for k, t in merged.items() if t.finish_reason != "error"}
    needed = {shard_of(p.id, n_shards) for p in problems}  # with few problems a shard can be empty
    missing_shards = sorted(needed - {i for i, _, _ in found})
    incomplete = sorted({shard_of(p.id, n_shards) for p in problems for s in range(n) if (p.id, s) not in ok}
                        - set(missing_shards))
    result = {"traces": len(merged), "failed": len(merged) - len(ok), "shards": n_shards,
              "merged_files": [str(f) for _, _, f in found], "missing_shards": missing_shards,
              "incomplete_shards": incomplete, "complete": not missing_shards and not incomplete}

    def write(fp: str) -> dict[str, Any]:
        rd.restart_if_stale(out, progress, fp, log)
        write_records(out, sorted(merged.values(), key=lambda t: (order[t.problem_id], t.sample)))
        return result

    if result["complete"]:  # the generate stage is done: `generate`/`run` skip it, curate goes on
        rd.run_stage("generate", conf, inputs, [out], write, force=True, log=log)
    else:
        write(fp)
    log(f"       merged {len(found)} shard file(s) of {n_shards}: {len(merged)} traces in {out}"
        + (f", {result['failed']} failed" if result["failed"] else ""))
    if missing_shards:
        log(f"       missing shards: {', '.join(f'{i}/{n_shards}' for i in missing_shards)}")
    if incomplete:
        log(f"       shards with traces still to generate: {', '.join(f'{i}/{n_shards}' for i in incomplete)}")
    if not result["complete"]:
        log(f"       not complete: generate the rest (`reasondistill generate {rd.root} --shard I/{n_shards}`) "
            f"and merge again, or run `reasondistill generate {rd.root}` to fill it in here")
    return result


def main(argv: list[str] | None = None) -> int:
    """``reasondistill merge RUN [--from DIR ...]``: exit 0 when complete, 1 when shards are missing."""
    from reasondistill.config import load_run_config
    from reasondistill.errors import run_verb
    from reasondistill.pipeline import Pipeline

    from reasondistill.hints import HintingParser

    ap = HintingParser(prog="reasondistill merge", description="Merge the trace shards written by "
                       "'reasondistill generate RUN --shard I/N' (on this or other machines) into "
                       "generate/traces.jsonl; exit status 1 while shards are missing.")
    ap.add_argument("target", help="the run directory (or its config YAML)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. generate.n=4")
    ap.add_argument("--from", dest="sources", action="append", default=[], type=Path, metavar="DIR",
                    help="also take shards from DIR: another run directory or a directory of shard files "
                         "(repeatable); later sources win over earlier ones")
    ap.add_argument("--quiet", action="store_true", help="accepted for symmetry with the other verbs")
    args = ap.parse_args(argv)
    def body() -> int:
        pipe = Pipeline(load_run_config(args.target, args.overrides), show_progress=False)
        return 0 if merge(pipe, args.sources)["complete"] else 1
    return run_verb("merge", body)
