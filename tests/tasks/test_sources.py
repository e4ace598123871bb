"""Problem files in every format, read through a field mapping; bad rows named by file, line and field."""

import csv
import json

import pytest

from reasondistill.records import RecordError
from reasondistill.tasks.base import load_task
from reasondistill.tasks.sources import read_rows

ROWS = [{"q": f"What is {i} + {i}?", "a": str(2 * i), "sol": f"{i}+{i}={2 * i}", "uid": f"r{i}", "lvl": i % 3}
        for i in range(40)]
MAPPING = {"question": "q", "answer": "a", "solution": "sol", "id": "uid", "difficulty": "lvl"}


def write(path, rows, fmt):
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows, indent=2))
    elif fmt == "csv":
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif fmt == "parquet":
        pa = pytest.importorskip("pyarrow", reason="Parquet needs pyarrow (the `data` extra)")
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_each_format_loads_with_a_field_mapping(tmp_path, fmt):
    path = write(tmp_path / f"qa.{fmt}", ROWS, fmt)
    task = load_task({"name": "file", "path": str(path), "fields": MAPPING, "test_fraction": 0.25})
    train, test = task.problems("train", None, 0), task.problems("test", None, 0)
    assert len(train) + len(test) == 40 and 0 < len(test) < 20
    assert not {p.id for p in train} & {p.id for p in test}
    by_id = {p.id: p for p in train + test}
    p = by_id["file:r7"]
    assert (p.prompt, p.answer, p.solution, p.difficulty, p.task) == ("What is 7 + 7?", "14", "7+7=14", 1, "file")
    assert task.check(p, "It is 14.").verdict == "correct"
    assert task.check(p, "It is 15.").verdict == "wrong"
    assert task.check(p, "I do not know").verdict == "unparseable"


def test_formats_give_the_same_problems(tmp_path):
    got = []
    for fmt in ("jsonl", "json", "csv"):
        path = write(tmp_path / f"qa.{fmt}", ROWS, fmt)
        task = load_task({"name": "file", "path": str(path), "fields": MAPPING})
        got.append([(p.id, p.prompt, p.answer, p.difficulty) for p in task.problems("train", 10, 3)])
    assert got[0] == got[1] == got[2]


def test_hash_split_is_stable_and_n_caps_in_a_seeded_order(tmp_path):
    path = write(tmp_path / "qa.jsonl", ROWS, "jsonl")
    spec = {"name": "file", "path": str(path), "fields": MAPPING}
    small = write(tmp_path / "fewer.jsonl", ROWS[:30], "jsonl")  # a subset: no question changes side
    test_all = {p.id for p in load_task(spec).problems("test", None, 0)}
    test_sub = {p.id for p in load_task({**spec, "path": str(small)}).problems("test", None, 0)}
    assert test_sub == {i for i in test_all if int(i.split(":r")[1]) < 30}
    a, b = load_task(spec).problems("train", 5, 1), load_task(spec).problems("train", 5, 1)
    assert [p.id for p in a] == [p.id for p in b] and len(a) == 5
    assert [p.id for p in load_task(spec).problems("train", 5, 2)] != [p.id for p in a]
    assert {p.id for p in load_task(spec).problems("train", None, 1)} >= {p.id for p in a}


def test_separate_train_and_test_files(tmp_path):
    tr, te = write(tmp_path / "tr.jsonl", ROWS[:30], "jsonl"), write(tmp_path / "te.csv", ROWS[30:], "csv")
    task = load_task({"name": "file", "train_path": str(tr), "test_path": str(te), "fields": MAPPING})
    assert len(task.problems("train", None, 0)) == 30 and len(task.problems("test", None, 0)) == 10
    assert [str(f) for f in task.input_files()] == [str(tr), str(te)]
    only_test = load_task({"name": "file", "test_path": str(te), "fields": MAPPING})
    with pytest.raises(ValueError, match="set task.train_path"):
        only_test.problems("train", None, 0)


def test_ids_default_to_a_hash_of_the_question_and_repeats_are_kept_once(tmp_path):
    rows = [{"question": "2+2?", "answer": "4"}, {"question": "3+3?", "answer": "6"},
            {"question": "2+2?", "answer": "4"}]
    path = write(tmp_path / "qa.jsonl", rows, "jsonl")
    task = load_task({"name": "file", "train_path": str(path)})
    got = task.problems("train", None, 0)
    assert len(got) == 2 and all(p.id.startswith("file:") for p in got)
    assert task.describe()["repeated_questions"] == {"train": 1}


@pytest.mark.parametrize("fmt, where", [("jsonl", ":3"), ("json", ":16 (item 3)"), ("csv", ":4 (row 3)"),
                                        ("parquet", ": row 3")])
def test_missing_field_names_file_line_and_field(tmp_path, fmt, where):
    rows = [dict(r) for r in ROWS[:5]]
    rows[2]["q"] = ""  # empty in every format (CSV has no "missing")
    path = write(tmp_path / f"bad.{fmt}", rows, fmt)
    task = load_task({"name": "file", "train_path": str(path), "fields": MAPPING})
    with pytest.raises(RecordError) as err:
        task.problems("train", None, 0)
    msg = str(err.value)
    assert msg.startswith(f"{path}{where}:"), msg
    assert "field 'q' (task.fields.question)" in msg and "empty" in msg


def test_bad_values_and_bad_json_are_located(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({**ROWS[1], "lvl": "hard"}) + "\n")
    task = load_task({"name": "file", "train_path": str(path), "fields": MAPPING})
    with pytest.raises(RecordError, match=rf"{path}:2: field 'lvl' \(task.fields.difficulty\) should be an integer"):
        task.problems("train", None, 0)
    path.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(RecordError, match=rf"{path}:2: not valid JSON"):
        list(read_rows(path))
    arr = tmp_path / "bad.json"
    arr.write_text('[\n {"q": "a", "a": "1"},\n {"q": "b" "a": "2"}\n]')
    with pytest.raises(RecordError, match=rf"{arr}:3: not valid JSON"):
        list(read_rows(arr))
    arr.write_text('{"q": "a"}')
    with pytest.raises(RecordError, match="expected a JSON array"):
        list(read_rows(arr))
    ragged = tmp_path / "bad.csv"
    ragged.write_text("q,a\nx,1\ny,2,3\n")
    with pytest.raises(RecordError, match=rf"{ragged}:3 \(row 2\): 3 values for 2 columns"):
        list(read_rows(ragged))


def test_repeated_explicit_id_is_an_error_unless_bad_rows_are_skipped(tmp_path):
    rows = [dict(ROWS[0]), dict(ROWS[1], uid="r0"), dict(ROWS[2], q=None)]
    path = write(tmp_path / "dup.jsonl", rows, "jsonl")
    spec = {"name": "file", "train_path": str(path), "fields": MAPPING}
    with pytest.raises(RecordError,
                       match=rf"{path}:2: field 'uid' \(task.fields.id\): id 'r0' repeats the one at {path}:1"):
        load_task(spec).problems("train", None, 0)
    lenient = load_task({**spec, "skip_bad_rows": True})
    assert [p.id for p in lenient.problems("train", None, 0)] == ["file:r0"]
    assert lenient.describe()["skipped_bad_rows"] == {"train": 2}


def test_repeated_id_is_an_error_across_a_hash_split(tmp_path):
    """Rows 0 and 1 hash into different splits: the same id naming both would be in train and test."""
    rows = [dict(ROWS[0]), dict(ROWS[2]), dict(ROWS[1], uid="r0"), dict(ROWS[3], uid=None), dict(ROWS[3], uid=None)]
    path = write(tmp_path / "dup.jsonl", rows, "jsonl")
    spec = {"name": "file", "path": str(path), "test_fraction": 0.5, "fields": MAPPING}
    for split in ("train", "test"):
        with pytest.raises(RecordError, match=rf"{path}:3: field 'uid' \(task.fields.id\): id 'r0' repeats the "
                                              rf"one at {path}:1"):
            load_task(spec).problems(split, None, 0)
    lenient = load_task({**spec, "skip_bad_rows": True})
    assert sorted(p.id for p in lenient.problems("test", None, 0))[-1] == "file:r0"  # and row 4's question
    assert [p.id for p in lenient.problems("train", None, 0)] == ["file:r2"]
    # a repeated question (no id) is kept once and counted in its own split only (row 3 is a test row)
    assert lenient.describe()["repeated_questions"] == {"train": 0, "test": 1}


def test_an_empty_train_split_says_where_the_rows_went(tmp_path):
    path = write(tmp_path / "eight.jsonl", ROWS[:8], "jsonl")
    spec = {"name": "file", "path": str(path), "fields": MAPPING}
    with pytest.raises(RecordError, match=rf"^{path}: the train split is empty \(0 of 8 rows; task.test_fraction="
                                          r"0.99 put 8 in the test split\): task file has nothing to train on"):
        load_task({**spec, "test_fraction": 0.99}).problems("train", None, 0)
    assert len(load_task({**spec, "test_fraction": 0.99}).problems("test", None, 0)) == 8
    assert load_task({**spec, "test_fraction": 0.01}).problems("test", None, 0) == []  # evaluation is skipped
    bad = write(tmp_path / "bad.jsonl", [dict(r, a="") for r in ROWS[:3]], "jsonl")
    with pytest.raises(RecordError, match=rf"^{bad}: the train split is empty \(0 of 3 rows; 3 malformed rows "
                                          rf"skipped \(task.skip_bad_rows; the first: {bad}:1: field 'a'"):
        load_task({**spec, "path": None, "train_path": str(bad), "skip_bad_rows": True}).problems("train", None, 0)


def test_exact_verifier_and_template(tmp_path):
    path = write(tmp_path / "caps.jsonl", [{"question": "Capital of France?", "answer": "Paris"}], "jsonl")
    task = load_task({"name": "file", "train_path": str(path), "verifier": "exact",
                      "template": "Answer in one word. {question} Put it in \\boxed{}."})
    p = task.problems("train", None, 0)[0]
    assert p.prompt == "Answer in one word. Capital of France? Put it in \\boxed{}."
    assert [task.check(p, a).verdict for a in ("  paris ", "Rome", "")] == ["correct", "wrong", "unparseable"]


def test_datasets_directory_and_splits(tmp_path):
    datasets = pytest.importorskip("datasets", reason="`datasets` not installed (the `data` extra)")
    d = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:30]),
                          "validation": datasets.Dataset.from_list(ROWS[30:])}).save_to_disk(str(d))
    spec = {"name": "file", "path": str(d), "fields": MAPPING, "test_split": "validation"}
    task = load_task(spec)
    assert len(task.problems("train", None, 0)) == 30 and len(task.problems("test", None, 0)) == 10
    with pytest.raises(RecordError, match=r"no split 'test' in this dataset; it has \['train', 'validation'\]"):
        load_task({**spec, "test_split": "test"}).problems("test", None, 0)
    one = tmp_path / "one"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(one))  # a single Dataset: split by hash
    hashed = load_task({"name": "file", "path": str(one), "fields": MAPPING, "test_fraction": 0.25})
    from_file = load_task({"name": "file", "path": str(write(tmp_path / "all.jsonl", ROWS, "jsonl")), "fields": MAPPING,
                           "test_fraction": 0.25})
    assert {p.id for p in hashed.problems("test", None, 0)} == {p.id for p in from_file.problems("test", None, 0)}
    bad = tmp_path / "bad"
    datasets.Dataset.from_list([dict(ROWS[0]), dict(ROWS[1], a=None)]).save_to_disk(str(bad))
    with pytest.raises(RecordError, match=rf"{bad}: row 2: field 'a' \(task.fields.answer\) is"):
        load_task({"name": "file", "train_path": str(bad), "fields": MAPPING}).problems("train", None, 0)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl: problem file not found"):
        load_task({"name": "file", "path": str(tmp_path / "nope.jsonl")}).problems("train", None, 0)
    odd = tmp_path / "qa.txt"
    odd.write_text("x")
    with pytest.raises(RecordError, match="cannot tell the format"):
        load_task({"name": "file", "path": str(odd)}).problems("train", None, 0)


def test_hub_dataset_offline_and_datasets_missing_are_clear(tmp_path):
    import os
    import subprocess
    import sys

    pytest.importorskip("datasets", reason="`datasets` not installed (the `data` extra)")
    code = ("from reasondistill.tasks.base import load_task\n"
            "load_task({'name': 'gsm8k', 'hf_id': 'openai/gsm8k', 'hf_config': 'main'}).problems('train', 5, 0)\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "hf"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode != 0
    assert "task.hf_id 'openai/gsm8k' (config 'main', split 'train'): could not load from the hub" in out.stderr
    blocked = "import sys\nsys.modules['datasets'] = None  # as if not installed\n" + code
    out = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, env=env, timeout=120)
    assert "needs the `datasets` package: pip install 'reasondistill[data]'" in out.stderr


@pytest.mark.parametrize("name, content, expected", [
    ("empty.jsonl", b"", "empty.jsonl: no rows"),
    ("nan.jsonl", b'{"q": "1+1?", "a": NaN, "uid": "x"}\n', "nan.jsonl:1: field 'a' (task.fields.answer) is nan"),
    ("inf.json", b'[{"q": "1+1?", "a": Infinity, "uid": "x"}]', "inf.json:1 (item 1): field 'a' (task.fields.answer) is inf"),
    ("twice.json", b'[{"q": "1+1?", "a": "2", "uid": "x"}]\n[{"q": "2+2?", "a": "4", "uid": "y"}]\n',
     "twice.json:2: text after the end of the JSON array"),
    ("latin1.jsonl", b'{"q": "1+1?", "a": "2", "uid": "x"}\n{"q": "caf\xe9", "a": "2", "uid": "y"}\n',
     "latin1.jsonl:2: not UTF-8 text"),
    ("latin1.json", b'[{"q": "1+1?", "a": "2", "uid": "x"},\n {"q": "caf\xe9", "a": "2", "uid": "y"}]',
     "latin1.json:2: not UTF-8 text"),
])
def test_bad_problem_files_name_the_file_and_line(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    task = load_task({"name": "file", "train_path": str(path), "test_path": str(path), "fields": MAPPING})
    with pytest.raises(RecordError) as err:
        task.problems("train", None, 0)
    assert expected in str(err.value)


def test_skip_bad_rows_skips_unreadable_lines_and_records_why(tmp_path):
    path = tmp_path / "badjson.jsonl"
    good = [json.dumps(r).encode() + b"\n" for r in ROWS[:6]]
    lines = [b"\xef\xbb\xbf" + good[0], *good[1:3], b'{"q": "caf\xe9", "a": "1"}\n', b"[1, 2]\n", good[3],
             b'{"q": "What is 9 + 9?", "a": "18"\n', good[4], b'"just text"\n', good[5]]
    path.write_bytes(b"".join(lines))
    spec = {"name": "file", "train_path": str(path), "fields": MAPPING}
    with pytest.raises(RecordError, match=rf"{path}:4: not UTF-8 text"):
        load_task(spec).problems("train", None, 0)
    task = load_task({**spec, "skip_bad_rows": True})
    assert sorted(p.id for p in task.problems("train", None, 0)) == [f"file:r{i}" for i in range(6)]
    assert task.skipped == {"train": 4}
    reasons = task.skip_reasons["train"]
    assert [r.split(": ")[0] for r in reasons] == [f"{path}:{n}" for n in (4, 5, 7, 9)]
    assert "not UTF-8 text" in reasons[0] and "expected an object" in reasons[1]
    assert "not valid JSON (Expecting ',' delimiter at column 34)" in reasons[2]  # not column 1 of a next line


def test_skip_bad_rows_in_json_arrays_and_csv(tmp_path):
    arr = tmp_path / "qa.json"
    arr.write_bytes(b'[\n' + json.dumps(ROWS[0]).encode() + b',\n  7,\n {"q": "\xff", "a": "1"},\n'
                    + json.dumps(ROWS[1]).encode() + b'\n]')
    spec = {"name": "file", "train_path": str(arr), "fields": MAPPING}
    with pytest.raises(RecordError, match=rf"{arr}:4: not UTF-8 text"):
        load_task(spec).problems("train", None, 0)
    task = load_task({**spec, "skip_bad_rows": True})
    assert sorted(p.id for p in task.problems("train", None, 0)) == ["file:r0", "file:r1"]
    assert [r.split(": ")[0] for r in task.skip_reasons["train"]] == [f"{arr}:3 (item 2)", f"{arr}:4 (item 3)"]
    assert "not UTF-8 text" in task.skip_reasons["train"][1]
    ragged = tmp_path / "qa.csv"
    ragged.write_bytes(b"q,a\nx?,1\ny?,2,3\nz\xff?,4\nw?,5\n")
    task = load_task({"name": "file", "train_path": str(ragged), "fields": {"question": "q", "answer": "a"},
                      "skip_bad_rows": True})
    assert sorted(p.prompt for p in task.problems("train", None, 0)) == ["w?", "x?"]
    assert [r.split(": ")[0] for r in task.skip_reasons["train"]] == [f"{ragged}:3 (row 2)", f"{ragged}:4 (row 3)"]


def test_a_byte_order_mark_is_accepted(tmp_path):
    for fmt in ("jsonl", "json", "csv"):
        path = write(tmp_path / f"bom.{fmt}", ROWS[:3], fmt)
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
        task = load_task({"name": "file", "train_path": str(path), "fields": MAPPING})
        assert sorted(p.id for p in task.problems("train", None, 0)) == ["file:r0", "file:r1", "file:r2"], fmt
