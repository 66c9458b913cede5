"""`geosync demo` as a user runs it: real processes, JSON report, timeouts and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
DEMO = [sys.executable, "-m", "geosync", "demo"]


def children_of(pid: int) -> list[int]:
    """Direct child processes of `pid` that are still alive."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def test_demo_replicates_everything_and_reports_gitlab_fields(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *DEMO,
            "--dir",
            str(tmp_path / "demo"),
            "--blobs",
            "30",
            "--repos",
            "3",
            "--churn",
            "--churn-seconds",
            "3",
            "--exit-when-synced",
            "--timeout",
            "150",
            "--json",
            "--seed",
            "7",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    primary, secondary = report["primary"], report["secondary"]
    for plural in ("uploads", "package_files", "snippets"):
        total = primary[f"{plural}_count"]
        assert secondary[f"{plural}_synced_count"] == total
        assert secondary[f"{plural}_registry_count"] == total
        assert secondary[f"{plural}_verified_count"] == total
        assert secondary[f"{plural}_failed_count"] == 0
        assert primary[f"{plural}_checksummed_count"] == total
        assert primary[f"{plural}_checksum_failed_count"] == 0
        assert f"{plural}_verification_failed_count" in secondary
        assert f"{plural}_verification_total_count" in secondary
    assert primary["uploads_count"] + primary["package_files_count"] > 0
    # The primary listened before the secondary started: no sync met a closed port.
    worker_log = (tmp_path / "demo" / "logs" / "secondary-worker.log").read_text()
    assert "cannot reach" not in worker_log and "Couldn't connect" not in worker_log


def test_demo_times_out_with_a_clear_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *DEMO,
            "--dir",
            str(tmp_path / "demo"),
            "--blobs",
            "20",
            "--repos",
            "0",
            # Changes keep coming for longer than the timeout: the secondary is never complete.
            "--churn",
            "--churn-seconds",
            "60",
            "--exit-when-synced",
            "--timeout",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "timed out after 1 s" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    result = subprocess.run(
        [*DEMO, "--dir", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "not empty" in result.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_ctrl_c_stops_both_sites(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [*DEMO, "--dir", str(tmp_path / "demo"), "--blobs", "10", "--repos", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while len(children_of(process.pid)) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    sites = children_of(process.pid)
    assert len(sites) == 4, "two sites with a web server and a worker each"
    os.kill(process.pid, signal.SIGINT)
    assert process.wait(60) == 130
    assert all(not Path(f"/proc/{pid}").exists() or children_of(pid) == [] for pid in sites)
    assert [pid for pid in sites if Path(f"/proc/{pid}/stat").exists()] == []
