"""The production topology as a whole, under the demo application's churn, with faults.

PostgreSQL clusters made for the test: the primary's main database, a streaming standby of it
that is the secondary's main database, a tracking database; `geosync serve --processes 2` on
both sites; three `geosync worker` processes on the secondary. While the churn runs, one worker
is SIGKILLed in the middle of its syncs and the tracking database is restarted. In the end every
item is synced, verified and byte-identical, each row was transferred once per change, and the
node's capacities held across the three workers.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from geosync.db.tables import geo_sync_attempts
from geosync.demo.progress import snapshot
from geosync.demo.runner import Churn, copies_identical
from geosync.demo.seed import Seeder
from geosync.demo.topology import Topology, postgres_missing, topology
from geosync.registry import Registry
from geosync.states import SyncState
from geosync.status import compute_status, load_statuses
from geosync.testing.pg_standby import start_cluster, stop_cluster
from geosync.testing.workers import wait_for

pytestmark = pytest.mark.slow

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
FILES_CAPACITY = 4
REPOS_CAPACITY = 2
CHURN_SECONDS = 12.0
FINISHED = "sync finished"
SUPERSEDED = "sync superseded by a newer change"
#: Words of a database statement error that must never reach what a row says about itself.
STATEMENT_ERRORS = ("psycopg", "sqlalchemy", "[sql:", "connection", "terminating", "server closed")


@contextmanager
def production(root: Path) -> Iterator[Topology]:
    reason = postgres_missing()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"the production topology must run in CI: {reason}")
        pytest.skip(reason)
    node = {"files_max_capacity": FILES_CAPACITY, "repos_max_capacity": REPOS_CAPACITY}
    settings: dict[str, Any] = {"backoff_scale": 0.01, "poll_interval": 0.5, "log_format": "json"}
    with topology(root, postgres=True, node=node, **settings) as built:
        yield built


def log_records(built: Topology, prefix: str) -> list[dict[str, Any]]:
    """The JSON lines of every log file of `prefix` (e.g. "secondary-worker")."""
    found = []
    for path in sorted(built.logs.glob(f"{prefix}*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))
    return found


def held_by_pid(built: Topology) -> dict[int, list[tuple[str, int]]]:
    """The started registry rows, by the pid of the worker that claimed them."""
    geo = built.geo(built.secondary)
    held: dict[int, list[tuple[str, int]]] = {}
    with geo.tracking_engine.connect() as conn:
        for replicator in geo.catalog:
            registry = Registry(geo, replicator)
            c = registry.table.c
            query = select(registry.key, c.claimed_by).where(c.state == SyncState.STARTED)
            for key, holder in conn.execute(query):
                pid = int(str(holder).split(":")[1])
                held.setdefault(pid, []).append((replicator.replicable_name, int(key)))
    return held


def kill_a_busy_worker(built: Topology) -> tuple[int, list[tuple[str, int]]]:
    """SIGKILL a worker while it holds started rows; its pid and those rows."""
    pids = {p.pid: p for p in built.secondary.worker_processes()}
    found: dict[int, list[tuple[str, int]]] = {}

    def busy() -> bool:
        found.clear()
        found.update({pid: rows for pid, rows in held_by_pid(built).items() if pid in pids})
        return bool(found)

    wait_for(busy, timeout=30, what="a worker in the middle of syncs", interval=0.01)
    pid, rows = next(iter(found.items()))
    os.kill(pid, signal.SIGKILL)
    pids[pid].wait()
    return pid, rows


def attempts(built: Topology) -> list[Any]:
    geo = built.geo(built.secondary)
    t = geo_sync_attempts
    with geo.tracking_engine.connect() as conn:
        return list(conn.execute(select(t).where(t.c.kind == "sync")))


def most_at_once(intervals: list[tuple[datetime, datetime]]) -> int:
    """The highest number of intervals open at one moment (an end before a start at a tie)."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    open_now = highest = 0
    for _, step in edges:
        open_now += step
        highest = max(highest, open_now)
    return highest


def count_updates(seeder: Seeder) -> Counter[tuple[str, int]]:
    """Count the churn's updates per record as they are made (the primary prunes its event log
    while the test runs, so its `updated` events cannot be counted afterwards)."""
    updates: Counter[tuple[str, int]] = Counter()

    def counted(name: str, change: Callable[[], int | None]) -> Callable[[], int | None]:
        def change_and_count() -> int | None:
            record_id = change()
            if record_id is not None:
                updates[(name, record_id)] += 1
            return record_id

        return change_and_count

    seeder.update_package = counted("package_file", seeder.update_package)  # type: ignore[method-assign]
    seeder.push_to_repository = counted("snippet", seeder.push_to_repository)  # type: ignore[method-assign]
    return updates


def same_files(built: Topology) -> list[str]:
    """Blob files that differ, byte for byte, between the sites (or exist on one only)."""
    different = []
    for storage in ("uploads", "packages"):
        ours = built.primary.settings.blob_storage(storage)
        theirs = built.secondary.settings.blob_storage(storage)
        names = {p.relative_to(ours) for p in ours.rglob("*") if p.is_file()}
        names |= {p.relative_to(theirs) for p in theirs.rglob("*") if p.is_file()}
        for name in sorted(names):
            a, b = ours / name, theirs / name
            if not (a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()):
                different.append(f"{storage}/{name}")
    return different


def test_production_topology_under_churn_survives_a_killed_worker_and_a_tracking_restart(
    tmp_path: Path,
) -> None:
    with production(tmp_path / "topology") as built:
        built.start()
        primary_geo, secondary_geo = built.geo(built.primary), built.geo(built.secondary)
        seeder = Seeder(primary_geo, random.Random(22))
        for _ in range(40):
            seeder.create_blob()
        for _ in range(4):
            seeder.create_repository()
        updates = count_updates(seeder)
        churn = Churn(seeder, CHURN_SECONDS, repos=True)
        churn.start()

        killed_pid, killed_rows = kill_a_busy_worker(built)
        time.sleep(2.0)
        tracking = built.clusters.tracking if built.clusters else None
        assert tracking is not None
        restarted_at = datetime.now().astimezone()
        stop_cluster(tracking, "fast")
        time.sleep(1.0)
        start_cluster(tracking)
        churn.join(CHURN_SECONDS + 30)
        assert churn.operations > 20

        plurals = [r.replicable_name_plural for r in primary_geo.catalog]

        def complete() -> bool:
            return snapshot(primary_geo, secondary_geo).complete(plurals)

        wait_for(complete, timeout=60, what="every item synced and verified", interval=0.5)
        assert copies_identical(primary_geo, secondary_geo) == []
        assert same_files(built) == []

        # The database's replication lag is measured and reported to the primary.
        own = compute_status(secondary_geo).for_api()
        assert own["db_replication_lag_seconds"] is not None
        assert own["db_replication_lag_seconds"] >= 0
        with primary_geo.main_engine.connect() as conn:
            reported = {s.values["geo_node_id"]: s.values for s in load_statuses(primary_geo, conn)}
        secondary_node = secondary_geo.current_node()
        assert secondary_node is not None
        assert reported[secondary_node.id]["db_replication_lag_seconds"] is not None

        history = attempts(built)
        # Each row transferred once per change: once, and once more for each `updated`.
        synced = Counter((a.replicable_name, a.model_record_id) for a in history
                         if a.outcome == "synced")  # fmt: skip
        over = {key: n for key, n in synced.items() if n > 1 + updates[key]}
        assert over == {}
        with secondary_geo.tracking_engine.connect() as conn:
            rows = {
                (r.replicable_name, int(key))
                for r in secondary_geo.catalog
                for key in conn.execute(select(Registry(secondary_geo, r).key)).scalars()
            }
        never_updated = {key for key in rows if not updates[key]}
        assert {key: synced[key] for key in never_updated if synced[key] != 1} == {}
        transfers = Counter(
            (line["event"], line["replicable"], line["id"])
            for line in log_records(built, "secondary-worker")
            if line.get("event") in (FINISHED, SUPERSEDED)
        )
        done = {(n, i): c for (e, n, i), c in transfers.items() if e == FINISHED}
        assert {key: n for key, n in done.items() if n > 1 + updates[key]} == {}
        assert {key: done[key] for key in never_updated if done.get(key, 0) > 1} == {}
        # A sync overtaken by a newer change: only ever for a record that changed (or went:
        # a deleted record's row may come back for a moment from a consistency sweep that read
        # the standby just before the deletion, until the sweep's next pass).
        overtaken = {(n, i): c for (e, n, i), c in transfers.items() if e == SUPERSEDED}
        assert {k: n for k, n in overtaken.items() if k in rows and n > updates[k]} == {}

        # The capacities held across the three workers: a row counts from its claim to its
        # outcome, in whichever process, a sync overtaken by a newer change included (its row
        # stays claimed until it ends, so the item is never transferred twice at once).
        groups = {"upload": "files", "package_file": "files", "snippet": "repos"}
        spans: dict[str, list[tuple[datetime, datetime]]] = {"files": [], "repos": []}
        for a in history:
            spans[groups[a.replicable_name]].append((a.started_at, a.finished_at))
        assert 2 <= most_at_once(spans["files"]) <= FILES_CAPACITY
        assert most_at_once(spans["repos"]) <= REPOS_CAPACITY

        # The killed worker's rows were taken over by the others (an `interrupted` attempt
        # naming its process) and synced: every row still there is synced (`complete`).
        interrupted = [a for a in history if a.outcome == "interrupted"]
        assert interrupted, f"none of {killed_rows} was taken over"
        assert all(f":{killed_pid}:" in (a.message or "") for a in interrupted)
        with secondary_geo.tracking_engine.connect() as conn:
            for name, key in killed_rows:
                row = Registry(secondary_geo, secondary_geo.catalog.get(name)).get(conn, key)
                assert row is None or row.state == SyncState.SYNCED

        # The tracking database's restart reached no row's story: no statement error in any
        # attempt's message, nor in a registry's failure fields.
        for a in history:
            message = (a.message or "").lower()
            assert not any(word in message for word in STATEMENT_ERRORS), a
        with secondary_geo.tracking_engine.connect() as conn:
            for replicator in secondary_geo.catalog:
                c = Registry(secondary_geo, replicator).table.c
                for failure in conn.execute(select(c.last_sync_failure, c.verification_failure)):
                    text = " ".join(f or "" for f in failure).lower()
                    assert not any(word in text for word in STATEMENT_ERRORS), failure
        noticed = [
            line
            for line in log_records(built, "secondary-worker")
            if line.get("level") == "warning"
            and datetime.fromisoformat(line["timestamp"]) >= restarted_at
        ]
        assert noticed, "no worker noticed the tracking database's restart"
        # ... and no process met an error it did not expect (a traceback is a bug).
        for path in sorted(built.logs.glob("*.log")):
            assert "Traceback" not in path.read_text(errors="replace"), path.name
