"""Faults of the event log: rows no correct primary writes, and the whole log read twice.

Malformed rows are written straight into `geo_events` between real events, as a buggy or newer
primary (or a hand-edited database) might: unknown names, payloads that are not JSON or lack
their fields, ids of the wrong type or out of range, a `deleted` whose path leaves the storage.
The cursor must skip each with one warning line and a counted reason, apply every real event,
and end at the newest id. Replaying the log from the start must change nothing that matters.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
from collections import Counter
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import func, insert, select, text
from structlog.testing import LogCapture

from geosync.db.tables import geo_events
from geosync.demo.models import PackageFile, Upload
from geosync.demo.replicators import PackageFileReplicator, UploadReplicator
from geosync.metrics import metrics_for
from geosync.registry import Registry
from geosync.secondary.cursor_state import store_position, stored_position
from geosync.secondary.log_cursor import LogCursor
from geosync.states import SyncState, VerificationState
from geosync.testing.faults.base import FaultContext, Row
from geosync.testing.faults.harness import (
    KiB,
    Stopwatch,
    add_uploads,
    attempts,
    seconds,
    site_pair,
    wait_until,
)
from geosync.testing.sites import SitePair
from geosync.testing.workers import checksum_on_primary, secondary_worker

NOT_JSON = "{not json"
BATCH = 50


@dataclass(frozen=True)
class Malformed:
    """One kind of bad row: its columns, the reason it must be skipped with, and how a backend
    stores a payload that is not JSON (SQLite takes any text; PostgreSQL's JSONB refuses it, so
    there the closest is a JSON string)."""

    name: str
    replicable: str
    event: str
    payload: Any
    reason: str
    raw_payload: str | None = None
    raw_created_at: str | None = None


def malformed_kinds(backend: str, canary: str) -> list[Malformed]:
    """Every kind of bad row; `canary` is a path (relative to the secondary's upload storage)
    outside the storage that a `deleted` row tries to remove."""
    far = 10**12
    kinds = [
        Malformed(
            "unknown event name", "upload", "exploded", {"model_record_id": 1}, "unknown_event"
        ),
        Malformed(
            "unknown replicable name",
            "nonexistent",
            "created",
            {"model_record_id": 1},
            "unknown_replicable",
        ),
        Malformed("empty names", "", "", {"model_record_id": 1}, "unknown_replicable"),
        Malformed(
            "payload not an object", "upload", "created", ["not", "a", "dict"], "malformed_payload"
        ),
        Malformed("payload JSON null", "upload", "created", None, "malformed_payload"),
        Malformed("model_record_id missing", "upload", "created", {}, "malformed_payload"),
        Malformed(
            "model_record_id a string",
            "upload",
            "created",
            {"model_record_id": "7"},
            "malformed_payload",
        ),
        Malformed(
            "model_record_id negative",
            "upload",
            "created",
            {"model_record_id": -4},
            "malformed_payload",
        ),
        # SQLite's integers hold 10**12 (no such record: out of scope), PostgreSQL's do not.
        Malformed(
            "model_record_id beyond the id column",
            "upload",
            "created",
            {"model_record_id": far},
            "out_of_scope" if backend == "sqlite" else "malformed_payload",
        ),
        Malformed(
            "model_record_id beyond 64 bits",
            "upload",
            "created",
            {"model_record_id": 10**20},
            "malformed_payload",
        ),
        Malformed(
            "deleted: path leaves the storage",
            "upload",
            "deleted",
            {"model_record_id": far, "blob_path": canary, "storage": "uploads"},
            "unsafe_path",
        ),
        Malformed(
            "checksum_succeeded without id",
            "upload",
            "checksum_succeeded",
            {"checksum": "x"},
            "malformed_payload",
        ),
    ]
    if backend == "sqlite":
        kinds += [
            Malformed(
                "payload not JSON",
                "upload",
                "created",
                {},
                "malformed_payload",
                raw_payload=NOT_JSON,
            ),
            Malformed(
                "created_at not a time",
                "upload",
                "created",
                {"model_record_id": 1},
                "malformed_row",
                raw_created_at="yesterday-ish",
            ),
        ]
    else:
        kinds.append(
            Malformed("payload a JSON string", "upload", "created", NOT_JSON, "malformed_payload")
        )
    return kinds


def write_malformed(pair: SitePair, kind: Malformed) -> int:
    """Write one bad row straight into the primary's event log; its id."""
    values = {
        "replicable_name": kind.replicable,
        "event_name": kind.event,
        "payload": kind.payload,
        "created_at": pair.primary.clock.now(),
    }
    with pair.primary.main() as conn:
        event_id = int(
            conn.execute(insert(geo_events).returning(geo_events.c.id), values).scalar_one()
        )
        for column, raw in (("payload", kind.raw_payload), ("created_at", kind.raw_created_at)):
            if raw is not None:  # SQLite only: its columns take any text
                conn.execute(
                    text(f"UPDATE geo_events SET {column} = :raw WHERE id = :id"),
                    {"raw": raw, "id": event_id},
                )
    return event_id


def newest_event(pair: SitePair) -> int:
    """The id of the newest event in the primary's log (0 when it is empty)."""
    with pair.primary.main_engine.connect() as conn:
        return int(conn.execute(select(func.max(geo_events.c.id))).scalar() or 0)


@contextmanager
def captured_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every structured log line of this process during the block, whatever the configured
    level; the configuration is restored after."""
    saved = structlog.get_config()
    capture = LogCapture()
    structlog.configure(
        processors=[capture],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        cache_logger_on_first_use=False,
    )
    try:
        yield capture.entries
    finally:
        structlog.configure(**saved)


def _skipped_metric(pair: SitePair) -> Counter[str]:
    found: Counter[str] = Counter()
    for metric in metrics_for(pair.secondary).events_skipped.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                found[sample.labels["reason"]] += int(sample.value)
    return found


def _registered(pair: SitePair, ids: set[int]) -> int:
    registry = Registry(pair.secondary, UploadReplicator)
    with pair.secondary.tracking_engine.connect() as conn:
        return len(set(conn.execute(select(registry.key)).scalars()) & ids)


def malformed_event_rows(ctx: FaultContext, size: int) -> Row:
    """`size` real events with every kind of malformed row between them (several of each)."""
    rng = random.Random(ctx.seed)
    with site_pair(ctx, "malformed-events") as pair:
        storage = pair.secondary.settings.blob_storage("uploads")
        canary = ctx.root / "canary.txt"
        canary.write_text("must survive")
        kinds = malformed_kinds(ctx.backend, os.path.relpath(canary, storage))
        copies = max(1, size // (5 * len(kinds)))
        good: set[int] = set()
        bad: dict[int, Malformed] = {}
        for n in range(copies):
            good |= set(add_uploads(pair, [16] * (size // copies), rng, f"m{n}"))
            for kind in kinds:
                bad[write_malformed(pair, kind)] = kind
        newest = newest_event(pair)
        cursor = LogCursor(pair.secondary, batch_size=BATCH)
        bound = math.ceil((len(good) + len(bad)) / BATCH) + 2
        batches = 0
        with captured_logs() as logs:
            while batches < bound and cursor.process_batch():
                batches += 1
        with pair.secondary.tracking_engine.connect() as conn:
            position = stored_position(conn) or 0
        lines = Counter(
            (line["event_id"], line["reason"]) for line in logs if line["event"] == "event skipped"
        )
        crashed = sum(1 for line in logs if line["event"] == "event failed")
        metric = _skipped_metric(pair)
        registered = _registered(pair, good)
    expected = Counter(kind.reason for kind in bad.values())
    one_line_each = all(lines[(event_id, kind.reason)] == 1 for event_id, kind in bad.items())
    passed = (
        position == newest
        and registered == len(good)
        and one_line_each
        and sum(lines.values()) == len(bad)
        and all(metric[reason] == n for reason, n in expected.items())
        and crashed == 0
        and canary.exists()
    )
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(metric.items()))
    return Row(
        scenario="malformed rows in the event log",
        done=f"{len(bad)} malformed rows of {len(kinds)} kinds between {len(good)} real events",
        expected=(
            "each skipped with one warning line and a counted reason; every real event applied;"
            " the cursor at the newest id; nothing outside the storage removed"
        ),
        measured=(
            f"cursor at {position} of {newest} after {batches} batches of {BATCH};"
            f" {registered}/{len(good)} real events applied; {sum(lines.values())} skip lines"
            f" ({'one per row' if one_line_each else 'NOT one per row'}); skipped: {reasons};"
            f" {crashed} handler crashes; canary {'intact' if canary.exists() else 'REMOVED'}"
        ),
        passed=passed,
        figures={
            "malformed": len(bad),
            "kinds": len(kinds),
            "stuck": float(position != newest),
            "applied": registered,
            "real_events": len(good),
            "skip_lines": sum(lines.values()),
            "handler_crashes": crashed,
            "canary_removed": float(not canary.exists()),
            "batches": batches,
        },
        backend=ctx.backend,
    )


# -- the log replayed ------------------------------------------------------------------------------


State = dict[tuple[str, int], tuple[int, int, str | None, bool]]


def registry_state(pair: SitePair) -> State:
    """What a replay must not change: every registry row's sync and verification state, its
    checksum and whether it is missing on the primary (times and counters aside)."""
    state: State = {}
    for replicator in (UploadReplicator, PackageFileReplicator):
        registry = Registry(pair.secondary, replicator)
        t = registry.table
        with pair.secondary.tracking_engine.connect() as conn:
            for row in conn.execute(
                select(
                    registry.key,
                    t.c.state,
                    t.c.verification_state,
                    t.c.verification_checksum,
                    t.c.missing_on_primary,
                )
            ):
                state[(replicator.replicable_name, int(row[0]))] = (
                    int(row[1]),
                    int(row[2]),
                    row[3],
                    bool(row[4]),
                )
    return state


def file_state(pair: SitePair) -> dict[str, str]:
    """Every file under the secondary's blob storages, by relative path, with its SHA-256."""
    found: dict[str, str] = {}
    for storage in ("uploads", "packages"):
        root = pair.secondary.settings.blob_storage(storage)
        for path in root.rglob("*"):
            if path.is_file():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                found[f"{storage}/{path.relative_to(root)}"] = digest
    return found


def _settled(pair: SitePair, expected: int, newest: int) -> Callable[[], bool]:
    def check() -> bool:
        with pair.secondary.tracking_engine.connect() as conn:
            if stored_position(conn) != newest:
                return False
        state = registry_state(pair)
        return len(state) == expected and all(
            s == SyncState.SYNCED and v == VerificationState.SUCCEEDED
            for s, v, _, _ in state.values()
        )

    return check


def make_history(pair: SitePair, size: int, rng: random.Random) -> int:
    """Uploads and package files created, some of each deleted, some package files rewritten
    (publishing `updated`); returns how many records remain."""
    uploads = list(add_uploads(pair, [rng.randint(1, 8 * KiB) for _ in range(size)], rng, "r"))
    with pair.primary.session() as session:
        packages = [PackageFile(file_name=f"p{n}.tgz", namespace_id=1) for n in range(size // 2)]
        session.add_all(packages)
        session.flush()
        for package in packages:
            path = PackageFileReplicator(package).file_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(rng.randbytes(rng.randint(1, 4 * KiB)))
        session.commit()
        package_ids = [p.id for p in packages]
    doomed = rng.sample(uploads, size // 10)
    rewritten = rng.sample(package_ids, len(package_ids) // 3)
    with pair.primary.session() as session:
        for upload_id in doomed:
            session.delete(session.get(Upload, upload_id))
        for package_id in rewritten:
            rewrite = session.get(PackageFile, package_id)
            assert rewrite is not None
            PackageFileReplicator(rewrite).file_path().write_bytes(rng.randbytes(1024))
            rewrite.replicator.handle_after_update()
        session.commit()
    return len(uploads) - len(doomed) + len(package_ids)


def event_log_replayed_twice(ctx: FaultContext, size: int) -> Row:
    """The secondary reads the whole event log a second time (its cursor moved back to the
    start while the worker runs): registries and files must end as they were."""
    rng = random.Random(ctx.seed)
    with site_pair(ctx, "replay") as pair:
        remaining = make_history(pair, size, rng)
        checksum_on_primary(pair)
        newest = newest_event(pair)
        with pair.primary_served(), secondary_worker(pair, verification=True):
            settled = _settled(pair, remaining, newest)
            first = wait_until(settled, 60 + size * 0.1, 0.2)
            before_rows, before_files = registry_state(pair), file_state(pair)
            syncs = attempts(pair.secondary, PackageFileReplicator, "sync", "synced")
            syncs += attempts(pair.secondary, UploadReplicator, "sync", "synced")
            clock = Stopwatch()
            with pair.secondary.tracking() as conn:
                store_position(conn, 0, pair.secondary.clock.now())
            replayed = wait_until(settled, 60 + size * 0.1, 0.2)
            elapsed = clock.seconds()
            after_rows, after_files = registry_state(pair), file_state(pair)
            again = attempts(pair.secondary, PackageFileReplicator, "sync", "synced")
            again += attempts(pair.secondary, UploadReplicator, "sync", "synced")
    rows_differing = sum(
        1 for k in before_rows.keys() | after_rows.keys() if before_rows.get(k) != after_rows.get(k)
    )
    files_differing = sum(
        1
        for k in before_files.keys() | after_files.keys()
        if before_files.get(k) != after_files.get(k)
    )
    resynced = sum((again - syncs).values())
    passed = first and replayed and rows_differing == 0 and files_differing == 0
    return Row(
        scenario="event log replayed twice",
        done=(
            f"a log of {newest} events (created, updated, deleted, checksum_succeeded) over"
            f" {remaining} records read a second time from event 1 while the worker runs"
        ),
        expected="identical registries (states, checksums) and identical files afterwards",
        measured=(
            f"replay settled {'in ' + seconds(elapsed) if replayed else 'NOT'};"
            f" {rows_differing} registry rows and {files_differing} files differ;"
            f" {resynced} copies synced again (`updated` events re-queue their record)"
        ),
        passed=passed,
        figures={
            "events": newest,
            "records": remaining,
            "rows_differing": rows_differing,
            "files_differing": files_differing,
            "resynced": resynced,
            "settled": float(first and replayed),
        },
        backend=ctx.backend,
    )
