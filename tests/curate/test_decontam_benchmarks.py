"""curate.decontaminate.against: benchmark files in any problem format, hits reported per benchmark."""

from __future__ import annotations

import csv
import json

import pytest

from reasondistill.config import DecontamConfig
from reasondistill.curate.decontam import apply_to_curation
from reasondistill.records import Problem, RecordError, Trace, write_records

AIME = "Find the number of ordered pairs of positive integers whose product is exactly one million and sum is odd."
MATH = "Let f be a function such that f of x plus two equals three times f of x for every real number x."


def problem(pid, prompt):
    return Problem(id=pid, task="math", prompt=prompt, answer="1")


def trace(pid):
    return Trace(problem_id=pid, sample=0, thinking="t", answer="1", text="<think>t</think>\n\n1",
                 prompt_tokens=0, completion_tokens=0, finish_reason="stop", teacher="x")


def test_hits_are_found_in_jsonl_and_csv_benchmarks_and_reported_per_benchmark(tmp_path):
    (tmp_path / "aime.jsonl").write_text(json.dumps({"problem": AIME, "answer": "7"}) + "\n")
    with (tmp_path / "math500.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["id", "statement"])
        w.writeheader()
        w.writerow({"id": "1", "statement": MATH})
    write_records(tmp_path / "test.jsonl", [problem("t1", "What is the sum of the first ten positive integers?")])
    train = [problem("from-aime", "Recall: " + AIME.upper()), problem("from-math", MATH + " Find f(4)."),
             problem("clean", "A completely different question about nothing in particular at all today.")]
    cfg = DecontamConfig(against=[str(tmp_path / "aime.jsonl"),
                                  {"path": str(tmp_path / "math500.csv"), "field": "statement", "label": "MATH-500"}])
    summary = {"dropped": {}, "kept": 3, "problems_with_a_kept_trace": 3}
    out = tmp_path / "decontamination.json"
    left = apply_to_curation([trace(p.id) for p in train], summary, train, tmp_path / "test.jsonl", cfg, out)
    assert [t.problem_id for t in left] == ["clean"]
    per = summary["decontamination"]["benchmarks"]
    assert per == {"test split": {"problems": 1, "hits": 0}, "aime.jsonl": {"problems": 1, "hits": 1},
                   "MATH-500": {"problems": 1, "hits": 1}}
    rec = json.loads(out.read_text())
    assert rec["benchmarks"]["aime.jsonl"]["ids"] == ["from-aime"]
    assert rec["benchmarks"]["MATH-500"]["matches"]["from-math"]["eval_id"] == "MATH-500:1"
    assert summary["dropped"]["contaminated"] == 2 and rec["eval_problems"] == 3
    # without the benchmarks the same problems are kept
    summary = {"dropped": {}, "kept": 3, "problems_with_a_kept_trace": 3}
    assert len(apply_to_curation([trace(p.id) for p in train], summary, train, tmp_path / "test.jsonl",
                                 DecontamConfig(), out)) == 3


def test_a_benchmark_row_without_a_problem_text_names_the_file_and_line(tmp_path):
    f = tmp_path / "bench.jsonl"
    f.write_text(json.dumps({"question": "ok"}) + "\n" + json.dumps({"q": "no known field"}) + "\n")
    with pytest.raises(RecordError, match=r"bench.jsonl:2: .*no one of the fields question"):
        apply_to_curation([], {"dropped": {}}, [problem("a", "x")], tmp_path / "none.jsonl",
                          DecontamConfig(against=[str(f)]), tmp_path / "d.json")
