"""Export of curated traces in TRL's conversational formats: structure, content and round trips."""

import json

import pytest
import yaml

from reasondistill.data.build import make_examples, tokenize_examples
from reasondistill.export import check_rows, export, main
from reasondistill.ingest import ingest, parse_file
from reasondistill.pipeline import Pipeline
from reasondistill.config import load_config
from reasondistill.records import Problem, Trace, read_records
from reasondistill.thinking import split_thinking

ROWS = [
    {"problem": "What is 2 + 3?", "gtruth_answer": "5", "message_thinking": "2 plus 3 is 5.",
     "message_content": "The answer is \\boxed{5}."},
    {"problem": "What is 2 + 3?", "gtruth_answer": "5", "message_thinking": "guess", "message_content": "\\boxed{6}"},
    {"problem": "Compute 10 / 4.", "gtruth_answer": "\\frac{5}{2}", "message_thinking": "10/4 = 2.5",
     "message_content": "\\boxed{2.5}"},
]


@pytest.fixture
def run(tmp_path, tiny_model_dir):
    cfg = {"task": {"name": "chained_arith", "min_ops": 3, "max_ops": 4, "n_test": 5},
           "teacher": {"model": str(tiny_model_dir)},
           "students": [{"name": "full", "init": {"hidden_size": 16}},
                        {"name": "short", "target": "answers_only", "init": {"hidden_size": 16}}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    ingest(tmp_path / "d.json", tmp_path / "run", "r1", config=tmp_path / "c.yaml", log=lambda s: None)
    Pipeline(load_config(tmp_path / "run/config.yaml"), log=lambda s: None).curate()
    return tmp_path / "run"


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_messages_rows_hold_the_curated_traces(run):
    path, n = export(run, "messages")
    assert path == run / "export/traces.messages.jsonl" and n == 2
    rows = read_jsonl(path)
    assert check_rows(rows, "messages") == 2
    problems = {p.id: p for p in read_records(run / "problems/train.jsonl", Problem)}
    curated = read_records(run / "curate/curated.jsonl", Trace)
    for row, tr in zip(rows, curated, strict=True):
        user, assistant = row["messages"]
        assert user == {"role": "user", "content": problems[tr.problem_id].prompt}
        assert assistant["role"] == "assistant"
        assert assistant["content"] == f"<think>{tr.thinking}</think>\n\n{tr.answer}"
        assert split_thinking(assistant["content"]) == (tr.thinking, tr.answer, True)
    assert "\\boxed{6}" not in path.read_text()  # the wrong trace was curated away


def test_prompt_completion_rows_and_the_students_target(run, tmp_path):
    path, _ = export(run, "prompt_completion", out=tmp_path / "pc.jsonl", student="short")
    rows = read_jsonl(path)
    assert check_rows(rows, "prompt_completion") == 2
    assert all(set(r) == {"prompt", "completion"} for r in rows)
    by_prompt = {r["prompt"][0]["content"]: r for r in rows}
    assert by_prompt["What is 2 + 3?"]["prompt"] == [{"role": "user", "content": "What is 2 + 3?"}]
    assert by_prompt["What is 2 + 3?"]["completion"] == [{"role": "assistant", "content": "The answer is \\boxed{5}."}]
    full = {r["prompt"][0]["content"]: r for r in read_jsonl(export(run, "prompt_completion", student="full")[0])}
    want = "<think>2 plus 3 is 5.</think>\n\nThe answer is \\boxed{5}."
    assert full["What is 2 + 3?"]["completion"][0]["content"] == want


def test_without_think_tags_the_thinking_is_still_there(run, tmp_path):
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("think_tags: true", "think_tags: false"))
    rows = read_jsonl(export(run, "messages", out=tmp_path / "x.jsonl")[0])
    assert "2 plus 3 is 5.\n\nThe answer is \\boxed{5}." in [r["messages"][1]["content"] for r in rows]
    assert "<think>" not in json.dumps(rows)


def test_the_chat_template_renders_exactly_what_build_trains_on(run, tiny_model_dir):
    """What TRL's SFTTrainer sees after applying the chat template equals our build's token ids."""
    from reasondistill.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    rows = read_jsonl(export(run, "messages")[0])
    problems = {p.id: p for p in read_records(run / "problems/train.jsonl", Problem)}
    ids, _ = tokenize_examples(tok, make_examples(problems, read_records(run / "curate/curated.jsonl", Trace),
                                                  "traces"))
    rendered = [tok(tok.apply_chat_template(r["messages"], tokenize=False), add_special_tokens=False)["input_ids"]
                for r in rows]
    assert rendered == ids


def test_round_trip_through_ingest(run, tmp_path):
    path, _ = export(run, "messages", out=tmp_path / "ref.jsonl", with_reference=True)
    problems, traces = parse_file(path, "messages")
    curated = read_records(run / "curate/curated.jsonl", Trace)
    assert [(t.problem_id, t.thinking, t.answer, t.text) for t in traces] == \
        [(t.problem_id, t.thinking, t.answer, t.text) for t in curated]
    originals = {p.id: p for p in read_records(run / "problems/train.jsonl", Problem)}
    assert all((p.prompt, p.answer) == (originals[p.id].prompt, originals[p.id].answer) for p in problems)


def test_trl_accepts_the_file_when_installed(run):
    pytest.importorskip("trl")  # not a dependency; when present, its own format checks must agree
    from trl.data_utils import is_conversational

    for fmt in ("messages", "prompt_completion"):
        assert all(is_conversational(r) for r in read_jsonl(export(run, fmt)[0]))


def test_cli_errors_are_clear(run, tmp_path, capsys):
    assert main([str(run), "--format", "messages", "--student", "nobody"]) == 2
    assert "no student named 'nobody'" in capsys.readouterr().err
    assert main([str(tmp_path / "empty"), "--format", "messages"]) == 2
    assert "has no config.yaml" in capsys.readouterr().err
    assert main([str(run), "--format", "prompt_completion"]) == 0
    assert "2 rows" in capsys.readouterr().out
    with pytest.raises(ValueError, match="row 1: 'messages'"):
        check_rows([{"messages": [{"role": "user"}]}], "messages")
