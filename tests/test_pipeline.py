"""The pipeline through the CLI, as a user runs it: resume after a kill, skipping, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from reasondistill.records import Trace, read_records


def write_config(path, teacher, replace_task=False, **sections):
    cfg = {
        "run_dir": str(path.parent / "run"), "seed": 0,
        "task": {"name": "chained_arith", "min_ops": 3, "max_ops": 4, "n_train": 40, "n_test": 10},
        "teacher": {"model": str(teacher)},
        "generate": {"n": 2, "temperature": 1.0, "max_new_tokens": 8, "batch_size": 8},
        "curate": {"require_correct": False, "require_think": False},
        "build": {"max_length": 128, "val_fraction": 0.1},
        "students": [{"name": "s1", "init": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                              "intermediate_size": 32},
                      "train": {"max_steps": 3, "epochs": None, "batch_size": 8, "save_every": 2, "log_every": 1}}],
        "evaluate": {"batch_size": 10, "max_new_tokens": 8},
    }
    for k, v in sections.items():
        cfg[k] = cfg[k] | v if isinstance(v, dict) and not (k == "task" and replace_task) else v
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli(*args, check=True, timeout=600):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "reasondistill", *map(str, args), "--quiet"], capture_output=True,
                         text=True, env=env, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"exit {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out


def test_generate_resumes_after_kill_with_the_same_traces(tmp_path, tiny_model_dir):
    gen = {"batch_size": 4}
    task = {"n_train": 120}
    full = write_config(tmp_path / "full/c.yaml" if (tmp_path / "full").mkdir() is None else None, tiny_model_dir,
                        generate=gen, task=task)
    cli("generate", full)
    reference = {(t.problem_id, t.sample): t.text for t in read_records(tmp_path / "full/run/generate/traces.jsonl", Trace)}
    assert len(reference) == 240

    (tmp_path / "killed").mkdir()
    cfg = write_config(tmp_path / "killed/c.yaml", tiny_model_dir, generate=gen, task=task)
    traces = tmp_path / "killed/run/generate/traces.jsonl"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "reasondistill", "generate", str(cfg), "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not traces.exists() or traces.read_text().count("\n") < 60):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = traces.read_text().count("\n")
    assert 60 <= partial < 240, "the kill must land mid-generation"
    with traces.open("a") as fh:
        fh.write('{"problem_id": "chained_arith:')  # a torn line, as if killed mid-write
    out = cli("generate", cfg)
    assert "resuming" in out.stdout
    got = read_records(traces, Trace)
    keys = [(t.problem_id, t.sample) for t in got]
    assert len(keys) == len(set(keys)) == 240  # nothing lost, nothing duplicated
    assert {k: t.text for k, t in zip(keys, got)} == reference  # and the same traces


def test_more_problems_keep_the_traces_of_the_ones_already_sampled(tmp_path, tiny_model_dir):
    """Only the problems changed (not the teacher or sampling): the unchanged problems' traces are kept,
    only the new ones are sampled; a changed setting still sets every trace aside."""
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, task={"n_train": 6})
    cli("generate", cfg)
    traces = tmp_path / "run/generate/traces.jsonl"
    before = traces.read_text().splitlines()
    assert len(before) == 12
    out = cli("generate", tmp_path / "run", "task.n_train=9")
    assert "the problems changed (3 new, 0 removed or edited), not the settings: kept 12 lines" in out.stdout
    assert "resuming: 12 traces already written, 3 problems to go" in out.stdout
    after = traces.read_text().splitlines()
    assert after[:12] == before and len(after) == 18  # byte for byte, then the new problems' traces
    assert (tmp_path / "run/generate/traces.jsonl.stale-1").read_text().splitlines() == before
    fewer = cli("generate", tmp_path / "run", "task.n_train=4")
    assert "(0 new, 5 removed or edited), not the settings: kept 8 lines" in fewer.stdout
    assert traces.read_text().splitlines() == before[:8]
    hotter = cli("generate", tmp_path / "run", "generate.temperature=0.5")
    assert "config changed: kept the previous output" in hotter.stdout and "resuming" not in hotter.stdout


def test_a_prompt_past_the_teachers_context_is_recorded_once_with_its_reason(tmp_path, tiny_model_dir):
    """Not an error trace retried (and failing) on every `generate`: truncated at 0 tokens, the reason
    kept in the trace, the curation verdict and the evaluation's completions."""
    rows = [{"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"} for i in range(1, 9)]
    rows[2]["question"] = "Add these: " + " + ".join(["1"] * 200) + "?"  # ~400 characters: past 256 tokens
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {"name": "gsm8k", "train_path": str(tmp_path / "train.jsonl"), "test_path": str(tmp_path / "test.jsonl")}
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, task=task, replace_task=True)
    first = cli("generate", cfg)
    assert "2 traces could not be sampled and are recorded as truncated at 0 tokens" in first.stdout
    assert "the model's context is" in first.stdout
    assert "[skip] generate" in cli("generate", cfg).stdout  # nothing to retry: the stage is current
    cli("curate", cfg)
    verdicts = [json.loads(x) for x in (tmp_path / "run/curate/verdicts.jsonl").read_text().splitlines()]
    unfit = [v for v in verdicts if v["problem_id"].endswith(":2") or "context" in (v.get("reason") or "")]
    assert len(unfit) == 2 and all(v["verdict"] == "truncated" and "context is" in v["reason"] for v in unfit)
    cli("evaluate", cfg, "--model", "teacher")
    done = [json.loads(x) for x in (tmp_path / "run/evaluate/teacher/completions.jsonl").read_text().splitlines()]
    cut = [d for d in done if d["prompt_tokens"] >= 256]
    assert len(cut) == 1 and cut[0]["verdict"] == "truncated" and "context is" in cut[0]["reason"]


def test_stages_skip_when_unchanged_and_rerun_downstream(tmp_path, tiny_model_dir):
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir)
    first = cli("run", cfg)
    report = json.loads((tmp_path / "run/report.json").read_text())
    assert set(report["models"]) == {"teacher", "s1"}
    manifest = json.loads((tmp_path / "run/manifest.json").read_text())
    assert manifest["environment"]["libraries"]["torch"] and "seeds" in manifest
    assert set(manifest["stages"]) >= {"problems", "generate", "curate", "build:s1", "train:s1", "evaluate:s1"}
    assert all(v["outputs"] for v in manifest["stages"].values())
    assert "[run ] train:s1" in first.stdout

    again = cli("run", cfg)
    for stage in ("generate", "curate", "build:s1", "train:s1", "evaluate:teacher", "evaluate:s1"):
        assert f"[skip] {stage}" in again.stdout

    changed = cli("run", tmp_path / "run", "curate.max_per_problem=2")  # a run directory works as target
    assert "[skip] generate" in changed.stdout and "[skip] evaluate:teacher" in changed.stdout
    for stage in ("curate", "build:s1", "train:s1", "evaluate:s1"):
        assert f"[run ] {stage}" in changed.stdout
    assert list((tmp_path / "run/train").glob("s1.stale-*"))  # the old training run was kept aside

    alone = cli("curate", tmp_path / "run")
    assert "[skip] curate" in alone.stdout


def test_bad_config_names_the_field_before_any_work(tmp_path, tiny_model_dir):
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir)
    out = cli("run", cfg, "students.0.train.lr=-3", check=False)
    assert out.returncode == 2
    assert "students.0.train.lr" in out.stderr and "greater than 0" in out.stderr
    assert not (tmp_path / "run/generate").exists()


def test_malformed_trace_line_is_reported_and_nothing_is_lost(tmp_path, tiny_model_dir):
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir)
    cli("generate", cfg)
    traces = tmp_path / "run/generate/traces.jsonl"
    lines = traces.read_text().splitlines()
    lines[4] = lines[4].replace('"sample": ', '"sample": "one", "x": ')
    traces.write_text("\n".join(lines) + "\n")
    before = traces.read_bytes()
    out = cli("curate", cfg, check=False)
    assert out.returncode == 2
    assert f"{traces}:5: field 'sample' should be int" in out.stderr
    assert traces.read_bytes() == before
    missing = cli("train", tmp_path / "run", check=False)
    assert missing.returncode == 2 and "run `reasondistill build" in missing.stderr


def test_generate_with_an_api_teacher_served_locally(tmp_path, tiny_model_dir):
    """`teacher.kind: openai` against our own OpenAI-compatible server on 127.0.0.1."""
    import threading

    from reasondistill.serve import make_server

    srv = make_server(str(tiny_model_dir), port=0, model_name="tiny", inject_failures="500@2,429=0.05@3")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        cfg = write_config(tmp_path / "c.yaml", "tiny", task={"n_train": 6})
        api = {"kind": "openai", "base_url": srv.url, "model": "tiny", "concurrency": 2}
        cfg.write_text(cfg.read_text().replace("teacher:\n  model: tiny\n", "teacher: " + json.dumps(api) + "\n"))
        assert yaml.safe_load(cfg.read_text())["teacher"]["kind"] == "openai"
        out = cli("generate", cfg)
        traces = read_records(tmp_path / "run/generate/traces.jsonl", Trace)
        assert sorted((t.problem_id, t.sample) for t in traces) == sorted(
            {(t.problem_id, s) for t in traces for s in range(2)})
        assert len(traces) == 12 and all(t.finish_reason in ("stop", "length") for t in traces)
        assert all(t.usage.get("completion_tokens") for t in traces)
        assert "[run ] generate" in out.stdout
        assert cli("generate", cfg).stdout.count("[skip] generate") == 1
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("most", [0.05, 0.5])
def test_a_plain_rerun_retries_traces_that_failed_at_the_teacher(most, tmp_path, tiny_model_dir):
    """Failed API traces are recorded with their error; `generate` again (no --force) retries
    exactly those, and only a run with no failures left is skipped as unchanged. 2 of 12 failed:
    above generate.max_failed_share the stage fails (exit 2, every trace kept), below it it goes on."""
    import threading

    from reasondistill.serve import make_server

    srv = make_server(str(tiny_model_dir), port=0, model_name="tiny", inject_failures="400@1-2")
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        cfg = write_config(tmp_path / "c.yaml", "tiny", task={"n_train": 6}, generate={"max_failed_share": most})
        api = {"kind": "openai", "base_url": srv.url, "model": "tiny", "concurrency": 1}
        cfg.write_text(cfg.read_text().replace("teacher:\n  model: tiny\n", "teacher: " + json.dumps(api) + "\n"))
        first = cli("generate", cfg, check=False)
        if most < 2 / 12:
            assert first.returncode == 2, first.stdout + first.stderr
            assert "2 of 12 traces (17%) failed at the teacher, more than generate.max_failed_share (0.05)" \
                in first.stderr and "HTTP 400" in first.stderr
        else:
            assert first.returncode == 0 and "2 traces failed at the teacher" in first.stdout
        traces = tmp_path / "run/generate/traces.jsonl"
        assert sum(t.finish_reason == "error" for t in read_records(traces, Trace)) == 2
        again = cli("generate", cfg)
        assert "[run ] generate" in again.stdout
        assert ("retrying the traces that failed" in again.stdout) == (most > 2 / 12)  # a failed stage just reruns
        latest = {(t.problem_id, t.sample): t for t in read_records(traces, Trace)}  # the newer line wins
        assert len(latest) == 12 and all(t.finish_reason != "error" for t in latest.values())
        assert "[skip] generate" in cli("generate", cfg).stdout
    finally:
        srv.shutdown()
        srv.server_close()


def _served(tiny_model_dir, **kw):
    """A `reasondistill serve` server of the tiny model on 127.0.0.1 (port 0), serving in a thread."""
    import threading

    from reasondistill.serve import make_server

    srv = make_server(str(tiny_model_dir), port=0, model_name="tiny", **kw)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _api_config(tmp_path, **teacher):
    cfg = write_config(tmp_path / "c.yaml", "tiny", task={"n_train": 6})
    api = {"kind": "openai", "model": "tiny", "concurrency": 1, "max_retries": 1, "backoff_base_s": 0.01} | teacher
    cfg.write_text(cfg.read_text().replace("teacher:\n  model: tiny\n", "teacher: " + json.dumps(api) + "\n"))
    return cfg


def test_a_resumed_generate_keeps_its_traces_when_only_the_connection_changes(tmp_path, tiny_model_dir,
                                                                               monkeypatch):
    """base_url, api_key_env, concurrency, timeout_s, max_retries decide how traces are fetched, not
    what they are: changing them resumes generation (a paid API is not paid twice)."""
    first, moved = _served(tiny_model_dir), _served(tiny_model_dir)
    try:
        cfg = _api_config(tmp_path, base_url=first.url)
        cli("generate", cfg)
        traces = tmp_path / "run/generate/traces.jsonl"
        lines = traces.read_text().splitlines(keepends=True)
        assert len(lines) == 12
        traces.write_text("".join(lines[:5]))  # as if stopped after 5 traces
        monkeypatch.setenv("RD_TEST_ANY_KEY", "k")  # the server has no key: any is accepted
        out = cli("generate", tmp_path / "run", f"teacher.base_url={moved.url}", "teacher.concurrency=3",
                  "teacher.timeout_s=20", "teacher.max_retries=2", "teacher.api_key_env=RD_TEST_ANY_KEY",
                  "teacher.backoff_max_s=5", "teacher.max_consecutive_failures=10")
        assert "config changed" not in out.stdout and not list(traces.parent.glob("*.stale-*"))
        assert "resuming: 5 traces already written" in out.stdout
        assert traces.read_text().startswith("".join(lines[:5]))  # kept, not regenerated
        assert len(read_records(traces, Trace)) == 12 and 0 < moved.stats["chat_requests"] < 12
        # the prompt, model or sampling is part of what a trace is: changing it starts over
        changed = cli("generate", tmp_path / "run", f"teacher.base_url={moved.url}", "teacher.system_prompt=Be brief.")
        assert "config changed" in changed.stdout
    finally:
        for srv in (first, moved):
            srv.shutdown()
            srv.server_close()


def test_a_wrong_model_name_stops_generate_at_once(tmp_path, tiny_model_dir):
    """An answer that cannot succeed on a retry (404: no such model or URL) stops the stage with exit
    code 2 after one request, instead of recording an error trace per problem."""
    srv = _served(tiny_model_dir)
    try:
        out = cli("generate", _api_config(tmp_path, base_url=srv.url, model="no-such-model"), check=False)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "HTTP 404" in out.stderr and "no-such-model" in out.stderr and srv.url in out.stderr
        assert srv.stats["chat_requests"] <= 2  # the one that failed, and one already sent beside it
        traces = tmp_path / "run/generate/traces.jsonl"
        assert not traces.exists() or not read_records(traces, Trace)
    finally:
        srv.shutdown()
        srv.server_close()


def test_generate_fails_when_every_trace_of_the_run_failed(tmp_path, tiny_model_dir):
    """Fewer problems than max_consecutive_failures, each refused (400, per problem): the stage fails
    with exit code 2 and a clear message, keeping the error traces (a re-run retries them)."""
    srv = _served(tiny_model_dir, inject_failures="400")
    try:
        out = cli("generate", _api_config(tmp_path, base_url=srv.url), check=False)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "all 12 traces of this run failed at the teacher" in out.stderr and "HTTP 400" in out.stderr
        traces = read_records(tmp_path / "run/generate/traces.jsonl", Trace)
        assert len(traces) == 12 and all(t.finish_reason == "error" for t in traces)
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_training_run_that_continues_from_a_checkpoint_says_so(tmp_path, tiny_model_dir):
    """SFT and policy students alike: a re-run that resumes prints which checkpoint it took."""
    from reasondistill.config import load_config
    from reasondistill.pipeline import Pipeline

    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, task={"n_train": 8}, students=[
        {"name": "s1", "init": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                "intermediate_size": 32},
         "train": {"max_steps": 3, "epochs": None, "batch_size": 8, "save_every": 2}},
        {"name": "g", "policy": {"objective": "grpo", "start_from": "s1", "steps": 2, "prompts_per_step": 2,
                                 "group_size": 2, "max_new_tokens": 8, "save_every": 1}}])
    lines: list[str] = []
    pipe = Pipeline(load_config(cfg), log=lines.append, show_progress=False)
    for stage in (pipe.generate, pipe.curate, pipe.build, pipe.train):
        stage()
    assert not [x for x in lines if "resuming from" in x]
    pipe.train(force=True)
    said = [x.strip() for x in lines if "resuming from" in x]
    assert [x.split(" (")[0] for x in said] == ["s1: resuming from step-3", "g: resuming from step-2"], lines


def test_generate_stops_at_once_when_the_server_cannot_be_reached(tmp_path):
    """A dead port: one GET /models before any request, exit 2 naming teacher.base_url and the URL,
    no trace written (not every request's retries, then a file of error traces)."""
    import socket

    with socket.socket() as s:  # a port on 127.0.0.1 that nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    out = cli("generate", _api_config(tmp_path, base_url=url, max_retries=6, backoff_base_s=2.0), check=False,
              timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"teacher.base_url: cannot reach {url}/models" in out.stderr and "Nothing was sent" in out.stderr
    assert "6 problems are still to do" in out.stderr
    traces = tmp_path / "run/generate/traces.jsonl"
    assert not traces.exists() or not read_records(traces, Trace)


def test_batch_size_does_not_restart_generate(tmp_path, tiny_model_dir):
    """Traces do not depend on how problems are batched: a lower generate.batch_size (after running out
    of memory) keeps every trace; a run whose progress file holds the fingerprint made with batch_size
    in it (before it left) resumes too."""
    from reasondistill.config import load_config
    from reasondistill.pipeline import Pipeline

    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, task={"n_train": 6})
    cli("generate", cfg)
    traces = tmp_path / "run/generate/traces.jsonl"
    before = traces.read_text()
    assert "[skip] generate" in cli("generate", tmp_path / "run", "generate.batch_size=3").stdout
    pipe = Pipeline(load_config(tmp_path / "run/config.yaml"), log=lambda _m: None, show_progress=False)
    conf, inputs = pipe.generate_conf()
    assert "batch_size" not in conf["sampling"]
    old = pipe.rd.fingerprint(conf | {"sampling": pipe.cfg.generate.sampling()}, inputs)  # batch_size in it
    (tmp_path / "run/generate/progress.json").write_text(json.dumps({"fingerprint": old}))
    assert pipe.generate(force=True)["written_now"] == 0
    assert traces.read_text() == before and not list(traces.parent.glob("*.stale-*"))


def test_max_failed_share_is_not_in_the_generate_fingerprint():
    """How many failures a run accepts does not decide a trace: traces generated before the key
    existed stay current, and changing it does not restart the stage."""
    from reasondistill.config import GenerateConfig
    from reasondistill.rundir import jsonable

    a, b = GenerateConfig(max_failed_share=0.05), GenerateConfig(max_failed_share=1.0)
    assert jsonable(a.sampling()) == jsonable(b.sampling()) == {
        "n": 2, "temperature": 0.7, "top_p": 1.0, "max_new_tokens": 256, "batch_size": 256, "seed": 0}


def test_the_teacher_fingerprint_has_what_decides_a_trace_and_nothing_else(tmp_path):
    """Transport keys (where the server is, its key, requests in flight, time-outs, retries) are
    not fingerprinted; the model, prompt and sampling settings are. Runs started before resume:
    their fingerprint (frozen here) is accepted, and an hf section fingerprints exactly as before."""
    from reasondistill.config import TeacherConfig
    from reasondistill.rundir import RunDir

    api = TeacherConfig(kind="openai", base_url="http://127.0.0.1:1/v1", model="m", concurrency=4)
    moved = api.model_copy(update={"base_url": "http://10.0.0.2:8000/v1", "api_key_env": "K", "concurrency": 64,
                                   "timeout_s": 5.0, "max_retries": 0, "backoff_base_s": 1.0, "backoff_max_s": 2.0,
                                   "max_consecutive_failures": None})
    assert api.fingerprinted() == moved.fingerprinted()
    for key, value in (("model", "n"), ("system_prompt", "x"), ("extra_body", {"top_k": 5}), ("reasoning", "tags"),
                       ("use_n", True), ("max_tokens_field", "max_completion_tokens"), ("name", "t")):
        assert api.model_copy(update={key: value}).fingerprinted() != api.fingerprinted(), key
    assert api.fingerprinted(legacy=True) == {  # as the generate stage fingerprinted it before
        "kind": "openai", "model": "m", "dtype": "float32", "system_prompt": None, "base_url": "http://127.0.0.1:1/v1",
        "api_key_env": None, "concurrency": 4, "timeout_s": 60.0, "max_retries": 6, "reasoning": "auto", "use_n": False}
    assert TeacherConfig().fingerprinted() == TeacherConfig().fingerprinted(legacy=True)
    rd = RunDir(tmp_path / "run")
    out, progress = tmp_path / "traces.jsonl", tmp_path / "progress.json"
    out.write_text("{}\n")
    progress.write_text(json.dumps({"fingerprint": "old"}))
    rd.restart_if_stale(out, progress, "new", lambda _m: None, also=("old",))
    assert out.exists() and json.loads(progress.read_text()) == {"fingerprint": "new"}
    rd.restart_if_stale(out, progress, "newer", lambda _m: None, also=("old",))
    assert not out.exists() and (tmp_path / "traces.jsonl.stale-1").exists()


def test_fields_added_later_keep_old_fingerprints():
    """A student config fingerprints without fields that were added later while they sit at their
    defaults (so upgrading does not retrain old runs), and with them once set."""
    from reasondistill.config import StudentConfig
    from reasondistill.pipeline import _fingerprinted

    s = StudentConfig(name="s", init={"hidden_size": 32})
    conf = _fingerprinted(s)
    assert "distill" not in conf and "attn_implementation" not in conf
    assert "packing" not in conf["train"] and "pack_tokens" not in conf["train"] and "lr" in conf["train"]
    packed = _fingerprinted(StudentConfig(name="s", init={"hidden_size": 32}, attn_implementation="eager",
                                          train={"packing": True, "pack_tokens": 512}))
    assert packed["attn_implementation"] == "eager"
    assert packed["train"]["packing"] is True and packed["train"]["pack_tokens"] == 512


def test_the_report_leaves_out_an_evaluation_made_under_another_config(tmp_path, tiny_model_dir):
    """Re-evaluating part of a run under a new evaluate config must not put the other models' old
    numbers beside the fresh ones: they are left out, with the reason, until they are re-evaluated."""
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir)
    cli("run", cfg)
    run = tmp_path / "run"
    cli("evaluate", run, "evaluate.max_new_tokens=6", "--model", "teacher")  # the override sticks to the run
    cli("report", run)
    report = json.loads((run / "report.json").read_text())
    assert "teacher" in report["models"] and "s1" not in report["models"]
    assert "stale" in report["skipped"]["evaluate:s1"] and "--model s1" in report["skipped"]["evaluate:s1"]
    assert "evaluate:s1" in (run / "report.md").read_text()
    cli("evaluate", run, "--model", "s1")
    cli("report", run)
    report = json.loads((run / "report.json").read_text())
    assert {"teacher", "s1"} <= set(report["models"]) and "evaluate:s1" not in report["skipped"]
