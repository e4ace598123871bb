"""build.order: curriculum writes the examples easy to hard and training takes them in that order."""

from __future__ import annotations

import pytest

from reasondistill.data.build import Example, build_dataset
from reasondistill.data.curriculum import curriculum_order, epoch_batches
from reasondistill.data.dataset import TokenizedDataset


def examples():
    # problem id -> completion; pass rates make "a" hardest and "c" easiest; lengths the other way round
    return [Example("a", "1+1", "x"), Example("b", "2+2", "xxxx"), Example("c", "3+3", "xxxxxxxxx"),
            Example("d", "4+4", "xx")]


RATES = {"a": 0.0, "b": 0.5, "c": 1.0, "d": 0.5}


def test_curriculum_order_by_pass_rate_and_by_length():
    ex = examples()
    by_rate = curriculum_order(ex, [1, 4, 9, 2], "pass_rate", seed=0, pass_rates=RATES)
    assert [ex[i].problem_id for i in by_rate][0] == "c" and [ex[i].problem_id for i in by_rate][-1] == "a"
    assert {ex[i].problem_id for i in by_rate[1:3]} == {"b", "d"}  # a tie, broken by a seeded hash
    assert [ex[i].problem_id for i in curriculum_order(ex, [1, 4, 9, 2], "length", seed=0)] == ["a", "d", "b", "c"]
    with pytest.raises(ValueError, match="no teacher pass rate for problem 'd'"):
        curriculum_order(ex, [1, 4, 9, 2], "pass_rate", seed=0, pass_rates={"a": 0, "b": 0, "c": 0})


@pytest.mark.parametrize("by, want", [("pass_rate", None), ("length", ["a", "d", "b", "c"])])
def test_a_curriculum_build_is_trained_in_file_order(tmp_path, char_tokenizer, by, want):
    stats = build_dataset(examples(), char_tokenizer, tmp_path, max_length=64, val_fraction=0.0, seed=0,
                          order="curriculum", curriculum_by=by, pass_rates=RATES)
    assert stats["order"] == {"order": "curriculum", "by": by}
    ds = TokenizedDataset(tmp_path / "train.safetensors")
    assert ds.order == "curriculum"
    ids = ds.problem_ids
    if want:
        assert ids == want
    else:
        assert ids[0] == "c" and ids[-1] == "a"
    # every epoch easy to hard, in batches of consecutive examples
    assert epoch_batches(ds, 3, seed=0, epoch=0) == epoch_batches(ds, 3, seed=5, epoch=1) == [[0, 1, 2], [3]]


def test_a_shuffled_build_is_shuffled_per_epoch(tmp_path, char_tokenizer):
    many = [Example(f"p{i}", f"{i}+{i}", "x" * (i % 7 + 1)) for i in range(40)]
    build_dataset(many, char_tokenizer, tmp_path, max_length=64, val_fraction=0.0, seed=0)
    ds = TokenizedDataset(tmp_path / "train.safetensors")
    assert ds.order == "shuffle"
    e0, e1 = epoch_batches(ds, 8, seed=0, epoch=0), epoch_batches(ds, 8, seed=0, epoch=1)
    assert e0 != e1 and sorted(i for b in e0 for i in b) == list(range(40))
    assert [i for b in e0 for i in b] != list(range(40))
