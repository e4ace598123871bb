"""report.html in a real browser: headless Chromium opens the file, the page tests itself
(``#selftest``: tables filled, every plot decoded, the trace viewer's filters change what is shown)
and writes the outcome into the DOM; no console output at all; a screenshot for the reviewer.

Installs nothing: uses /usr/bin/chromium when present (``apt-get install -y chromium``), else skips.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fake_run import make_fake_run
from reasondistill.report.build import write_report

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000"]


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    write_report(root, make_fake_run(root))
    return root


def test_report_html_is_self_contained(report_dir):
    html = (report_dir / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "external resource in report.html"
    assert "<link" not in html and html.count("data:image/png;base64,") >= 6
    data = json.loads(re.search(r'<script type="application/json" id="trace-data">(.*?)</script>', html, re.S)
                      .group(1).replace("<\\/", "</"))
    assert data["models"] == ["student", "teacher"] and len(data["problems"]) == 40
    modes = {o["failure"] for p in data["problems"] for o in p["outputs"].values()}
    assert {"correct", "step_error", "truncated"} <= modes
    assert 'id="models-table"' in html and 'id="compare-table"' in html


def _chromium(args, tmp_path, timeout=60):
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium not installed "
                    "(apt-get install -y chromium); the browser check of report.html is skipped")
def test_report_renders_and_its_viewer_filters_in_chromium(report_dir, tmp_path):
    url = (report_dir / "report.html").as_uri()
    out = _chromium(["--dump-dom", url + "#selftest"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    console = [ln for ln in out.stderr.splitlines() if ":CONSOLE" in ln]
    assert not console, "console output from report.html:\n" + "\n".join(console)
    m = re.search(r'<pre id="selftest" data-result="(\w+)">(.*?)</pre>', out.stdout, re.S)
    assert m, "the self-test did not run (no result in the DOM)"
    result = json.loads(m.group(2).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                        .replace("&gt;", ">"))
    failed = [c for c in result["checks"] if not c["ok"]]
    assert m.group(1) == "pass" and not failed, failed
    names = {c["name"] for c in result["checks"]}
    assert {"every plot decoded", "filter correct: count", "filter difficulty", "search by text finds the problem"} <= names
    assert 'data-status="ok"' in out.stdout

    shot = tmp_path / "report.png"
    out = _chromium([f"--screenshot={shot}", "--window-size=1400,3200", "--hide-scrollbars", url], tmp_path)
    assert shot.exists() and shot.read_bytes()[:4] == b"\x89PNG", out.stderr[-2000:]
    assert shot.stat().st_size > 50_000  # a rendered page, not a blank one
    keep = REPO / "runs/screenshots/report.png"
    keep.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, keep)
