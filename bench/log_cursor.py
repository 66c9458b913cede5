"""Benchmark: the secondary's log cursor turning events into registry work.

For each backend a fresh primary and secondary are built; COUNT upload rows and one `created`
event each are written straight into the main database, then the secondary's `LogCursor` runs
batch after batch until it has caught up. Reported: events/s and ms/event of wall time, and the
CPU time this process spent per event (the database server's own CPU is not in that figure).

With `--events mixed` the log holds every kind of event, several about each record as an
application makes them (an upload created, verified, deleted; a package file created, verified,
rewritten twice), and the same log is also applied one event at a time, each in a savepoint,
on a second pair of sites: printed are both, their ratio, and whether both ended in the same
registry state.

    .venv/bin/python bench/log_cursor.py                       # 10,000 events, both databases
    .venv/bin/python bench/log_cursor.py --count 2000 --backend sqlite
    .venv/bin/python bench/log_cursor.py --events mixed

Target: <= 0.5 ms per event on SQLite and PostgreSQL, so that a secondary backfilling 10,000
small blobs at >= 400 files/s on two cores spends little of its CPU following the event log.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select

from geosync.db.tables import geo_events
from geosync.demo.models import PackageFile, Upload
from geosync.demo.replicators import PackageFileReplicator, SnippetReplicator, UploadReplicator
from geosync.log import configure
from geosync.registry import Registry
from geosync.replicator import CHECKSUM_SUCCEEDED, CREATED, DELETED, UPDATED
from geosync.secondary.handlers import Event, HandlerContext
from geosync.secondary.log_cursor import BATCH_SIZE, LogCursor
from geosync.states import SyncState
from geosync.testing import DatabaseFactory, SitePair, build_site_pair

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REPLICATORS = [UploadReplicator, PackageFileReplicator, SnippetReplicator]
TARGET_MS_PER_EVENT = 0.5
ROWS_PER_INSERT = 5000


@dataclass(frozen=True)
class Result:
    """One timed catch-up of the log cursor."""

    backend: str
    events: int
    wall_seconds: float
    cpu_seconds: float

    @property
    def events_per_second(self) -> float:
        """Events handled per second of wall time."""
        return self.events / self.wall_seconds if self.wall_seconds else float("inf")

    @property
    def wall_ms_per_event(self) -> float:
        """Milliseconds of wall time per event."""
        return 1000 * self.wall_seconds / self.events

    @property
    def cpu_ms_per_event(self) -> float:
        """Milliseconds of this process's CPU time per event."""
        return 1000 * self.cpu_seconds / self.events


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """10,000 events on both databases by default."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="`created` events to apply.")
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--postgres-url", default=POSTGRES_URL)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument(
        "--events",
        choices=("created", "mixed"),
        default="created",
        help="`created` events only, or every kind against one-by-one application.",
    )
    return parser.parse_args(argv)


def load_events(sites: SitePair, count: int) -> None:
    """Upload rows 1..count on the primary and one `created` event for each, in id order."""
    now = sites.primary.clock.now()
    with sites.primary.main() as conn:
        for low in range(1, count + 1, ROWS_PER_INSERT):
            ids = range(low, min(low + ROWS_PER_INSERT, count + 1))
            conn.execute(
                insert(Upload),
                [{"id": i, "path": f"b/{i}.bin", "namespace_id": i % 100, "size": 0} for i in ids],
            )
            conn.execute(
                insert(geo_events),
                [
                    {
                        "replicable_name": UploadReplicator.replicable_name,
                        "event_name": CREATED,
                        "payload": {"model_record_id": i},
                        "created_at": now,
                    }
                    for i in ids
                ],
            )


#: One record pair's events in `--events mixed`: (replicator, event) in log order.
MIXED_BLOCK = [
    (UploadReplicator, CREATED),
    (UploadReplicator, CHECKSUM_SUCCEEDED),
    (PackageFileReplicator, CREATED),
    (PackageFileReplicator, CHECKSUM_SUCCEEDED),
    (PackageFileReplicator, UPDATED),
    (PackageFileReplicator, CHECKSUM_SUCCEEDED),
    (PackageFileReplicator, UPDATED),
    (UploadReplicator, DELETED),
]


#: When every mixed event happened: the same on both runs, so their states compare exactly.
MIXED_EVENTS_AT = datetime(2026, 1, 1, tzinfo=UTC)


def load_mixed_events(sites: SitePair, count: int) -> int:
    """Upload and package file rows 1..n on the primary and `MIXED_BLOCK` for each pair, about
    `count` events in all; returns how many were written."""
    pairs = max(1, count // len(MIXED_BLOCK))
    with sites.primary.main() as conn:
        ids = range(1, pairs + 1)
        conn.execute(
            insert(Upload), [{"id": i, "path": f"u/{i}.bin", "namespace_id": 1} for i in ids]
        )
        conn.execute(
            insert(PackageFile),
            [{"id": i, "file_name": f"p{i}.bin", "namespace_id": 1} for i in ids],
        )
        events = [
            {
                "replicable_name": replicator.replicable_name,
                "event_name": name,
                "payload": _mixed_payload(replicator.replicable_name, name, i),
                "created_at": MIXED_EVENTS_AT,
            }
            for i in ids
            for replicator, name in MIXED_BLOCK
        ]
        for low in range(0, len(events), ROWS_PER_INSERT):
            conn.execute(insert(geo_events), events[low : low + ROWS_PER_INSERT])
    return pairs * len(MIXED_BLOCK)


def _mixed_payload(replicable_name: str, event_name: str, record_id: int) -> dict[str, Any]:
    if event_name != DELETED:
        return {"model_record_id": record_id}
    return {"model_record_id": record_id, "blob_path": f"u/{record_id}.bin", "storage": "uploads"}


class OneByOneCursor(LogCursor):
    """The reference: every event applied alone in its own savepoint, in log order."""

    def _apply_all(self, ctx: HandlerContext, events: list[Event]) -> None:
        for event in events:
            self._apply(ctx, event)


def registry_state(sites: SitePair) -> dict[tuple[str, int], tuple[Any, ...]]:
    """The secondary's registry rows: sync state, verification state, pending since."""
    rows: dict[tuple[str, int], tuple[Any, ...]] = {}
    with sites.secondary.tracking_engine.connect() as conn:
        for replicator in REPLICATORS:
            registry = Registry(sites.secondary, replicator)
            c = registry.table.c
            for key, *values in conn.execute(
                select(registry.key, c.state, c.verification_state, c.pending_since)
            ):
                rows[(replicator.replicable_name, int(key))] = tuple(values)
    return rows


def pending_count(sites: SitePair) -> int:
    """How many upload registries are pending on the secondary."""
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking_engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(registry.table)
                .where(registry.table.c.state == SyncState.PENDING)
            ).scalar_one()
        )


def catch_up(cursor: LogCursor) -> int:
    """Run batches until the cursor has read every event; returns how many it handled."""
    handled = 0
    while batch := cursor.process_batch():
        handled += batch
    return handled


def run(backend: str, args: argparse.Namespace, scratch: Path) -> Result:
    """Build the sites, load the events and time the cursor's catch-up."""
    databases = DatabaseFactory(backend, scratch / backend / "db", args.postgres_url)
    sites = build_site_pair(scratch / backend / "sites", REPLICATORS, databases)
    try:
        load_events(sites, args.count)
        cursor = LogCursor(sites.secondary, batch_size=args.batch_size)
        wall, cpu = time.perf_counter(), time.process_time()
        handled = catch_up(cursor)
        result = Result(backend, handled, time.perf_counter() - wall, time.process_time() - cpu)
        if handled != args.count or pending_count(sites) != args.count:
            raise SystemExit(f"{backend}: {handled} events handled, expected {args.count}")
        return result
    finally:
        sites.dispose()
        databases.cleanup()


def run_mixed(
    backend: str, args: argparse.Namespace, scratch: Path, one_by_one: bool
) -> tuple[Result, dict[tuple[str, int], tuple[Any, ...]]]:
    """Build the sites, load the mixed log and time the cursor's catch-up (set-wise, or one
    event at a time); returns the figures and the registry state it ended in."""
    where = scratch / backend / ("one-by-one" if one_by_one else "set-wise")
    databases = DatabaseFactory(backend, where / "db", args.postgres_url)
    sites = build_site_pair(where / "sites", REPLICATORS, databases)
    try:
        count = load_mixed_events(sites, args.count)
        kind = OneByOneCursor if one_by_one else LogCursor
        cursor = kind(sites.secondary, batch_size=args.batch_size)
        wall, cpu = time.perf_counter(), time.process_time()
        handled = catch_up(cursor)
        result = Result(backend, handled, time.perf_counter() - wall, time.process_time() - cpu)
        if handled != count:
            raise SystemExit(f"{backend}: {handled} events handled, expected {count}")
        return result, registry_state(sites)
    finally:
        sites.dispose()
        databases.cleanup()


def print_mixed(backend: str, args: argparse.Namespace, scratch: Path) -> None:
    """Time the mixed log set-wise and one by one; print both, their ratio and the check."""
    fast, state = run_mixed(backend, args, scratch, one_by_one=False)
    slow, reference = run_mixed(backend, args, scratch, one_by_one=True)
    for label, result in (("set-wise", fast), ("one by one", slow)):
        print(
            f"{backend} {label}: {result.events:,} mixed events in {result.wall_seconds:.2f} s"
            f" = {result.events_per_second:,.0f} events/s,"
            f" {result.wall_ms_per_event:.3f} ms/event wall,"
            f" {result.cpu_ms_per_event:.3f} ms/event CPU (this process)"
        )
    same = "same registry state" if state == reference else "DIFFERENT registry state"
    print(
        f"{backend}: set-wise / one by one = {fast.wall_seconds / slow.wall_seconds:.2f}"
        f" of the wall time ({slow.wall_seconds / fast.wall_seconds:.1f}x faster), {same}"
    )
    if state != reference:
        raise SystemExit(f"{backend}: set-wise and one-by-one application disagree")


def main(argv: Sequence[str] | None = None) -> None:
    """Run on the chosen backends, print the figures and judge the target."""
    args = parse_args(argv)
    configure("console", "warning")
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    scratch = Path(tempfile.mkdtemp(prefix="geosync-bench-log-cursor-"))
    try:
        for backend in backends:
            if args.events == "mixed":
                print_mixed(backend, args, scratch)
                continue
            result = run(backend, args, scratch)
            met = result.wall_ms_per_event <= TARGET_MS_PER_EVENT
            print(
                f"{backend}: {result.events:,} created events in {result.wall_seconds:.2f} s"
                f" = {result.events_per_second:,.0f} events/s,"
                f" {result.wall_ms_per_event:.3f} ms/event wall,"
                f" {result.cpu_ms_per_event:.3f} ms/event CPU (this process)"
                f" [{'met' if met else 'MISSED'}: <= {TARGET_MS_PER_EVENT} ms/event]"
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
