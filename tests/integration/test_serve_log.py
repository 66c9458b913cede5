"""`geosync serve` as a real process says where it listens, logs one line per request and its
shutdown, as JSON lines, and never a token."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine

from geosync.demo.models import Base
from geosync.testing.servers import free_port

SECRET = "c" * 40
TOKEN = "glpat-never-in-a-log-line"


def start_serve(tmp_path: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    """A primary on SQLite, upgraded, served on 127.0.0.1:`port`; its output in serve.log."""
    main = tmp_path / "main.db"
    engine = create_engine(f"sqlite:///{main}")
    Base.metadata.create_all(engine)
    engine.dispose()
    config = tmp_path / "geosync.toml"
    config.write_text(
        f'node_name = "primary"\nmain_database_url = "sqlite:///{main}"\n'
        f'secret_key_base = "{SECRET}"\nreplicators = "geosync.demo.replicators"\n',
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOSYNC_")}
    command = [sys.executable, "-m", "geosync", "-c", str(config)]
    subprocess.run([*command, "db", "upgrade"], env=env, check=True, capture_output=True)
    with (tmp_path / "serve.log").open("wb") as log:
        return subprocess.Popen(
            [*command, "serve", "--port", str(port), *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )


def wait_listening(process: subprocess.Popen[bytes], url: str) -> None:
    """Until the server answers (bounded)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "serve exited"
        try:
            httpx.get(url + "api/v4/openapi.json", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("serve did not start listening")


def records(text: str) -> list[dict[str, Any]]:
    """Every line of `text` as JSON (each must be an object)."""
    parsed = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all(isinstance(record, dict) for record in parsed)
    return parsed


def test_serve_logs_listening_each_request_and_its_shutdown(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    process = start_serve(tmp_path, port)
    try:
        wait_listening(process, url)
        nodes = httpx.get(
            url + "api/v4/geo_nodes",
            params={"private_token": TOKEN},
            headers={"PRIVATE-TOKEN": TOKEN},
            timeout=10,
        )
        metrics = httpx.get(
            url + "metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
        )
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = (tmp_path / "serve.log").read_text(encoding="utf-8")
    assert TOKEN not in text
    assert "Traceback" not in text
    lines = records(text)
    events = [line["event"] for line in lines]

    listening = [line for line in lines if line["event"] == "listening"]
    assert len(listening) == 1
    assert listening[0]["host"] == "127.0.0.1"
    assert listening[0]["port"] == port
    assert listening[0]["url"] == url

    requests = [line for line in lines if line["event"] == "request"]
    probes = [r for r in requests if r["path"] == "/api/v4/openapi.json"]
    assert probes and all(r["status"] == 200 for r in probes)
    ours = [r for r in requests if r not in probes]
    assert [(r["method"], r["path"], r["status"]) for r in ours] == [
        ("GET", "/api/v4/geo_nodes", nodes.status_code),
        ("GET", "/metrics", metrics.status_code),
    ]
    assert all(isinstance(r["duration_ms"], float) and r["duration_ms"] >= 0 for r in ours)
    assert all(r["level"] == "info" and "timestamp" in r for r in lines)

    assert events.index("listening") < events.index("request")
    assert events[-2:] == ["shutting down", "stopped"]


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (not gone, not a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def test_serve_processes_share_the_port_and_replace_one_that_dies(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    process = start_serve(tmp_path, port, "--processes", "2")
    log = tmp_path / "serve.log"
    try:
        wait_listening(process, url)
        deadline = time.monotonic() + 30
        while log.read_text().count('"listening"') < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        (group,) = [r for r in records(log.read_text()) if r["event"] == "web processes started"]
        first, second = group["pids"]
        os.kill(first, signal.SIGKILL)
        while '"web process exited, starting another"' not in log.read_text():
            assert time.monotonic() < deadline + 30, "the dead web process was not replaced"
            time.sleep(0.1)
        for _ in range(5):  # the port answers all along, by the survivor or the replacement
            assert httpx.get(url + "api/v4/openapi.json", timeout=10).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not alive(second)
    replaced = [
        r for r in records(log.read_text()) if r["event"] == "web process exited, starting another"
    ]
    assert [r["pid"] for r in replaced] == [first]
