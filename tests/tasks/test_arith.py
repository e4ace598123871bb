from reasondistill.tasks.arith import ChainedArithmetic, apply_op, parse_prompt, split_of


def test_deterministic_and_disjoint(arith):
    a = arith.problems("train", 500, seed=1)
    assert [p.id for p in a] == [p.id for p in arith.problems("train", 500, seed=1)]
    assert [p.id for p in a] != [p.id for p in arith.problems("train", 500, seed=2)]
    test = {p.prompt for seed in range(3) for p in arith.problems("test", 300, seed=seed)}
    train = {p.prompt for seed in range(3) for p in arith.problems("train", 300, seed=seed)}
    assert not test & train
    assert all(split_of(p) == "test" for p in test)
    assert len({p.prompt for p in a}) == 500


def test_solver_matches_direct_computation(arith):
    for p in arith.problems("train", 200, seed=0):
        start, ops = parse_prompt(p.prompt)
        v = start
        for op, d in ops:
            v = {"+": v + d, "-": v - d, "*": v * d}[op] % 100
        assert int(p.answer) == v and p.difficulty == len(ops) == len(p.solution.splitlines())
        assert 3 <= p.difficulty <= 5
    assert apply_op(5, "-", 9) == 96


def test_check_verdicts(arith):
    p = arith.problems("test", 1, seed=0)[0]
    assert arith.check(p, p.answer).verdict == "correct"
    assert arith.check(p, f" {p.answer}\n").verdict == "correct"
    wrong = str((int(p.answer) + 1) % 100)
    assert arith.check(p, wrong).verdict == "wrong"
    assert arith.check(p, "no idea").verdict == "unparseable"
    assert arith.check(p, f"{p.answer} or 3").verdict == "unparseable"  # cannot verify is never wrong


def test_first_wrong_step(arith):
    p = arith.make(47, [("+", 5), ("*", 3), ("-", 8)])
    assert p.solution == "47+5=52\n52*3=56\n56-8=48" and p.answer == "48"
    assert arith.first_wrong_step(p, p.solution) is None
    assert arith.first_wrong_step(p, "47+5=52\n52*3=57\n57-8=49") == 1


def test_too_many_problems_is_a_clear_error():
    import pytest

    with pytest.raises(ValueError, match="split holds"):
        ChainedArithmetic(1, 1).problems("test", 10_000, seed=0)
