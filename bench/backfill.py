"""Benchmark: the consistency sweep creating the registries of a late secondary.

Builds a primary holding COUNT upload rows (PostgreSQL: loaded with COPY; SQLite: executemany)
while no secondary exists, registers a secondary, and times one complete sweep pass — reading
the primary's ids in ranges of 10,000, comparing with the registry and bulk-inserting the
missing rows — until every row has its pending registry.

    .venv/bin/python bench/backfill.py                          # 1,000,000 rows, both databases
    .venv/bin/python bench/backfill.py --count 200000 --backend sqlite

Target (issue 6): 1,000,000 registries in under 30 s on PostgreSQL.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from sqlalchemy import func, select

from geosync.demo.replicators import UploadReplicator
from geosync.log import configure
from geosync.nodes import NodeStore
from geosync.registry import Registry
from geosync.secondary.consistency import RANGE_SIZE, ConsistencySweep
from geosync.testing import DatabaseFactory, SitePair, build_site_pair

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TARGET_SECONDS = 30.0
CHUNK = 50_000


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The issue's size by default, on both databases."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="Model rows to backfill.")
    parser.add_argument(
        "--backend", choices=("sqlite", "postgres", "both"), default="both", help="Database(s)."
    )
    parser.add_argument("--postgres-url", default=POSTGRES_URL)
    parser.add_argument("--range-size", type=int, default=RANGE_SIZE)
    return parser.parse_args(argv)


def rows(count: int) -> Iterator[tuple[int, str, int, int]]:
    """Upload rows: id, path, namespace, size."""
    for i in range(1, count + 1):
        yield (i, f"b/{i}.bin", i % 100, 0)


def load_uploads(sites: SitePair, count: int) -> float:
    """Bulk-load `count` uploads on the primary; returns the seconds it took."""
    start = time.perf_counter()
    engine = sites.primary.main_engine
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        if engine.dialect.name == "postgresql":
            statement = "COPY uploads (id, path, namespace_id, size) FROM STDIN"
            with cursor.copy(statement) as copy:
                for row in rows(count):
                    copy.write_row(row)
        else:
            assert isinstance(cursor, sqlite3.Cursor)  # takes any iterable of rows, not a Sequence
            cursor.execute("BEGIN")
            statement = "INSERT INTO uploads (id, path, namespace_id, size) VALUES (?, ?, ?, ?)"
            cursor.executemany(statement, rows(count))
        raw.commit()
    finally:
        raw.close()
    return time.perf_counter() - start


def registry_count(sites: SitePair) -> int:
    """How many registries the secondary has."""
    table = Registry(sites.secondary, UploadReplicator).table
    with sites.secondary.tracking_engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def run(backend: str, args: argparse.Namespace, scratch: Path) -> float:
    """Load, register the secondary, sweep; returns the sweep's seconds."""
    databases = DatabaseFactory(backend, scratch / backend / "db", args.postgres_url)
    sites = build_site_pair(
        scratch / backend / "sites", [UploadReplicator], databases, register_secondary=False
    )
    try:
        loaded = load_uploads(sites, args.count)
        print(f"{backend}: loaded {args.count:,} uploads in {loaded:.1f} s")
        with sites.primary.main() as conn:
            node = NodeStore(sites.primary, conn).add("secondary", "http://127.0.0.1:2/")
        sweep = ConsistencySweep(sites.secondary, range_size=args.range_size)
        start = time.perf_counter()
        results = sweep.run_pass(node)
        seconds = time.perf_counter() - start
        created = sum(r.created for r in results)
        if created != args.count or registry_count(sites) != args.count:
            raise SystemExit(f"{backend}: the sweep created {created} of {args.count} registries")
        print(
            f"{backend}: {created:,} registries in {seconds:.1f} s"
            f" = {created / seconds:,.0f} rows/s ({len(results)} ranges)"
        )
        start = time.perf_counter()
        sweep.run_pass(node)
        steady = time.perf_counter() - start
        print(f"{backend}: a pass with nothing to change takes {steady:.1f} s")
        return seconds
    finally:
        sites.dispose()
        databases.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark on the chosen backends and judge the PostgreSQL target."""
    args = parse_args(argv)
    configure("console", "warning")
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    scratch = Path(tempfile.mkdtemp(prefix="geosync-bench-backfill-"))
    try:
        timings = {backend: run(backend, args, scratch) for backend in backends}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if "postgres" in timings and args.count == 1_000_000:
        met = timings["postgres"] < TARGET_SECONDS
        verdict = "met" if met else "MISSED"
        print(f"target [{verdict}]: 1,000,000 registries on PostgreSQL in < {TARGET_SECONDS:.0f} s")


if __name__ == "__main__":
    main()
