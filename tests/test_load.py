"""The load-test tool's short form: real Chromium sessions against a started server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from browser_support import CHROMIUM, ROOT

from benchmarks import load

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def test_short_load_run_reports_every_phase_without_errors(tmp_path):
    if not CHROMIUM.exists():
        if os.environ.get("CAM_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is missing and CAM_REQUIRE_BROWSER=1 (apt-get install -y chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    out = tmp_path / "load.json"
    # A process of its own: the tool runs its own asyncio loop, as it does from the command line.
    command = [sys.executable, "-m", "benchmarks.load", "--start", "--sessions", "2", "--soak", "3",
               "--soak-per-session", "2", "--json", str(out), "--server-cpus", "", "--browser-cpus", ""]  # fmt: skip
    status = subprocess.run(command, cwd=ROOT, timeout=900).returncode
    report = json.loads(out.read_text())
    assert status == 0
    phases = [row["phase"] for row in report["rounds"]]
    assert phases == ["open", "fresh upload", "fresh upload 2", "cached rerun"]
    for row in report["rounds"]:
        assert row["errors"] == 0 and row["sessions"] == 2
        assert 0 < row["p50_s"] <= row["max_s"]
        assert row["cpu_s_per_request"] > 0 and row["rss_mb"] > 100
    fresh = next(r for r in report["rounds"] if r["phase"] == "fresh upload")
    cached = next(r for r in report["rounds"] if r["phase"] == "cached rerun")
    assert cached["cpu_s_per_request"] < fresh["cpu_s_per_request"], "a cached rerun computes nothing"
    assert [point["uploads"] for point in report["soak"]] == [1, 2, 3]
    assert all(point["rss_mb"] > 100 for point in report["soak"])


def test_load_tool_refuses_a_remote_url():
    with pytest.raises(SystemExit, match="loopback"):
        load.check_loopback("http://example.com:8501")
