"""`geosync demo` as a user runs it: real processes, JSON report, timeouts and Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest

from geosync.demo.object_storage import object_storage_missing

pytestmark = pytest.mark.slow
DEMO = [sys.executable, "-m", "geosync", "demo"]


def children_of(pid: int) -> list[int]:
    """Direct child processes of `pid` that are still alive and run geosync (the demo's seeding
    runs short-lived `git` children beside the sites, which are not counted)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z" and b"geosync" in command[1:3]:
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


def test_demo_object_storage_replicates_blobs_between_buckets(tmp_path: Path) -> None:
    missing = object_storage_missing()
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"geosync demo --object-storage must run in CI: {missing}")
        pytest.skip(missing)
    result = subprocess.run(
        [
            *DEMO,
            "--object-storage",
            "--dir",
            str(tmp_path / "demo"),
            "--blobs",
            "16",
            "--repos",
            "1",
            "--churn",
            "--churn-seconds",
            "2",
            "--exit-when-synced",
            "--timeout",
            "150",
            "--json",
            "--seed",
            "11",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "blobs in object storage: an S3 server (moto) at http://127.0.0.1:" in result.stderr
    report = json.loads(result.stdout)
    primary, secondary = report["primary"], report["secondary"]
    assert primary["object_storages"] == secondary["object_storages"] == "packages,uploads"
    for plural in ("uploads", "package_files"):
        total = primary[f"{plural}_count"]
        assert secondary[f"{plural}_synced_count"] == secondary[f"{plural}_verified_count"] == total
        assert secondary[f"{plural}_failed_count"] == 0
        assert secondary[f"{plural}_left_to_object_storage_count"] == 0  # the demo copies them
    assert primary["uploads_count"] + primary["package_files_count"] > 0
    config = tomllib.loads((tmp_path / "demo" / "secondary" / "geosync.toml").read_text())
    assert config["blob_storages"]["uploads"]["url"] == "s3://geosync-demo-secondary/uploads"


def test_demo_times_out_with_a_clear_message_and_removes_its_scratch(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *DEMO,
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
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 1
    assert "timed out after 1 s" in result.stderr
    assert "Traceback" not in result.stderr
    assert "run with --keep to keep its logs" in result.stderr
    assert list(tmp_path.iterdir()) == []  # the scratch directory went with the failure


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


class Lines:
    """The lines a running process writes to a pipe, collected by a thread as they come."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first line matching `pattern`, waiting for it up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if found := re.search(pattern, line):
                    return found
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines))


def test_a_running_demo_prints_urls_configs_and_a_token_that_works_and_cleans_up(
    tmp_path: Path,
) -> None:
    process = subprocess.Popen(
        [*DEMO, "--blobs", "4", "--repos", "1", "--timeout", "300"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    try:
        err = Lines(process.stderr)
        scratch = Path(err.wait_for(r" in (\S+) \(removed at exit; --keep keeps it\)", 10)[1])
        assert err.lines[0].startswith("geosync demo:")  # said before anything else
        primary = err.wait_for(r"^  primary    (\S+)  config (\S+)$", 90)
        primary_url, primary_config = primary.groups()
        secondary_url, secondary_config = err.wait_for(
            r"^  secondary  (\S+)  config (\S+)$", 5
        ).groups()
        token = err.wait_for(r"admin token \(REST API of both sites\): (\S+)$", 5)[1]
        ui_secondary = err.wait_for(r"^  (\S+)  \(secondary\)$", 5)[1]
        ui_primary = err.wait_for(r"^  (\S+)  \(primary\)$", 5)[1]
        curl = err.wait_for(r"^  curl .*", 5)[0]
        status = err.wait_for(r"^  (\S+ --config \S+ status)$", 5)[1]
        sites = children_of(process.pid)

        answer = httpx.get(f"{primary_url}api/v4/geo_nodes", headers={"PRIVATE-TOKEN": token})
        refused = httpx.get(f"{primary_url}api/v4/geo_nodes")
        signed_in = httpx.post(f"{ui_secondary}/sign_in", data={"token": token})
        sign_in_refused = httpx.post(f"{ui_primary}/sign_in", data={"token": "glpat-wrong"})
        shown = subprocess.run(
            [*shlex.split(status), "--json"], capture_output=True, text=True, timeout=60
        )
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(60)

    assert curl == f'  curl -H "PRIVATE-TOKEN: {token}" {primary_url}api/v4/geo_nodes'
    assert answer.status_code == 200, answer.text
    assert {node["name"] for node in answer.json()} == {"primary", "secondary"}
    assert {node["url"] for node in answer.json()} == {primary_url, secondary_url}
    assert refused.status_code == 401
    assert (ui_secondary, ui_primary) == (f"{secondary_url}admin/geo", f"{primary_url}admin/geo")
    assert signed_in.status_code == 303, signed_in.text
    assert signed_in.cookies.get("geosync_admin")
    assert sign_in_refused.status_code == 401
    assert str(scratch / "secondary" / "geosync.toml") == secondary_config
    assert str(scratch / "primary" / "geosync.toml") == primary_config
    assert shown.returncode == 0, shown.stderr
    assert [node["node"]["name"] for node in json.loads(shown.stdout)] == ["primary", "secondary"]
    text = "\n".join(err.lines)
    assert text.index("preparing the databases") < text.index("starting the primary")
    assert text.index("starting the secondary") < text.index("both sites are up")
    assert text.index("both sites are up") < text.index("seeding blobs")
    assert code == 130
    assert "Traceback" not in text
    assert not scratch.exists(), "the scratch directory is removed at exit"
    assert len(sites) == 4
    assert [pid for pid in sites if Path(f"/proc/{pid}/stat").exists()] == []


def test_keep_keeps_the_scratch_and_json_stays_machine_readable(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *DEMO,
            "--keep",
            "--blobs",
            "3",
            "--repos",
            "0",
            "--exit-when-synced",
            "--timeout",
            "150",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )

    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["secondary"]["uploads_synced_count"] == report["primary"]["uploads_count"]
    kept = re.search(r"demo data and logs kept in (\S+)$", result.stderr, re.MULTILINE)
    assert kept is not None, result.stderr
    root = Path(kept[1])
    assert root.parent == tmp_path and (root / "logs" / "secondary-worker.log").is_file()
    for site in ("primary", "secondary"):
        config = tomllib.loads((root / site / "geosync.toml").read_text())
        assert config["event_log_max_age"] == 7 * 24 * 3600  # seconds, as the env var takes


def test_demo_postgres_runs_the_production_topology_to_completion(tmp_path: Path) -> None:
    from geosync.demo.topology import postgres_missing

    reason = postgres_missing()
    if reason is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"the production demo must run in CI: {reason}")
        pytest.skip(reason)
    root = tmp_path / "demo"
    result = subprocess.run(
        [*DEMO, "--postgres", "--dir", str(root), "--blobs", "20", "--repos", "2",
         "--exit-when-synced", "--timeout", "150", "--json", "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    primary, secondary = report["primary"], report["secondary"]
    for plural in ("uploads", "package_files", "snippets"):
        assert secondary[f"{plural}_synced_count"] == primary[f"{plural}_count"]
        assert secondary[f"{plural}_verified_count"] == primary[f"{plural}_count"]
    assert secondary["db_replication_lag_seconds"] is not None
    assert "streaming replication" in result.stderr + result.stdout
    logs = root / "logs"
    workers = sorted(p.name for p in logs.glob("secondary-worker*.log"))
    assert workers == ["secondary-worker-2.log", "secondary-worker-3.log", "secondary-worker.log"]
    for site in ("primary", "secondary"):
        started = [
            json.loads(line)
            for line in (logs / f"{site}-serve.log").read_text().splitlines()
            if '"web processes started"' in line
        ]
        assert [len(s["pids"]) for s in started] == [2]
