"""Benchmark: a bulk resync job over a secondary's registries, beside the giant UPDATE it replaces.

Builds a secondary's tracking database on PostgreSQL holding ROWS synced upload registries
(one INSERT ... SELECT generate_series), creates one RESYNC job and runs it to its end with
`run_job_batch` while another thread keeps finishing syncs of random rows (`Registry.start` and
`Registry.synced`, one row per transaction). Then puts every row back to synced and times the
one plain `UPDATE` over all rows that the job replaces, with the same concurrent syncs beside it.

    .venv/bin/python bench/bulk_jobs.py                      # 1,000,000 rows
    .venv/bin/python bench/bulk_jobs.py --rows 100000 --postgres-url postgresql+psycopg://…

Targets: the job in < 60 s, no batch transaction over 1 s, concurrent syncs p99 < 50 ms.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, insert, literal, select, text, update

from geosync.app import Geo
from geosync.demo.replicators import UploadReplicator
from geosync.jobs import JobAction, JobFilters, create_job, run_job_batch
from geosync.log import configure
from geosync.registry import Registry, pending_values
from geosync.states import SyncState, VerificationState
from geosync.testing import DatabaseFactory, build_site_pair

POSTGRES_URL = os.environ.get(
    "GEOSYNC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
TARGET_SECONDS = 60.0
TARGET_BATCH_MS = 1000.0
TARGET_P99_MS = 50.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The issue's size by default."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="Registries to resync.")
    parser.add_argument("--postgres-url", default=POSTGRES_URL, help="PostgreSQL server URL.")
    return parser.parse_args(argv)


@dataclass
class Syncs:
    """A thread finishing syncs of random rows, one per transaction, until stopped."""

    geo: Geo
    rows: int
    latencies: list[float] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.registry = Registry(self.geo, UploadReplicator)
        self.thread = threading.Thread(target=self._run, name="syncs", daemon=True)

    def __enter__(self) -> Syncs:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopping.set()
        self.thread.join(30)

    def _run(self) -> None:
        rng = random.Random(7)
        while not self.stopping.is_set():
            key = rng.randint(1, self.rows)
            start = time.perf_counter()
            with self.geo.tracking() as conn:
                claim = self.registry.start(conn, key)
                self.registry.synced(conn, key, claim)
            self.latencies.append((time.perf_counter() - start) * 1000)

    def summary(self) -> str:
        """p50/p99/max of the syncs' transactions in ms."""
        if len(self.latencies) < 2:
            return "no concurrent syncs measured"
        ordered = sorted(self.latencies)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return (
            f"{len(ordered):,} concurrent syncs: p50 {statistics.median(ordered):.1f} ms,"
            f" p99 {p99:.1f} ms, max {ordered[-1]:.1f} ms"
        )

    def p99(self) -> float:
        """The 99th percentile in ms (0 without samples)."""
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0


def seed(geo: Geo, rows: int) -> float:
    """ROWS synced registries in one INSERT ... SELECT; returns the seconds it took."""
    registry = Registry(geo, UploadReplicator)
    c = registry.table.c
    n = func.generate_series(1, rows).column_valued("n")
    start = time.perf_counter()
    with geo.tracking() as conn:
        conn.execute(
            insert(registry.table).from_select(
                [c.upload_id, c.created_at, c.state, c.verification_state],
                select(
                    n,
                    literal(geo.clock.now(), c.created_at.type),
                    literal(int(SyncState.SYNCED)),
                    literal(int(VerificationState.DISABLED)),
                ),
            )
        )
    vacuum(geo)
    return time.perf_counter() - start


def vacuum(geo: Geo) -> None:
    """VACUUM ANALYZE the registry (outside a transaction), as autovacuum would in time."""
    with geo.tracking_engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(
            text("VACUUM ANALYZE upload_registry")
        )


def run_job(geo: Geo, rows: int) -> tuple[float, float, int, Syncs]:
    """Create the job and run it to its end beside the syncs: seconds, longest batch in ms,
    rows changed, the syncs."""
    job = create_job(geo, UploadReplicator, JobAction.RESYNC, JobFilters(), "bench")
    longest = 0.0
    with Syncs(geo, rows) as syncs:
        time.sleep(0.2)  # the syncs' steady state before the job starts
        start = time.perf_counter()
        for _ in range(rows // 1000 + 10):  # the keyset only moves forward: a bounded loop
            began = time.perf_counter()
            job = run_job_batch(geo, job.id)
            longest = max(longest, (time.perf_counter() - began) * 1000)
            if not job.state.active:
                break
        seconds = time.perf_counter() - start
    if job.state.active:
        raise SystemExit(f"the job did not end: {job.as_json()}")
    return seconds, longest, job.processed, syncs


def giant_update(geo: Geo, rows: int) -> tuple[float, Syncs]:
    """Every row back to synced, then the one UPDATE the job replaces, beside the syncs."""
    registry = Registry(geo, UploadReplicator)
    with geo.tracking() as conn:
        conn.execute(update(registry.table).values(state=SyncState.SYNCED))
    vacuum(geo)
    with Syncs(geo, rows) as syncs:
        time.sleep(0.2)
        start = time.perf_counter()
        with geo.tracking() as conn:
            conn.execute(
                update(registry.table)
                .where(registry.resyncable())
                .values(**pending_values(geo.clock.now()))
            )
        seconds = time.perf_counter() - start
        time.sleep(0.2)
    return seconds, syncs


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark once and judge the targets."""
    args = parse_args(argv)
    configure("console", "warning")
    scratch = Path(tempfile.mkdtemp(prefix="geosync-bench-bulk-jobs-"))
    databases = DatabaseFactory("postgres", scratch / "db", args.postgres_url)
    sites = build_site_pair(scratch / "sites", [UploadReplicator], databases)
    try:
        geo = sites.secondary
        print(f"seeded {args.rows:,} synced registries in {seed(geo, args.rows):.1f} s")
        seconds, longest, processed, syncs = run_job(geo, args.rows)
        print(
            f"job: {processed:,} rows in {seconds:.1f} s = {processed / seconds:,.0f} rows/s,"
            f" longest batch transaction {longest:.0f} ms"
        )
        print(f"  beside the job: {syncs.summary()}")
        giant, giant_syncs = giant_update(geo, args.rows)
        print(
            f"one giant UPDATE of every row: {giant:.1f} s (job / giant = {seconds / giant:.1f}x)"
        )
        print(f"  beside the giant UPDATE: {giant_syncs.summary()}")
        checks = [
            (seconds < TARGET_SECONDS, f"the job in < {TARGET_SECONDS:.0f} s ({seconds:.1f} s)"),
            (
                longest < TARGET_BATCH_MS,
                f"no transaction over {TARGET_BATCH_MS:.0f} ms ({longest:.0f} ms)",
            ),
            (
                syncs.p99() < TARGET_P99_MS,
                f"concurrent p99 < {TARGET_P99_MS:.0f} ms ({syncs.p99():.1f} ms)",
            ),
        ]
        for met, label in checks:
            print(f"target [{'met' if met else 'MISSED'}]: {label}")
    finally:
        sites.dispose()
        databases.cleanup()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
