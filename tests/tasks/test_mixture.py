"""Mixtures: ratios, caps, determinism, unique ids, composition and per-source checking."""

import json
from collections import Counter

import pytest

from reasondistill.tasks.base import load_task
from reasondistill.tasks.mixture import apportion


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def files(tmp_path):
    gsm = [{"question": f"Tom has {i} apples and buys {i} more. How many?", "answer": f"{i}+{i}={2 * i}\n#### {2 * i}"}
           for i in range(300)]
    mc = [{"question": f"Pick {i}", "choices": [str(i), str(i + 1)], "answer": 0} for i in range(100)]
    # the same questions as `gsm`, as a plain file: ids must still not collide across sources
    plain = [{"question": r["question"], "answer": str(2 * i)} for i, r in enumerate(gsm[:50])]
    return {"gsm": jsonl(tmp_path / "gsm.jsonl", gsm), "mc": jsonl(tmp_path / "mc.jsonl", mc),
            "plain": jsonl(tmp_path / "plain.jsonl", plain)}


def mixture(files, **kw):
    sources = [{"label": "gsm", "ratio": 0.6, "spec": {"name": "gsm8k", "path": files["gsm"]}},
               {"label": "mc", "ratio": 0.3, "cap": kw.pop("mc_cap", None),
                "spec": {"name": "choice", "path": files["mc"], "strategy": "Eliminate wrong options first."}},
               {"label": "plain", "ratio": 0.1, "spec": {"name": "file", "path": files["plain"]}}]
    return load_task({"name": "mixture", "sources": sources})


def test_apportion():
    assert apportion(10, [0.6, 0.3, 0.1]) == [6, 3, 1]
    assert apportion(7, [1, 1, 1]) == [3, 2, 2]
    assert sum(apportion(101, [0.5, 0.25, 0.25])) == 101


def test_ratios_ids_sources_and_determinism(files):
    task = mixture(files)
    got, comp = task.select("train", 100, seed=0)
    counts = Counter(p.meta["source"] for p in got)
    assert counts == {"gsm": 60, "mc": 30, "plain": 10}
    assert {k: v["taken"] for k, v in comp["sources"].items()} == counts
    assert len({p.id for p in got}) == 100
    assert all(p.id.startswith(p.meta["source"] + ":") and p.task == p.meta["source"] for p in got)
    assert [p.id for p in mixture(files).problems("train", 100, seed=0)] == [p.id for p in got]
    other = [p.id for p in mixture(files).problems("train", 100, seed=1)]
    assert other != [p.id for p in got] and Counter(i.split(":")[0] for i in other) == counts
    assert Counter(p.meta["source"] for p in got[:30]) != {"gsm": 30}  # shuffled, not source by source
    # the strategy of a source reaches only that source's problems
    assert {p.meta.get("strategy") for p in got if p.meta["source"] == "mc"} == {"Eliminate wrong options first."}
    assert all("strategy" not in p.meta for p in got if p.meta["source"] != "mc")


def test_caps_and_shortfall_are_reported(files):
    task = mixture(files, mc_cap=12)
    got, comp = task.select("train", 100, seed=0)
    assert Counter(p.meta["source"] for p in got) == {"gsm": 60, "mc": 12, "plain": 10}
    assert comp["sources"]["mc"] == {"ratio": pytest.approx(0.3), "cap": 12, "available": 12, "wanted": 30,
                                     "taken": 12}
    assert comp["requested"] == 100 and comp["total"] == 82


def test_without_n_the_scarcest_source_sets_the_size(files):
    task = mixture(files)
    have = {k: len(load_task({"name": n, "path": files[k]}).problems("train", None, 0))
            for k, n in (("gsm", "gsm8k"), ("mc", "choice"), ("plain", "file"))}
    got, comp = task.select("train", None, seed=0)
    n = min(int(have[k] / share) for k, share in (("gsm", 0.6), ("mc", 0.3), ("plain", 0.1)))
    assert comp["requested"] == n == len(got)
    assert Counter(p.meta["source"] for p in got)["mc"] == have["mc"]  # the scarcest source is used up
    assert all(v["taken"] == v["wanted"] for v in comp["sources"].values())


def test_check_dispatches_to_the_source(files):
    task = mixture(files)
    got = task.problems("test", 30, seed=0)
    gsm = next(p for p in got if p.meta["source"] == "gsm")
    mc = next(p for p in got if p.meta["source"] == "mc")
    assert task.check(gsm, f"#### {gsm.answer}").verdict == "correct"
    assert task.check(mc, "The answer is A").verdict == "correct"
    assert task.check(mc, "The answer is B").verdict == "wrong"
    assert task.check(mc, f"#### {gsm.answer}").verdict != "correct"


def test_mixture_with_the_generated_task(files):
    task = load_task({"name": "mixture", "sources": [
        {"label": "arith", "ratio": 1, "spec": {"name": "chained_arith", "min_ops": 2, "max_ops": 3}},
        {"label": "gsm", "ratio": 1, "spec": {"name": "gsm8k", "path": files["gsm"]}}]})
    got = task.problems("train", 40, seed=0)
    assert Counter(p.meta["source"] for p in got) == {"arith": 20, "gsm": 20}
    arith = next(p for p in got if p.meta["source"] == "arith")
    assert arith.id.startswith("arith:") and task.check(arith, arith.answer).verdict == "correct"
    assert task.first_wrong_step(arith, arith.solution) is None
