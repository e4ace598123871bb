"""`reasondistill compare` refuses runs measured on different test sets or by different verifiers,
and with --allow-mismatch says so loudly in its output."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from reasondistill.config import RunConfig
from reasondistill.report.build import write_report
from reasondistill.report.compare import IncomparableRuns, compare_runs, main

_spec = importlib.util.spec_from_file_location("fake_run", Path(__file__).parent / "fake_run.py")
fake_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_run)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    a, b, c, d = (root / x for x in ("a", "b", "c", "d"))
    cfg = fake_run.make_fake_run(a)
    write_report(a, cfg)
    shutil.copytree(a, b)  # the same test set and verifier
    write_report(b, cfg.model_copy(update={"run_dir": str(b)}))
    write_report(c, fake_run.make_fake_run(c, n=30))  # 30 test problems instead of 40
    shutil.copytree(a, d)
    exact = RunConfig.model_validate({"run_dir": str(d), "task": {"name": "file", "path": "qa.jsonl",
                                                                  "verifier": "exact"},
                                      "students": [{"name": "student", "init": {}}]})
    write_report(d, exact)  # same problems, another verifier
    return a, b, c, d


def test_reports_carry_the_hashes(runs):
    a, _, c, d = (json.loads((r / "report.json").read_text()) for r in (runs[0], runs[1], runs[2], runs[3]))
    assert a["test_set"]["n"] == 40 and len(a["test_set"]["sha256"]) == 64
    assert a["test_set"]["sha256"] != c["test_set"]["sha256"]
    assert a["verifier"]["tasks"] == [{"name": "chained_arith"}]
    assert d["verifier"]["tasks"] == [{"name": "file", "verifier": "exact"}]
    assert a["verifier"]["sha256"] != d["verifier"]["sha256"] and a["test_set"] == d["test_set"]


def test_same_test_set_and_verifier_compare_without_warning(runs, tmp_path):
    res = compare_runs([runs[0], runs[1]], tmp_path / "ab")
    assert res["warnings"] == [] and "WARNING" not in (tmp_path / "ab/compare.md").read_text()


@pytest.mark.parametrize("other, what", [(2, "test set differs"), (3, "verifier differs")])
def test_different_test_sets_or_verifiers_are_refused_or_flagged(runs, tmp_path, capsys, other, what):
    with pytest.raises(IncomparableRuns, match=what):
        compare_runs([runs[0], runs[other]], tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert main([str(runs[0]), str(runs[other]), "--out", str(tmp_path / "y")]) == 2
    assert what in capsys.readouterr().err
    assert main([str(runs[0]), str(runs[other]), "--out", str(tmp_path / "z"), "--allow-mismatch"]) == 0
    out = capsys.readouterr()
    assert f"WARNING: NOT COMPARABLE: {what}" in out.err and f"WARNING: NOT COMPARABLE: {what}" in out.out
    assert what in (tmp_path / "z/compare.md").read_text() and what in (tmp_path / "z/compare.html").read_text()
    assert json.loads((tmp_path / "z/compare.json").read_text())["warnings"]


def test_a_report_without_hashes_is_compared_with_a_warning(runs, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(runs[0], old)
    rep = json.loads((old / "report.json").read_text())
    del rep["test_set"], rep["verifier"]
    (old / "report.json").write_text(json.dumps(rep))
    res = compare_runs([runs[0], old], tmp_path / "o")
    assert len(res["warnings"]) == 1 and "cannot check" in res["warnings"][0] and "old" in res["warnings"][0]
