"""A `geosync worker` process whose database is missing at start or goes away while it runs:
one warning line per retry with a growing pause, never a traceback, and it gets back to work by
itself when the database returns."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from geosync.app import Geo
from geosync.demo.models import Upload
from geosync.demo.replicators import UploadReplicator
from geosync.registry import Registry
from geosync.testing import DatabaseFactory, SitePair, build_site_pair
from geosync.testing.servers import free_port
from geosync.testing.tcp_proxy import TcpProxy
from geosync.testing.workers import wait_for
from tests.conftest import DEMO_REPLICATORS, POSTGRES_URL

#: The retry pauses a failing loop or an unreachable database is expected to start with.
GROWING = [1.0, 2.0, 4.0]


class Worker:
    """`geosync worker` as a child process, its stderr in a file to read while it runs."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "geosync", "worker", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={k: v for k, v in os.environ.items() if not k.startswith("GEOSYNC_")},
            )

    def text(self) -> str:
        """Everything the worker wrote so far."""
        return self.log.read_text(encoding="utf-8", errors="replace")

    def lines(self, event: str) -> list[dict[str, Any]]:
        """The JSON log lines whose event is `event`."""
        found = []
        for line in self.text().splitlines():
            with suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == event:
                    found.append(record)
        return found

    def stop(self) -> int:
        """SIGTERM, then the exit code (killed after 30 s)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def write_site_config(geo: Geo, path: Path, **changes: Any) -> Path:
    """`geo`'s settings with `changes` as a config file, with the demo's replicators module."""
    settings = geo.settings.model_copy(
        update={"replicators": "geosync.demo.replicators", **changes}
    )
    path.write_text(settings.to_toml(), encoding="utf-8")
    return path


def add_upload(primary: Geo, name: str) -> int:
    """A file and its row on the primary (the row publishes `created`)."""
    path = primary.settings.blob_storage("uploads") / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"data of " + name.encode())
    with primary.session() as session:
        upload = Upload(path=name, namespace_id=1, size=path.stat().st_size)
        session.add(upload)
        session.commit()
        return upload.id


def registered(secondary: Geo, upload_id: int) -> bool:
    """Whether the secondary's registry has a row for the upload (its log cursor read it)."""
    registry = Registry(secondary, UploadReplicator)
    with secondary.tracking_engine.connect() as conn:
        found = conn.execute(select(registry.key).where(registry.key == upload_id)).first()
    return found is not None


def pair_on(backend: str, root: Path, factory: DatabaseFactory) -> SitePair:
    """A registered primary and secondary on real time, with short retry delays."""
    return build_site_pair(
        root / "sites",
        DEMO_REPLICATORS,
        factory,
        backoff_scale=0.005,
        poll_interval=0.2,
        log_format="json",
    )


def test_a_worker_waits_for_a_tracking_database_that_is_not_there_yet(tmp_path: Path) -> None:
    factory = DatabaseFactory("sqlite", tmp_path / "db")
    pair = pair_on("sqlite", tmp_path, factory)
    ready = Path(str(make_url(pair.secondary.settings.tracking_database_url or "").database))
    pair.secondary.dispose()
    stash, later = tmp_path / "stash", tmp_path / "later"
    stash.mkdir()
    for part in ready.parent.glob(ready.name + "*"):  # the file and any -wal or -shm beside it
        part.rename(stash / part.name)
    moved_url = f"sqlite:///{later / ready.name}"
    config = write_site_config(
        pair.secondary, tmp_path / "secondary.toml", tracking_database_url=moved_url
    )
    upload_id = add_upload(pair.primary, "first.bin")
    worker = Worker(config, tmp_path / "worker.log")
    try:
        wait_for(
            lambda: len(worker.lines("database not reachable, the worker keeps retrying")) >= 3,
            timeout=20,
            what="three warnings",
        )
        warnings = worker.lines("database not reachable, the worker keeps retrying")
        assert [w["retry_in"] for w in warnings[:3]] == GROWING
        assert {w["database"] for w in warnings} == {"tracking"}
        assert all(w["level"] == "warning" and w["error"] for w in warnings)
        assert "Traceback" not in worker.text()
        assert worker.process.poll() is None  # still running, still waiting

        stash.rename(later)  # the database appears
        moved = Geo(
            pair.secondary.settings.model_copy(update={"tracking_database_url": moved_url}),
            DEMO_REPLICATORS,
        )
        wait_for(lambda: registered(moved, upload_id), timeout=30, what="the event applied")
        moved.dispose()
        assert worker.lines("databases reachable")
        assert worker.lines("worker started")
    finally:
        code = worker.stop()
        pair.dispose()
    assert code == 0
    assert "Traceback" not in worker.text()


@pytest.fixture
def postgres(backend: str, tmp_path: Path) -> Iterator[DatabaseFactory]:
    """Fresh PostgreSQL databases (the test needs a server it can put a proxy in front of);
    `backend` still checks that the server is reachable, failing in CI when it is not."""
    assert backend == "postgres"
    factory = DatabaseFactory("postgres", tmp_path / "db", POSTGRES_URL)
    yield factory
    factory.cleanup()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_running_worker_whose_database_goes_away_retries_and_recovers(
    tmp_path: Path, postgres: DatabaseFactory
) -> None:
    pair = pair_on("postgres", tmp_path, postgres)
    direct = make_url(pair.secondary.settings.tracking_database_url or "")
    port = free_port()
    proxied = direct.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    config = write_site_config(
        pair.secondary, tmp_path / "secondary.toml", tracking_database_url=proxied
    )
    upstream = (direct.host or "127.0.0.1", direct.port or 5432)
    proxy = TcpProxy(port, upstream)
    worker = Worker(config, tmp_path / "worker.log")
    try:
        first = add_upload(pair.primary, "first.bin")
        wait_for(lambda: registered(pair.secondary, first), timeout=30, what="the first event")

        proxy.close()  # the tracking database goes away
        wait_for(
            lambda: any(
                len([w for w in worker.lines("loop failed, retrying") if w["loop"] == name]) >= 3
                for name in ("log_cursor", "scheduler")
            ),
            timeout=30,
            what="three retries of one loop",
        )
        failures = worker.lines("loop failed, retrying")
        by_loop: dict[str, list[float]] = {}
        for failure in failures:
            by_loop.setdefault(failure["loop"], []).append(failure["retry_in"])
        assert any(delays[:3] == GROWING for delays in by_loop.values()), by_loop
        assert all(f["level"] == "warning" and f["error"] for f in failures)
        assert "Traceback" not in worker.text()

        proxy = TcpProxy(port, upstream)  # the database is back
        second = add_upload(pair.primary, "second.bin")
        wait_for(lambda: registered(pair.secondary, second), timeout=60, what="the second event")
        assert worker.lines("loop recovered")
    finally:
        code = worker.stop()
        proxy.close()
        pair.dispose()
    assert code == 0
    text = worker.text()
    assert "Traceback" not in text
    assert len(text) < 100_000  # a handful of lines, not a storm
