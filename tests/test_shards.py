"""Generation in shards (`generate --shard I/N`) and `merge`: the merged shards equal one unsharded run.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_shards.py -q
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from reasondistill.config import RunConfig
from reasondistill.pipeline import Pipeline
from reasondistill.records import Trace, read_records
from reasondistill.sharding import parse_shard, shard_files, shard_of
from reasondistill.shards import generate_shard, merge


def _pipe(tmp_path, name, teacher, log=None, **generate):
    cfg = {"run_dir": str(tmp_path / name), "seed": 0,
           "task": {"name": "chained_arith", "min_ops": 3, "max_ops": 4, "n_train": 30, "n_test": 5},
           "teacher": {"model": str(teacher)},
           "generate": {"n": 2, "temperature": 1.0, "max_new_tokens": 8, "batch_size": 6} | generate,
           "curate": {"require_correct": False, "require_think": False}}
    return Pipeline(RunConfig.model_validate(cfg), log=log or (lambda _m: None), show_progress=False)


def _texts(path):
    return {(t.problem_id, t.sample): t.text for t in read_records(path, Trace)}


def test_shards_partition_the_problems():
    ids = [f"chained_arith:train:{k}" for k in range(500)]
    for n in (1, 2, 3, 7):
        parts = [{i for i in ids if shard_of(i, n) == s} for s in range(n)]
        assert set().union(*parts) == set(ids) and sum(map(len, parts)) == len(ids)
        assert all(parts)  # none empty at this size: the hash spreads problems over all shards
    assert shard_of(ids[3], 4) == shard_of(ids[3], 4)
    assert parse_shard("1/4") == (1, 4) and parse_shard(" 0 / 1 ") == (0, 1)
    for bad in ("4/4", "1/0", "-1/2", "a/b", "1"):
        with pytest.raises(Exception, match="I/N|0 <= I < N"):
            parse_shard(bad)


def test_two_shards_merged_equal_one_unsharded_run(tmp_path, tiny_model_dir):
    full = _pipe(tmp_path, "full", tiny_model_dir)
    full.generate()
    reference = _texts(full.rd / "generate/traces.jsonl")
    assert len(reference) == 60

    # two "machines": their own run directories, one shard each
    a, b = _pipe(tmp_path, "a", tiny_model_dir), _pipe(tmp_path, "b", tiny_model_dir)
    generate_shard(a, 0, 2)
    generate_shard(b, 1, 2)
    shard0, shard1 = _texts(shard_files(a.rd.root, 0, 2)[0]), _texts(shard_files(b.rd.root, 1, 2)[0])
    assert shard0 and shard1 and not shard0.keys() & shard1.keys()
    assert shard0.keys() | shard1.keys() == reference.keys()

    # a shard resumes like the normal stage: cut mid-line, generate again, the same traces
    f0 = shard_files(a.rd.root, 0, 2)[0]
    lines = f0.read_text().splitlines(keepends=True)
    f0.write_text("".join(lines[:5]) + lines[5][:20])
    logs = []
    a.log = logs.append
    generate_shard(a, 0, 2)
    assert any("resuming: 5 traces" in m for m in logs)
    assert _texts(f0) == shard0 and len(f0.read_text().splitlines()) == len(shard0)

    # shard 1 not here yet: merge reports it and does not mark generate as done
    res = merge(a)
    assert not res["complete"] and res["missing_shards"] == [1] and res["traces"] == len(shard0)
    assert a.rd.stage_state("generate") is None

    res = merge(a, [b.rd.root])  # shards taken from the other machine's run directory
    assert res["complete"] and res["missing_shards"] == [] and res["failed"] == 0
    merged_path = a.rd / "generate/traces.jsonl"
    merged = read_records(merged_path, Trace)
    keys = [(t.problem_id, t.sample) for t in merged]
    assert len(keys) == len(set(keys)) == 60
    assert _texts(merged_path) == reference  # same problems, samples and texts as one unsharded run

    before = merged_path.read_bytes()
    assert merge(a, [b.rd.root])["traces"] == 60  # merging twice adds nothing
    assert merged_path.read_bytes() == before

    # the books: generate counts as done, curate runs as usual
    logs.clear()
    again = _pipe(tmp_path, "a", tiny_model_dir, log=logs.append)
    again.generate()
    assert "[skip] generate: inputs and config unchanged" in logs
    assert again.curate()["traces"] == 60


def test_merge_precedence_and_fingerprint_check(tmp_path, tiny_model_dir):
    a, b = _pipe(tmp_path, "a", tiny_model_dir), _pipe(tmp_path, "b", tiny_model_dir)
    generate_shard(a, 0, 2)
    generate_shard(b, 1, 2)
    f1 = shard_files(b.rd.root, 1, 2)[0]
    first, second = read_records(f1, Trace)[:2]

    # a later source: a failed retry of `first` (must not replace it) and a new text for `second` (wins)
    later = tmp_path / "later"
    later.mkdir()
    shutil.copy(f1.with_name("traces-1-of-2.meta.json"), later)
    failed = dict(first.__dict__, text="", thinking="", answer="", finish_reason="error", error="HTTP 503")
    redone = dict(second.__dict__, text="redone")
    (later / "traces-1-of-2.jsonl").write_text(json.dumps(failed) + "\n" + json.dumps(redone) + "\n")
    res = merge(a, [b.rd.root, later])
    assert res["complete"] and res["failed"] == 0
    got = _texts(a.rd / "generate/traces.jsonl")
    assert got[(first.problem_id, first.sample)] == first.text and got[(second.problem_id, second.sample)] == "redone"

    # a shard sampled at another temperature is refused, naming the file
    c = _pipe(tmp_path, "c", tiny_model_dir, temperature=0.5)
    generate_shard(c, 1, 2)
    before = (a.rd / "generate/traces.jsonl").read_bytes()
    with pytest.raises(ValueError, match=r"traces-1-of-2\.jsonl: generated with a different teacher/sampling config"):
        merge(a, [c.rd.root])
    assert (a.rd / "generate/traces.jsonl").read_bytes() == before
    with pytest.raises(FileNotFoundError, match="no shard files"):
        merge(_pipe(tmp_path, "empty", tiny_model_dir))


def test_cli_generate_shard_and_merge(tmp_path, tiny_model_dir):
    import yaml

    cfg = {"run_dir": str(tmp_path / "run"), "seed": 0,
           "task": {"name": "chained_arith", "min_ops": 3, "max_ops": 4, "n_train": 12, "n_test": 5},
           "teacher": {"model": str(tiny_model_dir)},
           "generate": {"n": 1, "temperature": 1.0, "max_new_tokens": 6, "batch_size": 12}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "reasondistill", *map(str, args)], capture_output=True,
                              text=True, env=env, timeout=300)

    bad = cli("generate", tmp_path / "c.yaml", "--shard", "2/2")
    assert bad.returncode == 2 and "0 <= I < N" in bad.stderr
    out = cli("generate", tmp_path / "c.yaml", "--shard", "1/2", "--quiet")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "run/generate/shards/traces-1-of-2.jsonl").exists()
    assert not (tmp_path / "run/generate/traces.jsonl").exists()
    out = cli("merge", tmp_path / "run")
    assert out.returncode == 1, out.stderr
    assert "missing shards: 0/2" in out.stdout
    # not complete: a plain `generate` here fills in the rest (it resumes from the merged traces)
    from reasondistill.config import load_config

    logs = []
    pipe = Pipeline(load_config(tmp_path / "run/config.yaml", [f"run_dir={tmp_path / 'run'}"]), log=logs.append,
                    show_progress=False)
    partial = len(read_records(tmp_path / "run/generate/traces.jsonl", Trace))
    assert 0 < partial < 12
    assert pipe.generate()["traces"] == 12
    assert any(f"resuming: {partial} traces" in m for m in logs)
