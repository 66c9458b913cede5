"""Benchmark: GraphQL registry pages over a million registries on PostgreSQL, beside plain SQL.

Builds a secondary whose upload registry holds `--rows` rows (every tenth failed, the rest
synced and verified), serves it on loopback, and times real HTTP GraphQL requests: the first
page, the first page of failed rows, a page of failed rows deep in the keyset, a page sorted by
sync time, and the filtered `count`. Beside them, in the same run, the same page read with plain
SQL by keyset and by OFFSET (the pagination it replaces); the ratio to the keyset SQL is printed.

    .venv/bin/python bench/registry_pages.py                   # 1,000,000 rows
    .venv/bin/python bench/registry_pages.py --rows 200000 --repeat 10

Target: the first page and a deep page under filters each < 50 ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from geosync.auth import create_admin_token
from geosync.demo.replicators import PackageFileReplicator, SnippetReplicator, UploadReplicator
from geosync.listing import encode_cursor
from geosync.log import configure
from geosync.testing import DatabaseFactory, SitePair, build_site_pair
from geosync.testing.servers import serve_in_thread
from geosync.web.app import create_app

POSTGRES_URL = os.environ.get(
    "GEOSYNC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
PAGE = 20
TARGET_MS = 50.0
FIELDS = "id uploadId state retryCount lastSyncedAt lastSyncFailure verificationState verifiedAt"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Rows default to the issue's million."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20, help="Timed requests per query.")
    parser.add_argument("--postgres-url", default=POSTGRES_URL)
    return parser.parse_args(argv)


def fill(sites: SitePair, rows: int) -> None:
    """`rows` upload registries in one INSERT ... SELECT (seconds, not minutes)."""
    table = UploadReplicator.registry_table_name
    with sites.secondary.tracking() as conn:
        conn.execute(
            text(
                f"INSERT INTO {table} (upload_id, created_at, state, retry_count, last_synced_at,"
                " last_sync_failure, verification_state, verified_at, verification_checksum)"
                " SELECT g, now() - make_interval(secs => g), CASE WHEN g % 10 = 0 THEN 3"
                " ELSE 2 END, CASE WHEN g % 10 = 0 THEN 1 ELSE 0 END,"
                " CASE WHEN g % 10 = 0 THEN NULL ELSE now() - make_interval(secs => g) END,"
                " CASE WHEN g % 10 = 0 THEN 'Download failed' END,"
                " CASE WHEN g % 10 = 0 THEN 0 ELSE 2 END,"
                " CASE WHEN g % 10 = 0 THEN NULL ELSE now() END,"
                " CASE WHEN g % 10 = 0 THEN NULL ELSE md5(g::text) || md5(g::text) END"
                " FROM generate_series(1, :rows) AS g"
            ),
            {"rows": rows},
        )
    with sites.secondary.tracking_engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text(f"ANALYZE {table}"))


def timed(action: Callable[[], Any], repeat: int) -> list[float]:
    """Milliseconds of each of `repeat` calls, after one warm-up call."""
    action()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return times


def graphql(client: httpx.Client, token: str, arguments: str, fields: str) -> Callable[[], Any]:
    """A request for one page of upload registries."""
    query = f"{{ geoNode {{ uploadRegistries{arguments} {{ {fields} }} }} }}"

    def request() -> Any:
        response = client.post(
            "api/graphql", json={"query": query}, headers={"PRIVATE-TOKEN": token}
        )
        body = response.json()
        if response.status_code != 200 or "errors" in body:
            raise SystemExit(f"query failed: {response.status_code} {body}")
        return body

    return request


def plain(sites: SitePair, sql: str) -> Callable[[], Any]:
    """The same page read with one plain SQL statement."""
    engine = sites.secondary.tracking_engine

    def read() -> Any:
        with engine.connect() as conn:
            return conn.execute(text(sql)).all()

    return read


def report(label: str, times: list[float], baseline: list[float] | None = None) -> None:
    """One line: p50 and p99 in ms, the target, and the ratio to the keyset SQL."""
    ordered = sorted(times)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    line = f"{label:<46} p50 {p50:7.1f} ms  p99 {p99:7.1f} ms"
    if baseline is not None:
        line += f"  x{p50 / statistics.median(baseline):5.1f} the keyset SQL"
        line += "  (target < 50 ms: " + ("met" if p50 < TARGET_MS else "MISSED") + ")"
    print(line, flush=True)


def run(args: argparse.Namespace, root: Path) -> None:
    """Build, fill, serve and time."""
    databases = DatabaseFactory("postgres", root / "db", args.postgres_url)
    replicators = [UploadReplicator, PackageFileReplicator, SnippetReplicator]
    sites = build_site_pair(root / "sites", replicators, databases)
    try:
        started = time.perf_counter()
        fill(sites, args.rows)
        print(f"{args.rows:,} registries written in {time.perf_counter() - started:.1f} s")
        with sites.primary.main() as conn:
            token = create_admin_token(conn, "bench", sites.primary.clock.now())
        table = UploadReplicator.registry_table_name
        deep = args.rows * 9 // 10 // 10 * 10  # a failed row's id, 90 % into the keyset
        cursor = encode_cursor("ID_ASC", deep, deep)
        with serve_in_thread(create_app(sites.secondary)) as base:
            with httpx.Client(base_url=base, timeout=60) as client:
                measure(args, sites, client, token, table, deep, cursor)
    finally:
        sites.dispose()
        databases.cleanup()


def measure(
    args: argparse.Namespace,
    sites: SitePair,
    client: httpx.Client,
    token: str,
    table: str,
    deep: int,
    cursor: str,
) -> None:
    """Time each query beside its plain SQL."""
    nodes = f"nodes {{ {FIELDS} }} pageInfo {{ endCursor hasNextPage }}"
    failed = f"{table} WHERE state = 3"
    cases = [
        ("first page", f"(first: {PAGE})", f"SELECT * FROM {table} ORDER BY id LIMIT {PAGE}"),
        (
            "first page, FAILED",
            f"(replicationState: FAILED, first: {PAGE})",
            f"SELECT * FROM {failed} ORDER BY id LIMIT {PAGE}",
        ),
        (
            "deep page (90 %), FAILED",
            f'(replicationState: FAILED, first: {PAGE}, after: "{cursor}")',
            f"SELECT * FROM {failed} AND id > {deep} ORDER BY id LIMIT {PAGE}",
        ),
        (
            "first page, LAST_SYNCED_AT_DESC",
            f"(sort: LAST_SYNCED_AT_DESC, first: {PAGE})",
            f"SELECT * FROM {table} ORDER BY coalesce(last_synced_at, 'infinity') DESC,"
            f" id DESC LIMIT {PAGE}",
        ),
    ]
    for label, arguments, sql in cases:
        baseline = timed(plain(sites, sql), args.repeat)
        report(f"  plain SQL: {label}", baseline)
        report(
            f"  GraphQL:   {label}",
            timed(graphql(client, token, arguments, nodes), args.repeat),
            baseline,
        )
    offset = f"SELECT * FROM {failed} ORDER BY id LIMIT {PAGE} OFFSET {deep // 10}"
    report("  plain SQL: the same deep page by OFFSET", timed(plain(sites, offset), args.repeat))
    count_sql = f"SELECT count(*) FROM {failed}"
    baseline = timed(plain(sites, count_sql), max(3, args.repeat // 4))
    report("  plain SQL: count, FAILED", baseline)
    count = graphql(client, token, "(replicationState: FAILED, first: 1)", "count")
    report("  GraphQL:   count, FAILED", timed(count, max(3, args.repeat // 4)), baseline)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark in a scratch directory that is removed afterwards."""
    args = parse_args(argv)
    configure(level="warning")
    root = Path(tempfile.mkdtemp(prefix="geosync-bench-pages-"))
    try:
        run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
