"""Benchmark: the secondary's status at 1M and 10M registry rows on PostgreSQL.

A fresh primary and secondary are built on the PostgreSQL server `--postgres-url` names (fresh
main and tracking databases). For each size of `--rows`, in increasing order, the upload
registry of the secondary and the primary's `uploads` table grow to that many rows with
`INSERT ... SELECT FROM generate_series` (the secondary's status counts its registries; the
primary's, its records): 95% synced and verified within the scrub period, 3% pending, 2% failed
(a mix that makes every count of the status do work). Then, after `VACUUM ANALYZE`, are timed:

- *in process*: `compute_status` on the secondary, as `geosync status` computes it (`--repeat`
  times; median and range);
- *CLI*: one run of `geosync --config secondary.toml status --json` (a new Python process:
  about a second of interpreter and imports is in it);
- *REST*: `GET /api/v4/geo_nodes/<id>/status?refresh=true` on the secondary's `geosync serve`
  (computed per request) and `GET /api/v4/geo_nodes/status` (the stored statuses),
  `--repeat` times each, with `curl`'s wall time beside it for scale.

Goal (issue 22): < 100 ms at 1M and < 1 s at 10M. `--explain` prints EXPLAIN ANALYZE of the
registry's heaviest status queries at each size.

    .venv/bin/python bench/status.py                       # 1M and 10M rows
    .venv/bin/python bench/status.py --rows 1000000 --explain
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import Connection, TextClause, text

from geosync.auth import create_admin_token
from geosync.demo.replicators import PackageFileReplicator, SnippetReplicator, UploadReplicator
from geosync.log import configure
from geosync.registry import Registry
from geosync.status import compute_status
from geosync.testing import DatabaseFactory, SitePair, build_site_pair
from geosync.testing.processes import SiteProcesses, site_processes

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REPLICATORS_MODULE = "geosync.demo.replicators"
REPLICATORS = [UploadReplicator, PackageFileReplicator, SnippetReplicator]
#: The goal per size: seconds allowed at up to that many rows.
GOALS = ((1_000_000, 0.1), (10_000_000, 1.0))
#: Rows inserted per statement while growing a table (bounded memory, progress shown).
CHUNK = 1_000_000


def goal_for(rows: int) -> float:
    """The status goal in seconds at `rows` registry rows."""
    for size, seconds in GOALS:
        if rows <= size:
            return seconds
    return GOALS[-1][1] * rows / GOALS[-1][0]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Defaults: issue 22's sizes, 1M and 10M rows."""
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rows", default="1000000,10000000", help="Registry sizes to time.")
    parser.add_argument("--repeat", type=int, default=5, help="Timed runs per measurement.")
    parser.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE the queries.")
    parser.add_argument("--postgres-url", default=POSTGRES_URL, help="PostgreSQL server URL.")
    args = parser.parse_args(argv)
    try:
        args.sizes = sorted(int(n) for n in args.rows.split(",") if n.strip())
    except ValueError:
        parser.error(f"--rows must be comma-separated counts, got {args.rows!r}")
    if not args.sizes or args.sizes[0] < 1 or args.repeat < 1:
        parser.error("--rows needs sizes of at least 1 and --repeat at least 1")
    return args


# -- growing the tables --------------------------------------------------------------------------


def grow(pair: SitePair, have: int, want: int) -> None:
    """Registry rows and primary records `have + 1 .. want`, in chunks, then VACUUM ANALYZE."""
    table = Registry(pair.secondary, UploadReplicator).table.name
    now = pair.secondary.clock.now()
    verified_at = now - timedelta(hours=1)
    for start in range(have + 1, want + 1, CHUNK):
        end = min(want, start + CHUNK - 1)
        began = time.perf_counter()
        with pair.primary.main() as main:
            main.execute(
                text(
                    "INSERT INTO uploads (id, path, namespace_id, size) SELECT g, 'u/' || g, 1,"
                    " 4096 FROM generate_series(CAST(:a AS bigint), CAST(:b AS bigint)) g"
                ),
                {"a": start, "b": end},
            )
        with pair.secondary.tracking() as tracking:
            tracking.execute(
                _registry_insert(table), {"a": start, "b": end, "now": now, "v": verified_at}
            )
        print(f"  rows {start:,}-{end:,} in {time.perf_counter() - began:.1f} s", flush=True)
    began = time.perf_counter()
    for engine, name in (
        (pair.primary.main_engine, "uploads"),
        (pair.secondary.tracking_engine, table),
    ):
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'VACUUM ANALYZE "{name}"'))
    print(f"  VACUUM ANALYZE in {time.perf_counter() - began:.1f} s", flush=True)


def _registry_insert(table: str) -> TextClause:
    """95% synced and verified (verification succeeded an hour ago), 3% pending, 2% failed."""
    return text(
        f'INSERT INTO "{table}" (upload_id, created_at, state, retry_count, retry_at,'
        " last_synced_at, verification_state, verified_at, verification_checksum,"
        " pending_since, local_path)"
        " SELECT g, :now,"
        "  CASE WHEN g % 100 < 95 THEN 2 WHEN g % 100 < 98 THEN 0 ELSE 3 END,"
        "  CASE WHEN g % 100 >= 98 THEN 1 ELSE 0 END,"
        "  CASE WHEN g % 100 >= 98 THEN :now + interval '1 hour' END,"
        "  CASE WHEN g % 100 < 95 OR g % 100 >= 98 THEN :now END,"
        "  CASE WHEN g % 100 < 95 THEN 2 ELSE 4 END,"
        "  CASE WHEN g % 100 < 95 THEN :v END,"
        "  CASE WHEN g % 100 < 95 THEN md5(g::text) || md5(g::text) END,"
        "  :now - (g % 1000) * interval '1 second', 'u/' || g"
        " FROM generate_series(CAST(:a AS bigint), CAST(:b AS bigint)) g"
    )


# -- timing ------------------------------------------------------------------------------------


def timed(action: Callable[[], object], repeat: int) -> list[float]:
    """Seconds of each of `repeat` runs of `action` (one untimed warm-up run first)."""
    action()
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        action()
        times.append(time.perf_counter() - began)
    return times


def describe(times: list[float]) -> str:
    """Median and range in milliseconds."""
    ms = [t * 1000 for t in times]
    return f"{statistics.median(ms):8.1f} ms (range {min(ms):.1f}-{max(ms):.1f})"


def time_cli(secondary: SiteProcesses) -> float:
    """Wall seconds of one `geosync status --json` process on the secondary."""
    command = [sys.executable, "-m", "geosync", "--config", str(secondary.config)]
    began = time.perf_counter()
    subprocess.run([*command, "status", "--json"], check=True, capture_output=True)
    return time.perf_counter() - began


def explain(tracking: Connection, registry: Registry) -> None:
    """EXPLAIN ANALYZE of the registry's heaviest status queries (those of `registry_counts`:
    the counts per state pair and the oldest unsynced item)."""
    table = registry.table.name
    unsynced = "state IN (0, 1, 3)"
    queries = {
        "count by (state, verification state)": "SELECT state, verification_state, count(*)"
        f' FROM "{table}" GROUP BY state, verification_state',
        "oldest unsynced": f'SELECT (SELECT min(pending_since) FROM "{table}" WHERE {unsynced}),'
        f' (SELECT min(created_at) FROM "{table}" WHERE {unsynced} AND pending_since IS NULL)',
    }
    for label, sql in queries.items():
        plan = tracking.execute(text(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")).scalars().all()
        print(f"  -- {label}:")
        for line in plan:
            print(f"     {line}")


def measure(pair: SitePair, secondary: SiteProcesses, rows: int, args: argparse.Namespace) -> bool:
    """Time every form of the status at `rows`; whether the in-process one met the goal."""
    goal = goal_for(rows)
    node_id = pair.secondary_node.id
    in_process = timed(lambda: compute_status(pair.secondary), args.repeat)
    cli = time_cli(secondary)
    with pair.primary.main() as main:  # the secondary reads it from its copy of the database
        token = create_admin_token(main, "status benchmark", pair.primary.clock.now())
    client = httpx.Client(base_url=secondary.url, timeout=120, headers={"PRIVATE-TOKEN": token})
    path = f"api/v4/geo_nodes/{node_id}/status"
    refreshed = timed(
        lambda: client.get(path, params={"refresh": "true"}).raise_for_status(), args.repeat
    )
    stored = timed(lambda: client.get("api/v4/geo_nodes/status").raise_for_status(), args.repeat)
    client.close()
    met = statistics.median(in_process) < goal
    print(f"\n  {rows:,} rows (goal < {goal * 1000:.0f} ms):")
    print(
        f"  in process (compute_status)      {describe(in_process)}  {'met' if met else 'MISSED'}"
    )
    print(f"  geosync status --json (CLI)      {cli * 1000:8.1f} ms (one run, a new process)")
    print(f"  REST {path}?refresh=true {describe(refreshed)}")
    print(f"  REST api/v4/geo_nodes/status     {describe(stored)} (stored statuses)")
    if args.explain:
        with pair.secondary.tracking_engine.connect() as tracking:
            explain(tracking, Registry(pair.secondary, UploadReplicator))
    return met


def main(argv: Sequence[str] | None = None) -> int:
    """Grow the tables size by size and time the status at each."""
    args = parse_args(argv)
    configure("console", "warning")
    scratch = Path(tempfile.mkdtemp(prefix="geosync-status-"))
    databases = DatabaseFactory("postgres", scratch / "db", args.postgres_url)
    results: list[tuple[int, bool]] = []
    try:
        pair = build_site_pair(scratch / "sites", REPLICATORS, databases, log_format="json")
        _primary, secondary = site_processes(pair, scratch, REPLICATORS_MODULE)
        try:
            secondary.start("serve")
            have = 0
            for rows in args.sizes:
                print(f"\n== growing to {rows:,} registry rows and records", flush=True)
                grow(pair, have, rows)
                have = rows
                results.append((rows, measure(pair, secondary, rows, args)))
        finally:
            secondary.stop_all()
            pair.dispose()
    finally:
        databases.cleanup()
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        "\ngoal (in process):", ", ".join(f"{r:,}: {'met' if m else 'missed'}" for r, m in results)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
