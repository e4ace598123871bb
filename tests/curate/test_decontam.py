"""Decontamination: n-gram overlap with evaluation problems is found, dropped and reported."""

import json

from conftest import hang_guard
from reasondistill.config import DecontamConfig
from reasondistill.curate.decontam import (apply_to_curation, find_contaminated, normalize, word_ngrams)
from reasondistill.records import Problem, Trace, write_records

TEST_PROBLEM = ("A rectangular band formation is a formation with m band members in each of r rows, "
                "where m and r are integers.")


def problem(pid, prompt):
    return Problem(id=pid, task="math", prompt=prompt, answer="1")


def trace(pid, sample=0):
    return Trace(problem_id=pid, sample=sample, thinking="t", answer="1", text="<think>t</think>\n\n1",
                 prompt_tokens=0, completion_tokens=0, finish_reason="stop", teacher="x")


def test_normalize_and_ngrams_follow_open_r1():
    assert normalize("  The  Sky\n is BLUE. ") == "the sky is blue."
    assert normalize("a,b  c.", strip_punctuation=True) == "a b c"
    assert word_ngrams("a b c d", 3) == {"a b c", "b c d"}
    assert word_ngrams("a b", 3) == set()


def test_a_planted_overlap_is_found_and_a_different_problem_is_kept():
    evaluation = [problem("test-1", TEST_PROBLEM), problem("test-2", "What is 2+2?")]
    # eight consecutive words of the test problem, with other case and spacing, inside a longer text
    planted = "Consider this:  a RECTANGULAR band formation is a formation with\nm band members. Find m."
    seven = "a rectangular band formation is a formation"  # only seven shared words: not flagged
    train = [problem("planted", planted), problem("seven", seven + " of drums"),
             problem("other", "How many ways can 8 people sit around a round table with two of them apart?")]
    hits = find_contaminated(train, evaluation, ngram=8)
    assert set(hits) == {"planted"}
    assert hits["planted"]["eval_id"] == "test-1"
    assert hits["planted"]["match"] == "a rectangular band formation is a formation with"
    assert set(find_contaminated(train, evaluation, ngram=7)) == {"planted", "seven"}


def test_an_exact_copy_shorter_than_n_is_found():
    hits = find_contaminated([problem("a", "what is 2+2?"), problem("b", "what is 2+3?")],
                             [problem("t", "What is  2+2?")], ngram=8)
    assert set(hits) == {"a"}


def test_curation_drops_the_traces_and_reports_counts_and_ids(tmp_path):
    test_path = tmp_path / "problems/test.jsonl"
    write_records(test_path, [problem("test-1", TEST_PROBLEM)])
    train = [problem("planted", "Look: " + TEST_PROBLEM.upper()), problem("clean", "Something else entirely here")]
    kept = [trace("planted", 0), trace("planted", 1), trace("clean", 0)]
    summary = {"dropped": {"not_correct:wrong": 2}, "kept": 3, "problems_with_a_kept_trace": 2}
    out = tmp_path / "curate/decontamination.json"
    left = apply_to_curation(kept, summary, train, test_path, DecontamConfig(), out)
    assert [t.problem_id for t in left] == ["clean"]
    assert summary["dropped"] == {"not_correct:wrong": 2, "contaminated": 2}
    assert summary["kept"] == 1 and summary["problems_with_a_kept_trace"] == 1
    assert summary["decontamination"]["ids"] == ["planted"]
    saved = json.loads(out.read_text())
    assert saved["enabled"] and saved["contaminated_problems"] == 1 and saved["traces_dropped"] == 2
    assert saved["ids"] == ["planted"] and saved["matches"]["planted"]["eval_id"] == "test-1"
    assert saved["eval_problems"] == 1 and saved["train_problems"] == 2


def test_turned_off_keeps_everything_and_says_so(tmp_path):
    kept = [trace("planted")]
    summary = {"dropped": {}, "kept": 1}
    out = tmp_path / "d.json"
    assert apply_to_curation(kept, summary, [problem("planted", TEST_PROBLEM)], tmp_path / "none.jsonl", None,
                             out) == kept
    assert json.loads(out.read_text()) == {"enabled": False} and "decontamination" not in summary


def test_chained_arithmetic_is_untouched_and_cheap(arith):
    """The demo's prompts are one 'word' each and train/test are disjoint: nothing may be dropped."""
    train = arith.problems("train", 8000, seed=0)
    test = arith.problems("test", 400, seed=0)
    assert all(len(p.prompt.split()) < 8 for p in train)
    with hang_guard(60, "find_contaminated on 8,000 x 400 problems"):  # ~0.1 s: an index, no pairwise scan
        assert find_contaminated(train, test, ngram=8) == {}
    # but a test problem copied into training is still caught
    assert set(find_contaminated(train[:5] + test[:1], test, ngram=8)) == {test[0].id}
