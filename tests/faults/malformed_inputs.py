"""A catalogue of malformed inputs a user can hand ``reasondistill``: configs, overrides, problem
files in each format and encoding, ingest files, score inputs, and a run directory damaged in the
ways disks, copies and crashes damage them. Each case must end in one clear error: exit code 2,
no traceback, and a message that names the file (or the field) at fault.

Used by ``tests/faults/test_malformed_inputs.py`` (every case, in process) and ``bench/faults.py``
(every case in a subprocess with a time limit, counted). A case is a function of a scratch folder
and, for the run-directory cases, a copy of a finished tiny run; it writes what it needs and
returns the command line and the text the error must contain.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "src/reasondistill/configs/demo.yaml"


def tiny_config(run_dir: Path) -> dict:
    """A run of seconds: the bundled teacher, 12 problems, one hard and one offline-top-k student."""
    student = {"init": {"architecture": "llama", "hidden_size": 16, "num_hidden_layers": 1,
                        "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 256},
               "train": {"max_steps": 3, "epochs": None, "batch_size": 4, "save_every": 2, "log_every": 1,
                         "eval_every": 2, "threads": 1}}
    return {"run_dir": str(run_dir), "seed": 0,
            "task": {"name": "chained_arith", "min_ops": 3, "max_ops": 4, "n_train": 12, "n_test": 4},
            "teacher": {"model": "bundled:tiny-arith-teacher"},
            "generate": {"n": 1, "temperature": 0.7, "max_new_tokens": 80, "batch_size": 16},
            "curate": {"require_correct": True, "require_think": True},
            "build": {"max_length": 160, "val_fraction": 0.2},
            "students": [{"name": "hard", **student},
                         {"name": "soft", **student, "distill": {"source": "offline_topk", "top_k": 4}}],
            "evaluate": {"batch_size": 8, "max_new_tokens": 80, "teacher": False}}


def make_base_run(folder: Path) -> Path:
    """Generate, curate, build, capture and train the tiny run once (about 20 s); cases copy it."""
    run = folder / "base"
    cfg = folder / "base.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(run)))
    for verb in ("generate", "curate", "build", "capture", "train"):
        out = subprocess.run([sys.executable, "-c",
                              "import sys; from reasondistill.cli import main; sys.exit(main(sys.argv[1:]))",
                              verb, str(cfg), "--quiet"], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"base run: {verb} failed:\n{out.stderr[-2000:]}")
    return run


@dataclass
class Case:
    name: str
    make: Callable[[Path, Path | None], tuple[list[str], str]]  # (scratch, run copy) -> (argv, expected)
    needs_run: bool = False


CASES: list[Case] = []


def case(name: str, needs_run: bool = False):
    def register(fn):
        CASES.append(Case(name, fn, needs_run))
        return fn
    return register


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return path


def _config(tmp: Path, name: str, edit: Callable[[dict], None] | None = None, raw: str | bytes | None = None):
    """A config file: ``raw`` as given, or the tiny config after ``edit``."""
    if raw is not None:
        return _write(tmp / name, raw)
    cfg = tiny_config(tmp / "run")
    if edit:
        edit(cfg)
    return _write(tmp / name, yaml.safe_dump(cfg))


# -- config files ---------------------------------------------------------------------------------
BOMB = "a: &a [1, 2]\n" + "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefg", "bcdefgh"))
RAW_CONFIGS = {
    "list.yaml": "- a\n- b\n",
    "scalar.yaml": "hello\n",
    "alias-bomb.yaml": BOMB,
    "alias-loop.yaml": "a: &a [*a]\n",
    "duplicate-keys.yaml": "seed: 1\nseed: 2\n",
    "latin1.yaml": b"seed: 1\n# caf\xe9\n",
    "binary.yaml": bytes(range(256)) * 4,
    "tabs.yaml": "task:\n\tname: chained_arith\n",
    "unclosed.yaml": "task: {name: chained_arith\n",
}
for _name, _raw in RAW_CONFIGS.items():
    case(f"config:{_name}")(lambda tmp, run, n=_name, r=_raw: (["generate", str(_config(tmp, n, raw=r))], n))

EDITS: dict[str, tuple[Callable[[dict], None], str]] = {
    "unknown-section": (lambda c: c.update(teacherr={"model": "x"}), "teacherr"),
    "unknown-key": (lambda c: c["task"].update(nme="x"), "task.nme"),
    "seed-text": (lambda c: c.update(seed="abc"), "seed"),
    "negative-lr": (lambda c: c["students"][0]["train"].update(lr=-1), "students.0.train.lr"),
    "students-not-list": (lambda c: c.update(students=3), "students"),
    "student-without-name": (lambda c: c["students"][0].pop("name"), "students.0.name"),
    "duplicate-students": (lambda c: c["students"][1].update(name="hard"), "hard"),
    "teacher-kind": (lambda c: c["teacher"].update(kind="telepathy"), "teacher.kind"),
    "task-name": (lambda c: c["task"].update(name="nope"), "task: name: unknown task"),
    "student-named-teacher": (lambda c: c["students"][0].update(name="teacher"), "teacher"),
    "n-train-negative": (lambda c: c["task"].update(n_train=-5), "n_train"),
    "n-samples-zero": (lambda c: c["generate"].update(n=0), "generate.n"),
    "temperature-negative": (lambda c: c["generate"].update(temperature=-1), "generate.temperature"),
    "max-length-zero": (lambda c: c["build"].update(max_length=0), "build.max_length"),
    "api-bad-url": (lambda c: c.update(teacher={"kind": "openai", "base_url": "ftp://x", "model": "m"}), "base_url"),
    # the base config's soft student needs a logit teacher beside an API teacher (else that is the error)
    "api-key-unset": (lambda c: c.update(teacher={"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m",
                                                  "api_key_env": "RD_NO_SUCH_KEY_SET"},
                                         logit_teacher={"model": c["teacher"]["model"]}), "RD_NO_SUCH_KEY_SET"),
    "ood-on-a-file-task": (lambda c: c.update(task={"name": "file", "train_path": "x.jsonl", "test_path": "x.jsonl"},
                                              evaluate={"ood": {"min_ops": 9, "max_ops": 10}}), "evaluate.ood"),
    "teacher-path-missing": (lambda c: c["teacher"].update(model="/nonexistent/model"), "/nonexistent/model"),
    "teacher-dir-not-a-model": (lambda c: c["teacher"].update(model=str(REPO / "docs")), "docs"),
    "mixture-source-size": (lambda c: c.update(task={"name": "mixture", "n_train": 2, "n_test": 1, "sources": [
        {"name": "chained_arith", "n_train": 3}]}), "task.sources.0: value error, n_train/n_test: a mixture decides"),
    "task-file-missing": (lambda c: c.update(task={"name": "file", "train_path": "/nonexistent/train.jsonl",
                                                   "test_path": "/nonexistent/test.jsonl"}), "/nonexistent/t"),
}
for _name, (_edit, _expect) in EDITS.items():
    case(f"config:{_name}")(lambda tmp, run, n=_name, e=_edit, x=_expect:
                             (["generate", str(_config(tmp, f"{n}.yaml", e))], x))


@case("config:missing-file")
def _missing(tmp, run):
    return ["generate", str(tmp / "nope.yaml")], "nope.yaml"


@case("config:directory-without-config")
def _empty_dir(tmp, run):
    (tmp / "emptydir").mkdir()
    return ["curate", str(tmp / "emptydir")], "emptydir"


# -- overrides ------------------------------------------------------------------------------------
OVERRIDES = {
    "no-equals": ("seed", "seed"), "into-a-value": ("seed.x=1", "seed.x"),
    "index-out-of-range": ("students.9.train.lr=1", "students.9"), "unknown-student": ("students.nobody.lr=1", "nobody"),
    "bad-yaml-value": ("seed=[1", "seed=[1"), "negative-n-train": ("task.n_train=-5", "n_train"),
    "unknown-key": ("nosuch=1", "nosuch"), "empty-key": ("=3", "=3"),
}
for _name, (_ov, _expect) in OVERRIDES.items():
    case(f"override:{_name}")(lambda tmp, run, o=_ov, x=_expect:
                               (["generate", str(_config(tmp, "ok.yaml")), o], x))


@case("cli:unknown-student")
def _unknown_student(tmp, run):
    return ["train", str(_config(tmp, "ok.yaml")), "--student", "nobody"], "nobody"


@case("cli:unknown-model")
def _unknown_model(tmp, run):
    return ["evaluate", str(_config(tmp, "ok.yaml")), "--model", "nobody"], "nobody"


# -- problem files --------------------------------------------------------------------------------
GOOD_ROW = {"question": "What is 1 + 1?", "answer": "2"}
PROBLEM_FILES: dict[str, tuple[str | bytes, str]] = {
    "empty.jsonl": ("", "empty.jsonl"),
    "bad-line.jsonl": (json.dumps(GOOD_ROW) + "\n{oops\n", "bad-line.jsonl:2"),
    "no-question.jsonl": (json.dumps({"answer": "2"}) + "\n", "no-question.jsonl:1"),
    "nan-answer.jsonl": ('{"question": "1+1?", "answer": NaN}\n', "nan-answer.jsonl:1"),
    "object.json": ("{}", "object.json:1"),
    "two-arrays.json": (json.dumps([GOOD_ROW]) + "\n" + json.dumps([GOOD_ROW]), "two-arrays.json:2"),
    "unclosed.json": ("[" + json.dumps(GOOD_ROW) + ",\n", "unclosed.json"),
    "no-answer-column.csv": ("question,other\nWhat?,1\n", "no-answer-column.csv:2"),
    "extra-values.csv": ("question,answer\nWhat?,1,2,3\n", "extra-values.csv:2"),
    "latin1.jsonl": (b'{"question": "caf\xe9?", "answer": "2"}\n', "latin1.jsonl:1"),
    "latin1.csv": (b"question,answer\ncaf\xe9?,2\n", "latin1.csv:2"),
    "corrupt.parquet": (b"PAR1 this is not parquet at all", "corrupt.parquet"),
    "blank-question.jsonl": (json.dumps(GOOD_ROW) + '\n{"question": "  ", "answer": "4"}\n', "blank-question.jsonl:2"),
    "answer-object.jsonl": ('{"question": "1+1?", "answer": {"x": 1}}\n', "answer-object.jsonl:1"),
    "unknown.txt": ("What is 1+1? 2\n", "unknown.txt"),
}
for _name, (_content, _expect) in PROBLEM_FILES.items():
    def _problem_case(tmp, run, n=_name, c=_content, x=_expect):
        data = _write(tmp / n, c)
        cfg = _config(tmp, "file-task.yaml", lambda cf: cf.update(
            task={"name": "file", "train_path": str(data), "test_path": str(data), "n_train": 4, "n_test": 1}))
        return ["generate", str(cfg)], x
    case(f"problems:{_name}")(_problem_case)


# rows a benchmark adapter must refuse: (task section without its source, file content, expected text)
HE_ROW = {"task_id": "H/0", "prompt": "def add(a, b):\n",
          "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"}
GSM_ROWS = [{"question": f"Sam has {i} pens and buys 2 more. How many?", "answer": f"{i}+2={i + 2}\n#### {i + 2}",
             "id": f"g{i}"} for i in range(8)]
TASK_FILES: dict[str, tuple[dict, str, str]] = {
    "code-no-entry-point.jsonl": ({"name": "code"}, json.dumps(HE_ROW) + "\n",
                                  "code-no-entry-point.jsonl:1: field 'entry_point' (task.fields.entry_point): tests "
                                  "define check(candidate) but the row has no entry_point"),
    "code-comment-tests.jsonl": ({"name": "code", "fields": {"prompt": "text", "tests": "test_list"}},
                                 json.dumps({"task_id": 1, "text": "t", "test_list": ["# assert f(1) == 2"]}) + "\n",
                                 "code-comment-tests.jsonl:1: field 'test_list' (task.fields.tests): the tests contain "
                                 "no assert"),
    "gsm8k-not-a-number.jsonl": ({"name": "gsm8k"}, json.dumps({"question": "q?", "answer": "so\n#### abc"}) + "\n",
                                 "gsm8k-not-a-number.jsonl:1: field 'answer' (task.fields.answer): the answer after "
                                 "'####' should be a number"),
    "math-empty-fraction.jsonl": ({"name": "math"},
                                  json.dumps({"problem": "p", "solution": "\\boxed{\\frac{}{}}"}) + "\n",
                                  "math-empty-fraction.jsonl:1: field 'solution' (task.fields.solution): its last"),
    "choice-null-option.jsonl": ({"name": "choice"}, json.dumps({"question": "q?", "choices": ["x", None],
                                                                 "answer": "A"}) + "\n",
                                 "choice-null-option.jsonl:1: field 'choices' (task.fields.choices): option 1 (B) is "
                                 "null"),
    "choice-two-options.jsonl": ({"name": "choice"}, json.dumps({"question": "q?", "choices": ["x", "x"],
                                                                 "answer": "x"}) + "\n",
                                 "choice-two-options.jsonl:1: field 'answer' (task.fields.answer): 'x' is the text of "
                                 "options a, b"),
    # rows 1 and 4 (one id) fall in different splits of a hash split
    "gsm8k-id-in-both-splits.jsonl": ({"name": "gsm8k", "fields": {"id": "id"}, "test_fraction": 0.5},
                                      "".join(json.dumps({**r, "id": "g0" if i == 3 else r["id"]}) + "\n"
                                              for i, r in enumerate(GSM_ROWS)),
                                      "gsm8k-id-in-both-splits.jsonl:4: field 'id' (task.fields.id): id 'g0' repeats"),
    "gsm8k-empty-train-split.jsonl": ({"name": "gsm8k", "test_fraction": 0.99},
                                      "".join(json.dumps(r) + "\n" for r in GSM_ROWS),
                                      "the train split is empty (0 of 8 rows; task.test_fraction=0.99"),
}
for _name, (_task, _content, _expect) in TASK_FILES.items():
    def _task_case(tmp, run, n=_name, t=_task, c=_content, x=_expect):
        data = _write(tmp / n, c)
        where = {"path": str(data)} if "test_fraction" in t else {"train_path": str(data), "test_path": str(data)}
        cfg = _config(tmp, "task.yaml", lambda cf: cf.update(task={**t, **where}))
        return ["generate", str(cfg)], x
    case(f"problems:{_name}")(_task_case)


# -- ingest files ---------------------------------------------------------------------------------
R1_ROW = {"problem": "1+1?", "gtruth_answer": "2", "message_thinking": "1+1=2", "message_content": "2"}
INGEST_FILES: dict[str, tuple[str | bytes, str]] = {
    "bad.json": ("[" + json.dumps(R1_ROW) + ", {oops}]", "bad.json:1"),
    "two-arrays.json": (json.dumps([R1_ROW]) + "\n" + json.dumps([R1_ROW]), "two-arrays.json:2"),
    "no-answer.jsonl": (json.dumps({k: v for k, v in R1_ROW.items() if k != "gtruth_answer"}) + "\n",
                        "no-answer.jsonl:1"),
    "empty.jsonl": ("", "empty.jsonl"),
    "latin1.jsonl": (json.dumps(R1_ROW).replace("1+1?", "caf\xe9").encode("latin-1") + b"\n", "latin1.jsonl:1"),
    "numbers.json": ("[1, 2, 3]", "numbers.json:1"),
}
for _name, (_content, _expect) in INGEST_FILES.items():
    case(f"ingest:{_name}")(lambda tmp, run, n=_name, c=_content, x=_expect:
                            (["ingest", str(_write(tmp / n, c)), str(tmp / "ingested"), "--format", "r1"], x))


@case("ingest:missing-file")
def _ingest_missing(tmp, run):
    return ["ingest", str(tmp / "nope.json"), str(tmp / "ingested"), "--format", "r1"], "nope.json"


# -- score inputs ---------------------------------------------------------------------------------
SCORE_FILES: dict[str, tuple[str | bytes, str]] = {
    "no-gold.jsonl": (json.dumps({"pred": "2"}) + "\n", "no-gold.jsonl:1"),
    "not-json.jsonl": ("gold,pred\n2,2\n", "not-json.jsonl:1"),
    "numbers.json": ("[1, 2]", "numbers.json:1"),
    "latin1.jsonl": (b'{"gold": "caf\xe9", "pred": "2"}\n', "latin1.jsonl:1"),
}
for _name, (_content, _expect) in SCORE_FILES.items():
    case(f"score:{_name}")(lambda tmp, run, n=_name, c=_content, x=_expect:
                           (["score", str(_write(tmp / n, c)), "--gold", "gold", "--pred", "pred", "--workers", "0",
                             "--no-progress"], x))


@case("score:missing-file")
def _score_missing(tmp, run):
    return ["score", str(tmp / "nope.jsonl"), "--gold", "g", "--pred", "p", "--workers", "0"], "nope.jsonl"


# -- a damaged run directory ----------------------------------------------------------------------
def _flip_tail(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(max(0, len(data) - 40), len(data) - 8):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


@case("run:torn-traces", needs_run=True)
def _torn_traces(tmp, run):
    traces = run / "generate/traces.jsonl"
    traces.write_text(traces.read_text() + '{"problem_id": "x", "sam')
    return ["curate", str(run), "--force"], "traces.jsonl"


@case("run:trace-field-type", needs_run=True)
def _trace_field(tmp, run):
    traces = run / "generate/traces.jsonl"
    lines = traces.read_text().splitlines()
    lines[1] = lines[1].replace('"sample": ', '"sample": "one", "x": ')
    traces.write_text("\n".join(lines) + "\n")
    return ["curate", str(run)], "traces.jsonl:2"


@case("run:traces-not-utf8", needs_run=True)
def _traces_latin1(tmp, run):
    traces = run / "generate/traces.jsonl"
    traces.write_bytes(traces.read_bytes() + '{"thinking": "café"}\n'.encode("latin-1"))
    return ["curate", str(run)], "traces.jsonl"


def _last_checkpoint(run: Path) -> Path:
    """The checkpoint a resume starts from; final/ removed so that the stage resumes."""
    shutil.rmtree(run / "train/hard/final")
    return max((run / "train/hard/checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))


@case("run:checkpoint-flipped", needs_run=True)
def _ckpt_flipped(tmp, run):
    ckpt = _last_checkpoint(run)
    _flip_tail(ckpt / "model.safetensors")
    return ["train", str(run), "--student", "hard"], f"{ckpt.name}/model.safetensors"


@case("run:trainer-state-truncated", needs_run=True)
def _ckpt_state(tmp, run):
    _truncate(_last_checkpoint(run) / "trainer_state.json")
    return ["train", str(run), "--student", "hard"], "trainer_state.json"


@case("run:built-dataset-truncated", needs_run=True)
def _built_truncated(tmp, run):
    _truncate(run / "build/hard/train.safetensors")
    return ["train", str(run), "--student", "hard", "--force"], "train.safetensors"


@case("run:student-model-missing", needs_run=True)
def _student_model(tmp, run):
    return ["build", str(run), "students.hard.tokenizer=/nonexistent/student"], "/nonexistent/student"


@case("run:config-yaml-garbage", needs_run=True)
def _run_config(tmp, run):
    (run / "config.yaml").write_text("task: {name: [\n")
    return ["curate", str(run)], "config.yaml"


@case("run:missing-build", needs_run=True)
def _missing_build(tmp, run):
    shutil.rmtree(run / "build/hard")
    return ["train", str(run), "--student", "hard"], "reasondistill build"


@case("run:run-dir-is-a-file")
def _run_file(tmp, run):
    _write(tmp / "afile", "x")
    return ["generate", str(_config(tmp, "ok.yaml")), f"run_dir={tmp / 'afile'}"], "afile"


@case("run:read-only", needs_run=True)
def _read_only(tmp, run):
    """``chattr +i``: immutable even for root (plain permissions are not, and CI runs as root)."""
    shutil.rmtree(run / "curate")
    subprocess.run(["chattr", "+i", str(run)], check=True)
    return ["curate", str(run)], "permission denied"


@case("run:disk-full", needs_run=True)
def _disk_full(tmp, run):
    """A 1 MiB tmpfs mounted over the curate folder: the stage's writes hit ENOSPC."""
    shutil.rmtree(run / "curate")
    (run / "curate").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(run / "curate")], check=True)
    _write(run / "curate/filler", b"x" * 12_000)
    return ["curate", str(run), "--force"], "no space left"


def cleanup(run: Path | None) -> None:
    """Undo what the read-only and disk-full cases did to a run copy, so it can be deleted."""
    if run is None or not run.exists():
        return
    subprocess.run(["chattr", "-i", str(run)], capture_output=True)
    subprocess.run(["umount", str(run / "curate")], capture_output=True)


def judge(returncode: int | None, stderr: str, expected: str) -> str:
    """clear | traceback | accepted | unclear | hang, for one case's outcome."""
    if returncode is None:
        return "hang"
    if "Traceback" in stderr:
        return "traceback"
    if returncode == 0:
        return "accepted"
    return "clear" if returncode == 2 and expected.lower() in stderr.lower() else "unclear"
