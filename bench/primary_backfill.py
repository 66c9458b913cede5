"""Benchmark: how long a record written by bulk SQL waits for its checksum on the primary.

Builds a primary (with one secondary node, as in production) holding ROWS uploads that are
already verified, then runs the primary's worker loops (`PrimaryVerificationLoop` and
`PrimaryVerificationSweepLoop`, the default `poll_interval` of 2 s) in threads and writes new
uploads with Core `INSERT` statements, which publish no event and create no state row. It
prints:

- the cost of one new-record scan round (geosync's anti-join from the floor, in steady state)
  beside the same anti-join over the whole table and a plain `SELECT count(*)`, run as plain SQL
  on the same driver, and the ratio;
- the first sweep pass after a worker starts (the range walk of every row), and the waits in
  a worker's first minute, when each scan starts at id 0 and reads the whole table;
- the wait from the INSERT's commit to the record's stored checksum, for single rows (median
  and worst of SAMPLES) and for one INSERT of 1,000 rows (until the last is checksummed).

    .venv/bin/python bench/primary_backfill.py                      # 10k and 1M rows, both DBs
    .venv/bin/python bench/primary_backfill.py --rows 10000 --backend sqlite

Before the new-record scan a record without an event waited for the range walk: up to
`BACKFILL_PAUSE` (10 minutes) plus a pass over every row.
"""

from __future__ import annotations

import argparse
import functools
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Table, and_, insert, text

from geosync.app import Geo
from geosync.demo.models import Upload
from geosync.demo.replicators import UploadReplicator
from geosync.log import configure
from geosync.loops import Loop
from geosync.primary.backfill import (
    BACKFILL_PAUSE,
    NEW_RECORDS_BATCH,
    NEW_RECORDS_GRACE,
    NewRecordScan,
    scan_new_records,
)
from geosync.primary.verification import PrimaryVerificationLoop, PrimaryVerificationSweepLoop
from geosync.states import VerificationState
from geosync.testing import DatabaseFactory, SitePair, build_site_pair
from geosync.verification import primary_verifiable
from geosync.worker import Worker

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SEED_CHECKSUM = "0" * 64
ROUNDS = 20


class ShiftedClock:
    """The real clock, moved forward on request: the bench skips the scan's one-minute grace
    period instead of waiting it out.
    """

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        """The current UTC time, shifted."""
        return datetime.now(UTC) + self.offset


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The issue's sizes by default, on both databases."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument(
        "--backend", choices=("sqlite", "postgres", "both"), default="both", help="Database(s)."
    )
    parser.add_argument("--postgres-url", default=POSTGRES_URL)
    parser.add_argument("--samples", type=int, default=10, help="Single-row writes timed.")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


# -- the primary ----------------------------------------------------------------------------------


def seed_rows(count: int) -> Iterator[tuple[int, str, int, int]]:
    """Upload rows: id, path (one shared file: these rows are already verified), namespace, size."""
    for i in range(1, count + 1):
        yield (i, "seed.bin", i % 100, 1)


def load_verified_uploads(sites: SitePair, count: int) -> float:
    """`count` uploads with succeeded state rows, loaded behind the ORM; returns the seconds."""
    start = time.perf_counter()
    engine = sites.primary.main_engine
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        if engine.dialect.name == "postgresql":
            cursor.execute(
                "INSERT INTO uploads (id, path, namespace_id, size)"
                " SELECT i, 'seed.bin', i %% 100, 1 FROM generate_series(1, %s) AS i",
                (count,),
            )
        else:
            assert isinstance(cursor, sqlite3.Cursor)  # takes any iterable of rows
            cursor.execute("BEGIN")
            cursor.executemany(
                "INSERT INTO uploads (id, path, namespace_id, size) VALUES (?, ?, ?, ?)",
                seed_rows(count),
            )
        cursor.execute(
            "INSERT INTO upload_states (upload_id, verification_state, verification_checksum)"
            f" SELECT id, {int(VerificationState.SUCCEEDED)}, '{SEED_CHECKSUM}' FROM uploads"
        )
        raw.commit()
    finally:
        raw.close()
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("ANALYZE uploads"))
            conn.execute(text("ANALYZE upload_states"))
            conn.commit()
    return time.perf_counter() - start


def insert_uploads(geo: Geo, ids: Sequence[int]) -> None:
    """New uploads written with one Core INSERT (no event, no state row), files first."""
    storage = geo.settings.blob_storage("uploads")
    for i in ids:
        (storage / f"n/{i}.bin").write_bytes(f"new upload {i}".encode())
    with geo.main() as conn:
        conn.execute(
            insert(_uploads()),
            [{"id": i, "path": f"n/{i}.bin", "namespace_id": 1, "size": 1} for i in ids],
        )


def _uploads() -> Table:
    table = Upload.__table__
    assert isinstance(table, Table)
    return table


def checksummed(geo: Geo, low: int, high: int) -> bool:
    """Whether every upload with an id in [low, high] has its checksum stored."""
    target = primary_verifiable(geo, UploadReplicator)
    done = target.table.c.verification_state == VerificationState.SUCCEEDED
    where = and_(target.key >= low, target.key <= high, done)
    with geo.main_reads() as conn:
        return target.count_where(conn, where) == high - low + 1


def wait_until(predicate: Callable[[], bool], timeout: float) -> float:
    """Seconds until `predicate` holds (polled every 20 ms); fails after `timeout`."""
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise SystemExit(f"not checksummed within {timeout:.0f} s")
        time.sleep(0.02)
    return time.perf_counter() - start


# -- the queries ----------------------------------------------------------------------------------


def timed(action: Callable[[], Any], rounds: int = ROUNDS) -> float:
    """Median seconds of `rounds` calls of `action`."""
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def plain(conn: Connection, sql: str) -> Callable[[], Any]:
    """`sql` run as plain SQL on the driver's cursor (no SQLAlchemy statement building)."""

    def run() -> Any:
        return conn.exec_driver_sql(sql).fetchall()

    return run


def query_costs(geo: Geo, count: int) -> dict[str, float]:
    """Median seconds of a steady-state scan round, the full anti-join and `count(*)`."""
    with geo.main_engine.connect() as conn:
        full_anti_join = plain(
            conn,
            "SELECT u.id FROM uploads u WHERE NOT EXISTS (SELECT 1 FROM upload_states s"
            f" WHERE s.upload_id = u.id) ORDER BY u.id LIMIT {NEW_RECORDS_BATCH}",
        )
        costs = {
            "count(*)": timed(plain(conn, "SELECT count(*) FROM uploads"), 5),
            "full anti-join": timed(full_anti_join, 5),
        }
        conn.rollback()

    def scan_round() -> None:
        scan = NewRecordScan(floor=count)
        with geo.main() as conn:
            scan_new_records(geo, conn, UploadReplicator, scan)

    costs["scan round"] = timed(scan_round)
    return costs


# -- the run --------------------------------------------------------------------------------------


def run(backend: str, count: int, args: argparse.Namespace, scratch: Path) -> dict[str, float]:
    """One size on one backend; returns the measured numbers."""
    root = scratch / f"{backend}-{count}"
    databases = DatabaseFactory(backend, root / "db", args.postgres_url)
    clock = ShiftedClock()
    sites = build_site_pair(root / "sites", [UploadReplicator], databases, clock=clock)
    rng = random.Random(args.seed)
    label = f"{backend} {count:>9,} rows"
    try:
        loaded = load_verified_uploads(sites, count)
        print(f"{label}: loaded with their state rows in {loaded:.1f} s")
        costs = query_costs(sites.primary, count)
        ratio = costs["scan round"] / costs["full anti-join"]
        print(
            f"{label}: scan round {costs['scan round'] * 1000:.2f} ms | plain full anti-join"
            f" {costs['full anti-join'] * 1000:.1f} ms (ratio {ratio:.3f}) | plain count(*)"
            f" {costs['count(*)'] * 1000:.1f} ms"
        )
        sweep = PrimaryVerificationSweepLoop(sites.primary)
        start = time.perf_counter()
        while sweep.run_once() == 0.0:
            pass
        first = time.perf_counter() - start
        print(f"{label}: first sweep pass after a start (range walk of every row) {first:.2f} s")
        early = measure_waits(sites, sweep, count, 3, rng, bulk=False)
        print(
            f"{label}: in a worker's first minute (scans from id 0) checksummed after"
            f" {', '.join(f'{w:.2f}' for w in early)} s"
        )
        clock.offset += NEW_RECORDS_GRACE + timedelta(seconds=1)  # the scan's first minute is over
        waits = measure_waits(sites, sweep, count + len(early), args.samples, rng)
        median, worst, bulk = statistics.median(waits[:-1]), max(waits[:-1]), waits[-1]
        print(
            f"{label}: bulk-SQL record checksummed after median {median:.2f} s, worst"
            f" {worst:.2f} s ({args.samples} single rows); one INSERT of"
            f" {NEW_RECORDS_BATCH:,} rows all checksummed after {bulk:.2f} s"
        )
        old_bound = BACKFILL_PAUSE.total_seconds() + first
        print(
            f"{label}: before the scan such a record waited up to {old_bound:.0f} s"
            f" ({old_bound / worst:,.0f}x the worst wait now)"
        )
        return {"median": median, "worst": worst, "bulk": bulk, **costs}
    finally:
        sites.dispose()
        databases.cleanup()


def measure_waits(
    sites: SitePair,
    sweep: PrimaryVerificationSweepLoop,
    count: int,
    samples: int,
    rng: Any,
    bulk: bool = True,
) -> list[float]:
    """With the primary's worker loops running: the wait of each single-row INSERT, then (with
    `bulk`) of one INSERT of `NEW_RECORDS_BATCH` rows (the last number).
    """
    geo = sites.primary
    (geo.settings.blob_storage("uploads") / "n").mkdir(parents=True, exist_ok=True)

    def the_sweep(_geo: Geo, worker: Worker) -> Loop:
        sweep.worker = worker
        return sweep

    worker = Worker(geo, [PrimaryVerificationLoop, the_sweep])
    worker.start()
    waits = []
    try:
        next_id = count + 1
        for _ in range(samples):
            time.sleep(rng.uniform(0, geo.settings.poll_interval))  # any phase of the sweep
            insert_uploads(geo, [next_id])
            waits.append(wait_until(functools.partial(checksummed, geo, next_id, next_id), 60))
            next_id += 1
        if bulk:
            batch = list(range(next_id, next_id + NEW_RECORDS_BATCH))
            insert_uploads(geo, batch)
            waits.append(wait_until(lambda: checksummed(geo, batch[0], batch[-1]), 120))
    finally:
        worker.stop()
    return waits


def main(argv: Sequence[str] | None = None) -> None:
    """Run every size on the chosen backends."""
    args = parse_args(argv)
    configure("console", "warning")
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    scratch = Path(tempfile.mkdtemp(prefix="geosync-bench-primary-backfill-"))
    try:
        for backend in backends:
            for count in args.rows:
                run(backend, count, args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
