"""``reasondistill score``: JSON and JSONL inputs, verdict files, the summary, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from reasondistill.verify.score import load_rows, main, verdicts_path

ROWS = [
    {"id": 0, "gold": "Steps <<2*3=6>>6\n#### 6", "out": "<think>maybe 5</think>So \\boxed{6}."},
    {"id": 1, "gold": "#### 1,234", "out": "The answer is 1,234."},
    {"id": 2, "gold": 7, "out": "I think it is 8."},
    {"id": 3, "gold": "#### 9", "out": "No idea."},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(capsys, argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def test_scores_jsonl_and_writes_verdicts_beside_it(tmp_path, capsys):
    src = write_jsonl(tmp_path / "outs.jsonl", ROWS)
    code, summary, _ = run(capsys, [src, "--gold", "gold", "--pred", "out", "--task", "gsm8k", "--workers", "0"])
    assert code == 0
    assert (summary["n"], summary["correct"], summary["accuracy"]) == (4, 2, 0.5)
    assert summary["verdicts"] == {"correct": 2, "wrong": 1, "unparseable": 1}
    assert summary["rejects"] == {"mismatch": 1, "no answer found": 1}
    rows = [json.loads(line) for line in verdicts_path(src).read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3, 4] and rows[0]["predicted"] == "6"
    assert summary["verdicts_file"] == str(tmp_path / "outs.verdicts.jsonl")


def test_math_task_has_no_last_number_fallback_unless_asked(tmp_path, capsys):
    src = write_jsonl(tmp_path / "outs.jsonl", ROWS)
    _, summary, _ = run(capsys, [src, "--gold", "gold", "--pred", "out", "--workers", "0"])
    assert summary["rejects"] == {"no answer found": 2}
    _, summary, _ = run(capsys, [src, "--gold", "gold", "--pred", "out", "--workers", "0", "--last-number"])
    assert summary["rejects"] == {"mismatch": 1, "no answer found": 1}


def test_scores_a_json_array_in_worker_processes(tmp_path, capsys):
    src = tmp_path / "outs.json"
    src.write_text(json.dumps([{"r": {"choices": [{"text": r["out"]}]}, "a": r["gold"]} for r in ROWS], indent=2))
    code, summary, _ = run(capsys, [src, "--gold", "a", "--pred", "r.choices.0.text", "--task", "gsm8k",
                                    "--workers", "1", "--no-progress"])
    assert code == 0 and summary["correct"] == 2 and summary["n"] == 4
    lines = [json.loads(x)["line"] for x in verdicts_path(src).read_text().splitlines()]
    assert lines == [line for line, _ in load_rows(src)] and lines[0] == 2


def test_choice_task_with_options(tmp_path, capsys):
    rows = [{"q": "Capital of France?", "opts": ["Rome", "Paris"], "gold": "B", "pred": "The answer is (B)"},
            {"q": "Capital of Italy?", "opts": ["Rome", "Paris"], "gold": "A", "pred": "It is Paris."},
            {"q": "Capital of Norway?", "opts": ["Oslo", "Bern"], "gold": "Oslo", "pred": "Oslo"}]
    src = write_jsonl(tmp_path / "mc.jsonl", rows)
    _, summary, _ = run(capsys, [src, "--gold", "gold", "--pred", "pred", "--task", "choice",
                                 "--options", "opts", "--workers", "0"])
    assert (summary["correct"], summary["rejects"]) == (2, {"mismatch": 1})


def test_math_task_takes_an_already_extracted_answer_whole(tmp_path, capsys):
    pairs = [("29", "29"), ("1,000", "1000"), ("\\frac{1}{2}", "0.5"), ("0.5", "1/2"), ("18", "$18.00"),
             ("4", "x = 4"), ("4", 4), ("3", "\\boxed{3}")]
    src = write_jsonl(tmp_path / "answers.jsonl", [{"gold": g, "pred": p} for g, p in pairs])
    _, summary, _ = run(capsys, [src, "--gold", "gold", "--pred", "pred", "--workers", "0"])
    assert (summary["accuracy"], summary["rejects"]) == (1.0, {}), summary
    assert "hint" not in summary


def test_an_unclosed_box_is_unparseable_in_score_as_in_curation(tmp_path, capsys):
    src = write_jsonl(tmp_path / "outs.jsonl", [{"gold": "1/2", "out": "<think>x</think>\\boxed{\\frac{1}{2}"}])
    for task in ("math", "gsm8k"):
        _, summary, _ = run(capsys, [src, "--gold", "gold", "--pred", "out", "--task", task, "--workers", "0"])
        assert summary["rejects"] == {"unclosed \\boxed{": 1}, summary


def test_a_null_prediction_is_unparseable_not_an_error(tmp_path, capsys):
    rows = [{"gold": "1", "out": None}, {"gold": "2", "out": "#### 2"}, {"gold": "B", "out": None}]
    src = write_jsonl(tmp_path / "outs.jsonl", [{**r, "opts": ["x", "y"]} for r in rows])
    code, summary, _ = run(capsys, [src, "--gold", "gold", "--pred", "out", "--workers", "0"])
    assert code == 0 and summary["verdicts"] == {"correct": 1, "wrong": 0, "unparseable": 2}
    assert summary["rejects"] == {"prediction is null": 2}
    verdicts = [json.loads(line) for line in verdicts_path(src).read_text().splitlines()]
    assert [v["reason"] for v in verdicts] == ["prediction is null", "match", "prediction is null"]
    _, summary, _ = run(capsys, [src, "--gold", "gold", "--pred", "out", "--task", "choice", "--options", "opts",
                                 "--workers", "0"])
    assert summary["rejects"]["prediction is null"] == 2


def test_the_summary_hints_at_other_extractions_when_most_rows_have_no_answer(tmp_path, capsys):
    src = write_jsonl(tmp_path / "outs.jsonl", [{"gold": str(i), "out": f"I think it is {i}."} for i in range(3)])
    _, summary, _ = run(capsys, [src, "--gold", "gold", "--pred", "out", "--workers", "0"])
    assert summary["rejects"] == {"no answer found": 3}
    assert "--last-number" in summary["hint"] and "--task" in summary["hint"]
    _, summary, _ = run(capsys, [src, "--gold", "gold", "--pred", "out", "--workers", "0", "--last-number"])
    assert summary["accuracy"] == 1.0 and "hint" not in summary


def test_choice_reference_may_be_an_index_and_a_bare_prediction_a_letter_or_index(tmp_path, capsys):
    opts = ["Rome", "Oslo", "Paris", "Bern"]
    rows = [{"gold": 1, "pred": "b"}, {"gold": "1", "pred": "The answer is (B)"}, {"gold": "C", "pred": "2"},
            {"gold": 2, "pred": 2}, {"gold": "A", "pred": "(a)"}, {"gold": "A", "pred": "7"}]
    src = write_jsonl(tmp_path / "mc.jsonl", [{**r, "opts": opts} for r in rows])
    _, summary, _ = run(capsys, [src, "--gold", "gold", "--pred", "pred", "--task", "choice",
                                 "--options", "opts", "--workers", "0"])
    assert (summary["correct"], summary["rejects"]) == (5, {"no answer found": 1}), summary
    # an option whose text is a number is that option, in the reference as in the prediction
    numbers = write_jsonl(tmp_path / "numbers.jsonl", [{"gold": "1", "pred": "1", "opts": ["1", "2", "3"]},
                                                       {"gold": "A", "pred": "1", "opts": ["1", "2", "3"]}])
    _, summary, _ = run(capsys, [numbers, "--gold", "gold", "--pred", "pred", "--task", "choice",
                                 "--options", "opts", "--workers", "0"])
    assert summary["accuracy"] == 1.0, summary


@pytest.mark.parametrize("content, argv_extra, message", [
    ('{"gold": "1", "out": "1"}\n{"gold": "2", "out": \n', [], "bad.jsonl:2: not valid JSON"),
    ('{"gold": "1", "out": "1"}\n{"gold": "2"}\n', [], "bad.jsonl:2: field 'out' is missing"),
    ('{"gold": "1", "out": ["a"]}\n', [], "bad.jsonl:1: field 'out' should be text or a number"),
    ('{"gold": null, "out": "1"}\n', [], "bad.jsonl:1: field 'gold' should be text or a number"),
    ('[\n  {"gold": "1", "out": "1"},\n  {"gold": "2"}\n]\n', [], "bad.jsonl:3: field 'out' is missing"),
    ('[\n  {"gold": "1", "out": "1"},\n  {"gold": "2", \n]\n', [], "bad.jsonl:4: not valid JSON"),
    ('["just text"]\n', [], "bad.jsonl:1: expected a JSON object"),
    ('{"gold": "1", "out": "1", "opts": "AB"}\n', ["--task", "choice", "--options", "opts"],
     "bad.jsonl:1: field 'opts' should be a list"),
])
def test_bad_input_names_file_line_and_field(tmp_path, capsys, content, argv_extra, message):
    src = tmp_path / "bad.jsonl"
    src.write_text(content)
    code, _, err = run(capsys, [src, "--gold", "gold", "--pred", "out", "--workers", "0", *argv_extra])
    assert code == 2 and message in err, err
    assert not verdicts_path(src).exists()


def test_missing_file_and_bad_flags(tmp_path, capsys):
    code, _, err = run(capsys, [tmp_path / "nope.jsonl", "--gold", "g", "--pred", "p"])
    assert code == 2 and "nope.jsonl: cannot read" in err
    assert run(capsys, [tmp_path / "x.jsonl", "--gold", "g", "--pred", "p", "--workers", "-1"])[0] == 2
    with pytest.raises(SystemExit):
        main([str(tmp_path / "x.jsonl"), "--gold", "g"])  # argparse: --pred is required


def test_runs_as_a_module(tmp_path):
    src = write_jsonl(tmp_path / "outs.jsonl", ROWS[:2])
    done = subprocess.run([sys.executable, "-m", "reasondistill.verify.score", str(src), "--gold", "gold",
                           "--pred", "out", "--workers", "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["accuracy"] == 1.0
