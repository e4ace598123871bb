"""Ingesting existing traces: both formats, errors by file/line/field, and the pipeline running on them."""

import json

import pytest
import yaml

from reasondistill.ingest import ingest, main, parse_file
from reasondistill.pipeline import Pipeline, StageInputMissing
from reasondistill.config import load_config
from reasondistill.records import Problem, RecordError, Trace, read_records

R1_ROWS = [
    {"problem": "What is 2 + 3?", "gtruth_answer": "5", "message_thinking": "2 plus 3 is 5.",
     "message_content": "The answer is \\boxed{5}."},
    {"problem": "Compute 10 / 4.", "gtruth_answer": "\\frac{5}{2}", "message_thinking": "<think>10/4 = 2.5</think>",
     "message_content": "\\boxed{2.5}"},
    {"problem": "What is 2 + 3?", "gtruth_answer": "5", "message_thinking": "guess", "message_content": "\\boxed{6}"},
    {"problem": "How many primes are below 10?", "gtruth_answer": 4, "message_thinking": "2, 3, 5, 7",
     "message_content": "There are 4."},
]


def write_r1(path, rows=R1_ROWS):
    path.write_text(json.dumps(rows, indent=2))  # a JSON array over many lines, as the book's scripts write
    return path


def write_config(path, tokenizer_dir, **curate):
    cfg = {"seed": 0, "task": {"name": "chained_arith", "min_ops": 3, "max_ops": 4, "n_train": 40, "n_test": 6},
           "teacher": {"model": str(tokenizer_dir)},
           "curate": curate, "build": {"max_length": 256, "val_fraction": 0.0},
           "students": [{"name": "s1", "init": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                                 "intermediate_size": 32},
                         "train": {"max_steps": 2, "epochs": None, "batch_size": 2, "save_every": 2, "log_every": 1}}],
           "evaluate": {"batch_size": 6, "max_new_tokens": 4}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_r1_rows_become_problems_and_samples(tmp_path):
    problems, traces = parse_file(write_r1(tmp_path / "d.json"), "r1")
    assert [p.prompt for p in problems] == ["What is 2 + 3?", "Compute 10 / 4.", "How many primes are below 10?"]
    assert all(p.task == "math" and p.id.startswith("ingested:") for p in problems)
    assert problems[2].answer == "4"  # a numeric reference becomes text
    first = problems[0].id
    assert [(t.problem_id == first, t.sample) for t in traces] == [(True, 0), (False, 0), (True, 1), (False, 0)]
    assert traces[1].thinking == "10/4 = 2.5"  # think tags inside the fields are not doubled
    assert traces[1].text == "<think>10/4 = 2.5</think>\n\n\\boxed{2.5}"
    assert {t.teacher for t in traces} == {"ingested:d.json"}
    # ids are a stable hash of the text: the same file ingested twice gives the same ids
    assert [p.id for p in parse_file(tmp_path / "d.json", "r1")[0]] == [p.id for p in problems]
    assert [t.sampling["line"] for t in traces] == [2, 8, 14, 20]  # where each object opens


def test_messages_rows_with_reasoning_content_or_think_tags(tmp_path):
    rows = [
        {"id": 7, "answer": "12", "messages": [
            {"role": "system", "content": "Think step by step."}, {"role": "user", "content": "3*4?"},
            {"role": "assistant", "content": "\\boxed{12}", "reasoning_content": "3*4=12"}],
         "usage": {"prompt_tokens": 9, "completion_tokens": 11}},
        {"problem_id": "q2", "gtruth_answer": "1", "messages": [
            {"role": "user", "content": "1*1?"}, {"role": "assistant", "content": "<think>one</think>\n\n1"}]},
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    problems, traces = parse_file(path, "messages")
    assert [p.id for p in problems] == ["7", "q2"]
    assert traces[0].sampling["system_prompt"] == "Think step by step." and "system_prompt" not in traces[1].sampling
    assert (traces[0].thinking, traces[0].answer, traces[0].completion_tokens) == ("3*4=12", "\\boxed{12}", 11)
    assert (traces[1].thinking, traces[1].answer, traces[1].text) == ("one", "1", "<think>one</think>\n\n1")


def test_malformed_think_tags_stay_visible_to_curation(tmp_path):
    from reasondistill.thinking import split_thinking

    pairs = [("t <think>n</think>", "\\boxed{5}"), ("fine", "<think>hmm</think>\\boxed{5}"),
             ("<think>unclosed", "\\boxed{5}"), ("stray</think>", "\\boxed{5}"),
             ("<think>ok</think>", "\\boxed{5}"), (" ok ", "\\boxed{5}")]
    r1 = write_r1(tmp_path / "r1.json", [{"problem": f"p{i}", "gtruth_answer": "5", "message_thinking": t,
                                          "message_content": c} for i, (t, c) in enumerate(pairs)])
    msgs = tmp_path / "m.jsonl"
    msgs.write_text("".join(json.dumps({"answer": "5", "messages": [
        {"role": "user", "content": f"p{i}"},
        {"role": "assistant", "content": c, "reasoning_content": t}]}) + "\n" for i, (t, c) in enumerate(pairs)))
    for path, fmt in ((r1, "r1"), (msgs, "messages")):
        traces = parse_file(path, fmt)[1]
        assert [split_thinking(t.text)[2] for t in traces] == [False] * 4 + [True] * 2, fmt
        assert [(t.thinking, t.answer) for t in traces[4:]] == [("ok", "\\boxed{5}")] * 2
        assert traces[4].text == traces[5].text == "<think>ok</think>\n\n\\boxed{5}"


@pytest.mark.parametrize("fmt, row, field", [
    ("r1", {"problem": "p", "message_thinking": "t", "message_content": "c"}, "gtruth_answer"),
    ("r1", {"problem": ["p"], "gtruth_answer": "1", "message_thinking": "t", "message_content": "c"}, "problem"),
    ("messages", {"answer": "1", "messages": [{"role": "assistant", "content": "x"}]}, "messages"),
    ("messages", {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "answer"),
])
def test_a_malformed_row_names_file_line_and_field(tmp_path, fmt, row, field):
    good = {"problem": "p0", "gtruth_answer": "1", "message_thinking": "t", "message_content": "c"} if fmt == "r1" \
        else {"answer": "1", "messages": [{"role": "user", "content": "q0"}, {"role": "assistant", "content": "a"}]}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(RecordError) as err:
        parse_file(path, fmt)
    assert str(err.value).startswith(f"{path}:3: field '{field}")


def test_a_bad_file_fails_before_anything_is_written(tmp_path, tiny_model_dir, capsys):
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir)
    run = tmp_path / "run"
    assert main([str(write_r1(tmp_path / "good.json")), str(run), "--format", "r1", "--config", str(cfg)]) == 0
    traces = run / "generate/traces.jsonl"
    before = traces.read_bytes()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(R1_ROWS[:2], indent=1)[:-2] + ',\n {"problem": "x",\n "gtruth_answer": "1"}\n]')
    assert main([str(bad), str(run), "--format", "r1"]) == 2
    err = capsys.readouterr().err
    line = bad.read_text().split("\n").index(' {"problem": "x",') + 1
    assert line == 14 and f"{bad}:{line}: field 'message_thinking' is missing" in err
    assert traces.read_bytes() == before and not list(run.glob("generate/*.stale-*"))
    broken = tmp_path / "broken.json"
    broken.write_text('[\n{"problem": "x"},\n{"problem": }\n]')
    assert main([str(broken), str(run), "--format", "r1"]) == 2
    assert f"{broken}:3: not valid JSON" in capsys.readouterr().err


def test_the_pipeline_runs_on_ingested_traces_without_a_teacher(tmp_path, tiny_model_dir):
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir)
    run = tmp_path / "run"
    logs = []
    ingest(write_r1(tmp_path / "d.json"), run, "r1", config=cfg, log=logs.append)
    assert load_config(run / "config.yaml").teacher.kind == "ingested"
    pipe = Pipeline(load_config(run / "config.yaml"), log=logs.append, show_progress=False)
    pipe.generate()
    assert any("[skip] generate: traces were ingested" in line for line in logs)
    summary = pipe.curate()
    # verified with verify/math.py: 5, 5/2 = 2.5 and "There are 4." are right; 6 is wrong
    assert summary["verdicts"] == {"correct": 3, "wrong": 1} and summary["kept"] == 3
    assert (run / "problems/test.jsonl").exists() and (run / "problems/train.jsonl").exists()
    assert len(read_records(run / "problems/train.jsonl", Problem)) == 3  # the task did not overwrite them
    pipe.build()
    assert pipe.train()["s1"]["steps"] == 2
    logs.clear()
    pipe.run()  # everything up to date except evaluate and report; nothing regenerated
    for stage in ("curate", "build:s1", "train:s1"):
        assert f"[skip] {stage}: inputs and config unchanged" in logs
    assert "- decontamination (8-gram overlap with 6 test problems): 0 training problems dropped" in \
        (run / "report.md").read_text()
    # the teacher is listed as not evaluated, never silently dropped (issue 15)
    assert "[skip] evaluate:teacher: not evaluated (ingested traces)" in logs
    report = json.loads((run / "report.json").read_text())
    assert report["models"]["teacher"]["status"] == "not evaluated (ingested traces)" and "s1" in report["models"]
    assert "| teacher | – | not evaluated (ingested traces) |" in (run / "report.md").read_text()
    assert "not evaluated (ingested traces)" in (run / "report.html").read_text()
    with pytest.raises(ValueError, match="not evaluated \\(ingested traces\\): there is no teacher"):
        pipe.route()


def test_reingesting_another_file_keeps_the_old_traces_aside(tmp_path, tiny_model_dir):
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir)
    run = tmp_path / "run"
    ingest(write_r1(tmp_path / "a.json"), run, "r1", config=cfg, log=lambda s: None)
    first = (run / "generate/traces.jsonl").read_bytes()
    logs = []
    ingest(write_r1(tmp_path / "a.json"), run, "r1", log=logs.append)
    assert "[skip] ingest: inputs and config unchanged" in logs
    ingest(write_r1(tmp_path / "b.json", R1_ROWS[:2]), run, "r1", log=logs.append)
    assert (run / "generate/traces.jsonl.stale-1").read_bytes() == first
    assert len(read_records(run / "generate/traces.jsonl", Trace)) == 2


def test_ingested_run_without_traces_says_what_to_run(tmp_path, tiny_model_dir):
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_model_dir), [f"run_dir={tmp_path / 'run'}",
                                                                          "teacher.kind=ingested"])
    with pytest.raises(StageInputMissing, match="reasondistill ingest FILE"):
        Pipeline(cfg, log=lambda s: None).generate()


def test_a_training_problem_copied_from_the_test_set_is_dropped(tmp_path, tiny_model_dir):
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir)
    run = tmp_path / "run"
    ingest(write_r1(tmp_path / "d.json"), run, "r1", config=cfg, log=lambda s: None)
    test = read_records(run / "problems/test.jsonl", Problem)
    planted = {"problem": test[0].prompt, "gtruth_answer": test[0].answer, "message_thinking": "copied",
               "message_content": test[0].answer}
    ingest(write_r1(tmp_path / "d2.json", R1_ROWS + [planted]), run, "r1", log=lambda s: None)
    pipe = Pipeline(load_config(run / "config.yaml"), log=lambda s: None)
    summary = pipe.curate()
    planted_id = read_records(run / "problems/train.jsonl", Problem)[-1].id
    assert summary["dropped"]["contaminated"] == 1 and summary["kept"] == 3
    assert summary["decontamination"]["ids"] == [planted_id]
    assert planted_id not in {t.problem_id for t in read_records(run / "curate/curated.jsonl", Trace)}
    saved = json.loads((run / "curate/decontamination.json").read_text())
    assert saved["matches"][planted_id]["eval_id"] == test[0].id
    pipe.report()
    assert f"1 training problems dropped: `{planted_id}`" in (run / "report.md").read_text()


def test_with_a_math_task_the_task_checks_and_its_test_set_decontaminates(tmp_path, tiny_model_dir):
    """task: {name: math, test_path: ...}: test problems from the file, verification by the math task."""
    band = ("A rectangular band formation is a formation with $m$ band members in each of $r$ rows, where $m$ "
            "and $r$ are integers.")
    test_file = tmp_path / "math_test.jsonl"
    test_file.write_text(json.dumps({"problem": band + " What is the largest number of members?",
                                     "solution": "... \\boxed{98}", "unique_id": "test/algebra/1"}) + "\n")
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir)
    data = yaml.safe_load(cfg.read_text())
    data["task"] = {"name": "math", "test_path": str(test_file)}
    cfg.write_text(yaml.safe_dump(data))
    rows = R1_ROWS + [{"problem": "Recall: " + band.lower() + " Find m.", "gtruth_answer": "98",
                       "message_thinking": "...", "message_content": "\\boxed{98}"}]
    run = tmp_path / "run"
    ingest(write_r1(tmp_path / "d.json", rows), run, "r1", config=cfg, log=lambda s: None)
    pipe = Pipeline(load_config(run / "config.yaml"), log=lambda s: None)
    assert pipe.task.name == "math"
    assert [p.id for p in read_records(run / "problems/test.jsonl", Problem)] == ["math:test/algebra/1"]
    summary = pipe.curate()
    assert summary["verdicts"] == {"correct": 4, "wrong": 1}
    assert summary["dropped"]["contaminated"] == 1 and summary["kept"] == 3
    assert summary["decontamination"]["ids"] == [read_records(run / "problems/train.jsonl", Problem)[-1].id]


def test_one_problem_id_with_two_texts_is_an_error_but_spacing_is_not(tmp_path):
    rows = [dict(R1_ROWS[0], id="p1"), dict(R1_ROWS[1], id="p1")]
    with pytest.raises(RecordError, match=r"d.json:9: problem 'p1' was seen at line 2 with a different problem text"):
        parse_file(write_r1(tmp_path / "d.json", rows), "r1")
    spaced = dict(R1_ROWS[0], problem="What  is 2 +\n3?")
    problems, traces = parse_file(write_r1(tmp_path / "e.json", [R1_ROWS[0], spaced]), "r1")
    assert len(problems) == 1 and [t.sample for t in traces] == [0, 1]


@pytest.mark.parametrize("limit, kept", [(1, 0), (10_000, 3)])
def test_length_limits_hold_for_ingested_traces_without_token_counts(tmp_path, tiny_model_dir, limit, kept):
    """The rows carry no usage: their completions are counted with the student's tokenizer."""
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, max_completion_tokens=limit)
    run = tmp_path / "run"
    ingest(write_r1(tmp_path / "d.json"), run, "r1", config=cfg, log=lambda s: None)
    assert all(t.completion_tokens == 0 for t in read_records(run / "generate/traces.jsonl", Trace))
    summary = Pipeline(load_config(run / "config.yaml"), log=lambda s: None, show_progress=False).curate()
    assert summary["kept"] == kept and summary["tokens_counted_locally"] >= 3
    assert summary["dropped"].get("too_long", 0) == 3 - kept
