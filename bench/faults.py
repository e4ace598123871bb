"""Fault figures: what reasondistill loses, duplicates, leaks or hangs on when things go wrong, as
one JSON object (the CI subset of the same checks is ``tests/faults/``).

    python bench/faults.py                 # everything (about 15 minutes on 2 cores)
    python bench/faults.py --only api,malformed --kills 5

Sections (goals in brackets):
- ``generate_kills``: ``reasondistill generate`` SIGKILLed at N random moments and resumed, against an
  uninterrupted run: lost, duplicated and differing traces [0 / 0 / 0].
- ``train_kills``: ``reasondistill train`` SIGKILLed at 5 random steps and resumed: final weights
  against an uninterrupted run [bitwise equal on CPU fp32].
- ``api``: the API teacher against ``reasondistill serve`` on 127.0.0.1 failing ~30% of calls (429 with
  Retry-After, 500, 503, resets, answers slower than the timeout, truncated JSON, an HTML error page,
  no choices, no usage): every trace done or recorded with its reason, none duplicated, plain
  re-runs complete the failed ones; a refused API key stops at once [exit 2, one line].
- ``malformed``: the 89 inputs of ``tests/faults/malformed_inputs.py``, each in its own process with a
  time limit [89 clear errors naming the file, 0 tracebacks, 0 hangs, 0 silently accepted].
- ``two_writers``: two ``generate`` on one run directory [the second refused, 0 duplicated traces].
- ``pathological``: the answers of ``tests/faults/pathological_answers.py`` through ``reasondistill
  score`` (the verification pool every stage uses) [each within the time limit plus pool overhead].
- ``sandbox``: the programs of ``tests/faults/hostile_programs.py`` in the code sandbox, in both modes
  (namespaces; the rlimits fallback, which refuses to run code) [all contained, 0 counted as a pass,
  0 secrets read].
Exits 1 (with the reasons on stderr) when a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests/faults"))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}


def cli(*args, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reasondistill", *map(str, args), "--quiet"], capture_output=True,
                          text=True, env=env or ENV, timeout=timeout)


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "reasondistill", *map(str, args), "--quiet"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def config(folder: Path, **sections) -> Path:
    from malformed_inputs import tiny_config

    cfg = tiny_config(folder / "run")
    cfg["students"] = cfg["students"][:1]
    for key, value in sections.items():
        cfg[key] = cfg[key] | value if isinstance(value, dict) else value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def latest_traces(path: Path) -> tuple[dict, int]:
    """{(problem, sample): line} with the later line winning, and the number of lines."""
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return {(r["problem_id"], r["sample"]): r for r in lines}, len(lines)


# -- generate killed and resumed ----------------------------------------------------------------------
def generate_kills(work: Path, kills: int, rng: random.Random) -> dict:
    gen = {"n": 2, "max_new_tokens": 80, "batch_size": 32}
    ref_cfg = config(work / "ref", task={"n_train": 1200}, generate=gen)
    t0 = time.perf_counter()
    cli("generate", ref_cfg)
    took = time.perf_counter() - t0
    cfg = config(work / "killed", task={"n_train": 1200}, generate=gen)
    traces, grew = work / "killed/run/generate/traces.jsonl", 0
    for _ in range(kills):  # startup (imports, model) takes ~4 s: kill anywhere from before it to well after
        before = traces.stat().st_size if traces.exists() else 0
        proc = start("generate", cfg)
        time.sleep(rng.uniform(2.0, max(8.0, took / 4)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        grew += (traces.stat().st_size if traces.exists() else 0) > before  # killed while writing traces
    done = cli("generate", cfg)
    ref, _ = latest_traces(work / "ref/run/generate/traces.jsonl")
    got, lines = latest_traces(work / "killed/run/generate/traces.jsonl")
    result = {"kills": kills, "kills_after_traces_were_written": grew, "uninterrupted_s": round(took, 1),
              "traces": len(ref),
              "lost": len(ref.keys() - got.keys()), "duplicated": lines - len(got),
              "differing": sum(ref[k]["text"] != got[k]["text"] for k in ref.keys() & got.keys()),
              "final_exit": done.returncode}
    result["goal_met"] = result["lost"] == result["duplicated"] == result["differing"] == 0 and done.returncode == 0
    return result


# -- train killed and resumed -------------------------------------------------------------------------
def _last_step(metrics: Path) -> int:
    try:
        rows = [r for r in metrics.read_text().splitlines()[1:] if r.strip()]
        return int(rows[-1].split(",")[0]) if rows else 0
    except (OSError, ValueError):
        return 0


def train_kills(work: Path, kills: int, rng: random.Random) -> dict:
    from safetensors.torch import load_file

    train = {"max_steps": 60, "save_every": 5, "log_every": 1, "eval_every": 1000, "mixed_precision": "no",
             "batch_size": 4, "threads": 1}
    cfg = config(work / "ref", task={"n_train": 120})
    data = yaml.safe_load(cfg.read_text())
    data["students"][0]["train"] |= train
    cfg.write_text(yaml.safe_dump(data))
    for verb in ("generate", "curate", "build"):
        cli(verb, cfg)
    killed = work / "killed"
    shutil.copytree(work / "ref/run", killed)
    ref = cli("train", cfg)
    steps = sorted(rng.sample(range(2, 58), kills))
    metrics = killed / "train/hard/metrics.csv"
    for step in steps:
        proc = start("train", killed, "--student", "hard")
        while proc.poll() is None and _last_step(metrics) < step:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = cli("train", killed, "--student", "hard")
    a = load_file(work / "ref/run/train/hard/final/model.safetensors")
    b = load_file(killed / "train/hard/final/model.safetensors")
    bitwise = a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a) if a.keys() == b.keys() else None
    return {"killed_at_steps": steps, "steps": train["max_steps"], "bitwise_equal": bitwise, "max_abs_diff": diff,
            "exits": [ref.returncode, final.returncode], "goal_met": bitwise and final.returncode == 0}


# -- the API teacher against a flaky local server ------------------------------------------------------
FLAKY = "429=0.2%0.05,500%0.05,503%0.05,drop%0.05,slow=3%0.03,trunc%0.04,html%0.03,nochoices%0.03,nousage%0.03"


def _serve(model: str, failures: str, api_key: str | None = None):
    from reasondistill.serve import make_server

    srv = make_server(model, model_name="m", inject_failures=failures, api_key=api_key)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def api(work: Path) -> dict:
    srv = _serve("bundled:tiny-arith-teacher", FLAKY)
    try:
        teacher = {"kind": "openai", "base_url": srv.url, "model": "m", "concurrency": 4, "timeout_s": 2,
                   "max_retries": 1}
        cfg = config(work, task={"n_train": 150}, teacher=teacher, generate={"n": 2, "max_new_tokens": 80})
        first = cli("generate", cfg)
        traces = work / "run/generate/traces.jsonl"
        got, lines = latest_traces(traces)
        errors = [r for r in got.values() if r["finish_reason"] == "error"]
        reasons: dict[str, int] = {}
        for r in errors:
            reason = (r.get("error") or "?").split(" (")[0][:60]
            reasons[reason] = reasons.get(reason, 0) + 1
        reruns = 0
        while reruns < 6 and any(r["finish_reason"] == "error" for r in latest_traces(traces)[0].values()):
            cli("generate", cfg)
            reruns += 1
        final, final_lines = latest_traces(traces)
        ok_lines = [json.loads(x) for x in traces.read_text().splitlines() if x.strip()]
        ok_keys = [(r["problem_id"], r["sample"]) for r in ok_lines if r["finish_reason"] != "error"]
        injected = {k: v for k, v in srv.stats.items() if k.startswith("injected")}
        requests = srv.stats.get("chat_requests", 0)
    finally:
        srv.shutdown()
        srv.server_close()
    refused = _refused_key(work)
    result = {"failure_spec": FLAKY, "traces": len(final), "first_run": {"exit": first.returncode,
              "recorded_errors": len(errors), "reasons": reasons, "unaccounted": 300 - len(got)},
              "reruns_to_complete": reruns, "errors_left": sum(r["finish_reason"] == "error" for r in final.values()),
              "successes_duplicated": len(ok_keys) - len(set(ok_keys)), "requests": requests,
              "injected": injected, "injected_share": round(sum(injected.values()) / max(1, requests), 3),
              "refused_key": refused}
    result["goal_met"] = (first.returncode == 0 and result["first_run"]["unaccounted"] == 0
                          and result["errors_left"] == 0 and result["successes_duplicated"] == 0
                          and refused["exit"] == 2 and refused["seconds"] < 10 and refused["lines"] == 1)
    return result


def _refused_key(work: Path) -> dict:
    srv = _serve("bundled:tiny-arith-teacher", "", api_key="the-right-key")
    try:
        teacher = {"kind": "openai", "base_url": srv.url, "model": "m", "api_key_env": "RD_BENCH_KEY"}
        cfg = config(work / "refused", teacher=teacher)
        t0 = time.perf_counter()
        out = cli("generate", cfg, env={**ENV, "RD_BENCH_KEY": "a-wrong-key"})
        seconds = time.perf_counter() - t0
    finally:
        srv.shutdown()
        srv.server_close()
    return {"exit": out.returncode, "seconds": round(seconds, 1), "lines": len(out.stderr.strip().splitlines()),
            "message": out.stderr.strip()[:300]}


# -- malformed inputs -----------------------------------------------------------------------------------
def malformed(work: Path, limit: float = 120) -> dict:
    from malformed_inputs import CASES, cleanup, judge, make_base_run

    base = make_base_run(work)
    counts: dict[str, int] = {}
    failures = {}
    for i, case in enumerate(CASES):
        tmp = work / f"case-{i}"
        tmp.mkdir()
        run = None
        if case.needs_run:
            run = tmp / "run"
            shutil.copytree(base, run)
        try:
            argv, expected = case.make(tmp, run)
            extra = [] if argv[0] in ("ingest", "score") else ["--quiet"]
            try:
                out = subprocess.run([sys.executable, "-m", "reasondistill", *argv, *extra], capture_output=True,
                                     text=True, env=ENV, timeout=limit, cwd=tmp)
                verdict = judge(out.returncode, out.stderr, expected)
            except subprocess.TimeoutExpired:
                verdict, out = "hang", None
        except (subprocess.CalledProcessError, FileNotFoundError) as exc:
            verdict, out = "not set up", None
            failures[case.name] = str(exc)
        finally:
            cleanup(run)
        counts[verdict] = counts.get(verdict, 0) + 1
        if verdict != "clear" and out is not None:
            failures[case.name] = f"{verdict}: exit {out.returncode}: {out.stderr.strip()[-300:]}"
    return {"cases": len(CASES), **counts, "not_clear": failures,
            "goal_met": counts.get("clear", 0) == len(CASES)}


# -- two writers -----------------------------------------------------------------------------------------
def two_writers(work: Path) -> dict:
    cfg = config(work, task={"n_train": 200}, generate={"n": 2, "max_new_tokens": 80})
    first = start("generate", cfg)
    time.sleep(0.3)
    while first.poll() is None and not (work / "run/.stages/writer.lock").exists():
        time.sleep(0.05)
    time.sleep(1.0)  # the first holds the lock from its first stage on
    second = cli("generate", cfg)
    first_err = first.communicate()[1]
    got, lines = latest_traces(work / "run/generate/traces.jsonl")
    result = {"second_exit": second.returncode, "second_message": second.stderr.strip()[:200],
              "first_exit": first.returncode, "traces": len(got), "duplicated": lines - len(got),
              "first_stderr": first_err.strip()[-200:]}
    result["goal_met"] = second.returncode == 2 and first.returncode == 0 and result["duplicated"] == 0
    return result


# -- pathological answers -----------------------------------------------------------------------------------
def pathological(work: Path, timeout: float = 5.0) -> dict:
    from pathological_answers import ANSWERS, GOLD

    rows = work / "answers.jsonl"
    rows.write_text("".join(json.dumps({"gold": GOLD, "pred": a, "name": n}) + "\n" for n, a in ANSWERS))
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "reasondistill", "score", str(rows), "--gold", "gold", "--pred",
                          "pred", "--timeout", str(timeout), "--no-progress"], capture_output=True, text=True,
                         env=ENV, timeout=60 + len(ANSWERS) * (timeout + 2))
    seconds = time.perf_counter() - t0
    summary = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {}
    budget = len(ANSWERS) * (timeout + 1.0) + 10  # the time limit per answer plus worker restarts
    return {"answers": len(ANSWERS), "timeout_s": timeout, "exit": out.returncode, "seconds": round(seconds, 1),
            "budget_s": budget, "summary": {k: v for k, v in summary.items() if not isinstance(v, list)},
            "stderr": out.stderr.strip()[-300:] if out.returncode else "",
            "goal_met": out.returncode == 0 and seconds <= budget and not summary.get("correct")}


# -- hostile programs in the code sandbox ----------------------------------------------------------------
def sandbox(work: Path) -> dict:
    """Runs the hostile-program suite (its checks: nothing outside changed, no process killed or
    signalled, no connection made, no secret in the output, not a pass) and counts its results."""
    import xml.etree.ElementTree as ET

    from hostile_programs import PROGRAMS

    report = work / "junit.xml"
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "hostile_program",
                          f"--junitxml={report}", str(REPO / "tests/faults/test_sandbox_hostile.py")],
                         capture_output=True, text=True, env=ENV, cwd=REPO, timeout=1800)
    cases = ET.parse(report).getroot().iter("testcase")
    by_mode: dict[str, dict[str, int]] = {}
    failed = []
    for case in cases:
        mode = next((m for m in ("namespaces", "rlimits") if m in case.get("name")), None)
        if mode is None:  # not one of the parametrized programs
            continue
        outcome = "skipped" if case.find("skipped") is not None else \
            "escaped" if case.find("failure") is not None or case.find("error") is not None else "contained"
        by_mode.setdefault(mode, {}).setdefault(outcome, 0)
        by_mode[mode][outcome] += 1
        if outcome == "escaped":
            failed.append(case.get("name"))
    result = {"programs": len(PROGRAMS), "modes": by_mode, "escaped": failed, "pytest_exit": out.returncode,
              "note": "rlimits mode (hosts without user namespaces) refuses to run code: contained by refusal"}
    result["goal_met"] = not failed and out.returncode == 0 and by_mode.get("namespaces", {}).get("contained") == \
        len(PROGRAMS)
    return result


SECTIONS = {"generate_kills": None, "train_kills": None, "api": None, "malformed": None, "two_writers": None,
            "pathological": None, "sandbox": None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated sections (default: all): " + ", ".join(SECTIONS))
    ap.add_argument("--kills", type=int, default=20, help="generate kills (default 20)")
    ap.add_argument("--train-kills", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    wanted = args.only.split(",") if args.only else list(SECTIONS)
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections: {sorted(unknown)}")
    rng = random.Random(args.seed)
    out: dict = {"bench": "faults", "seed": args.seed}
    with tempfile.TemporaryDirectory(prefix="rd-faults-") as tmp:
        for name in wanted:
            work = Path(tmp) / name
            work.mkdir()
            t0 = time.perf_counter()
            if name == "generate_kills":
                out[name] = generate_kills(work, args.kills, rng)
            elif name == "train_kills":
                out[name] = train_kills(work, args.train_kills, rng)
            else:
                out[name] = globals()[name](work)
            out[name]["section_s"] = round(time.perf_counter() - t0, 1)
            print(f"[faults] {name}: goal {'met' if out[name]['goal_met'] else 'MISSED'}", file=sys.stderr)
    print(json.dumps(out, indent=1))
    missed = [n for n in wanted if not out[n]["goal_met"]]
    if missed:
        print(f"faults: goals missed in {missed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
