import json

import pytest

from reasondistill.records import (JsonlWriter, Problem, RecordError, Trace, iter_jsonl, read_records, repair_tail,
                                   write_records)


def _trace(i):
    return Trace(problem_id=f"p{i}", sample=0, thinking="t", answer="1", text="x", prompt_tokens=1,
                 completion_tokens=2, finish_reason="stop", teacher="t")


def test_round_trip(tmp_path):
    recs = [_trace(i) for i in range(3)]
    write_records(tmp_path / "a.jsonl", recs)
    assert read_records(tmp_path / "a.jsonl", Trace) == recs


def test_bad_json_names_file_and_line(tmp_path):
    f = tmp_path / "a.jsonl"
    write_records(f, [_trace(0)])
    with f.open("a") as fh:
        fh.write("{not json\n")
    with pytest.raises(RecordError, match=r"a\.jsonl:2: not valid JSON"):
        read_records(f, Trace)


def test_bad_json_column_is_on_its_own_line(tmp_path):
    f = tmp_path / "b.jsonl"
    f.write_text('{"a": 1}\n{"question": "What is 9 + 9?", "answer": "18"\n{"a": 2}\r\n')
    with pytest.raises(RecordError, match=r"b\.jsonl:2: not valid JSON \(Expecting ',' delimiter at column 46\)"):
        list(iter_jsonl(f))


def test_missing_and_mistyped_field_are_named(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"id": "1", "task": "t", "prompt": "q"}) + "\n")
    with pytest.raises(RecordError, match=r"p\.jsonl:1: field 'answer' is missing"):
        read_records(f, Problem)
    f.write_text(json.dumps({"id": "1", "task": "t", "prompt": "q", "answer": "2", "difficulty": "hard"}) + "\n")
    with pytest.raises(RecordError, match=r"p\.jsonl:1: field 'difficulty' should be int"):
        read_records(f, Problem)


def test_torn_last_line_is_cut_and_kept_aside(tmp_path):
    f = tmp_path / "t.jsonl"
    with JsonlWriter(f) as w:
        for i in range(3):
            w.write(_trace(i))
    good = f.read_bytes()
    with f.open("ab") as fh:
        fh.write(b'{"problem_id": "p3", "sam')  # a crash mid-write
    assert repair_tail(f) > 0
    assert f.read_bytes() == good
    assert b'"p3"' in (tmp_path / "t.jsonl.torn").read_bytes()
    assert repair_tail(f) == 0
    with JsonlWriter(f) as w:  # appending after a crash repairs first
        w.write(_trace(4))
    assert [t.problem_id for t in read_records(f, Trace)] == ["p0", "p1", "p2", "p4"]


def test_unterminated_but_complete_line_is_redone(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps({"a": 1}) + "\n" + json.dumps({"a": 2}))
    repair_tail(f)
    assert f.read_text() == json.dumps({"a": 1}) + "\n"


def _write_many(path, who, times=300):
    from reasondistill.records import write_json, write_records

    for k in range(times):
        write_json(path, {"writer": who, "k": k, "pad": "x" * 2000})
        write_records(path.with_suffix(".jsonl"), [{"writer": who, "k": k}] * 20)
    return who


def test_concurrent_writers_of_one_file_never_collide(tmp_path):
    """Two processes (as DDP ranks might) rewriting the same files: each goes through its own temp
    file, so no rename fails and readers always find a whole file."""
    import json
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    path = tmp_path / "state.json"
    with ProcessPoolExecutor(2, mp_context=get_context("fork")) as pool:
        assert sorted(pool.map(_write_many, [path, path], ["a", "b"])) == ["a", "b"]
    assert json.loads(path.read_text())["k"] == 299
    assert len(path.with_suffix(".jsonl").read_text().splitlines()) == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.jsonl"]  # no temp files left
