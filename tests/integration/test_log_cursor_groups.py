"""The log cursor's set-wise path: a batch's events applied in layers of distinct records
(both DBs).

A batch must end in exactly the state that applying its events one by one with `handle_event`
gives, keep per-record event order whatever the kinds of events, cost statements per layer
rather than per event, and never let one bad event sink the others.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, event, insert, select

from geosync.clock import FrozenClock
from geosync.db.tables import geo_events
from geosync.demo.models import PackageFile, Upload
from geosync.demo.replicators import PackageFileReplicator, SnippetReplicator, UploadReplicator
from geosync.errors import SkipEvent
from geosync.flags import set_flag
from geosync.metrics import metrics_for
from geosync.registry import Registry
from geosync.replicator import CHECKSUM_SUCCEEDED, CREATED, DELETED, UPDATED, Replicator
from geosync.secondary.cursor_state import store_position
from geosync.secondary.handlers import Event, HandlerContext, handle_event
from geosync.secondary.log_cursor import LogCursor
from geosync.states import SyncState, VerificationState
from geosync.testing import DatabaseFactory, SitePair, build_site_pair
from tests.conftest import DEMO_REPLICATORS, POSTGRES_URL

UPLOAD = UploadReplicator.replicable_name
PACKAGE = PackageFileReplicator.replicable_name


# -- building blocks ---------------------------------------------------------------------------


def add_records(sites: SitePair, uploads: list[int], packages: list[int]) -> None:
    """Model rows on the primary, written without publishing events (the test writes those)."""
    with sites.primary.main() as conn:
        if uploads:
            rows = [{"id": i, "path": f"u/{i}.bin", "namespace_id": 1} for i in uploads]
            conn.execute(insert(Upload), rows)
        if packages:
            rows = [{"id": i, "file_name": f"p{i}.bin", "namespace_id": 1} for i in packages]
            conn.execute(insert(PackageFile), rows)


def add_events(sites: SitePair, clock: FrozenClock, events: list[tuple[str, str, Any]]) -> None:
    """Event rows (replicable, event, payload) on the primary, one second apart."""
    with sites.primary.main() as conn:
        for name, event, payload in events:
            values = {
                "replicable_name": name,
                "event_name": event,
                "payload": payload,
                "created_at": clock.advance(1),
            }
            conn.execute(insert(geo_events), values)


def created(name: str, record_id: Any) -> tuple[str, str, Any]:
    return (name, CREATED, {"model_record_id": record_id})


def updated(name: str, record_id: Any) -> tuple[str, str, Any]:
    return (name, UPDATED, {"model_record_id": record_id})


def checksum(name: str, record_id: Any) -> tuple[str, str, Any]:
    return (name, CHECKSUM_SUCCEEDED, {"model_record_id": record_id})


def upload_deleted(record_id: int, blob_path: str | None = None) -> tuple[str, str, Any]:
    payload = {"model_record_id": record_id, "blob_path": blob_path or f"u/{record_id}.bin"}
    return (UPLOAD, DELETED, {**payload, "storage": "uploads"})


def package_deleted(record_id: int) -> tuple[str, str, Any]:
    payload = {"model_record_id": record_id, "blob_path": f"p{record_id}.bin"}
    return (PACKAGE, DELETED, {**payload, "storage": "packages"})


def local_upload(sites: SitePair, record_id: int) -> Path:
    """Where the secondary keeps upload `record_id`'s file."""
    return sites.secondary.settings.blob_storage("uploads") / "u" / f"{record_id}.bin"


def put_local_upload(sites: SitePair, record_id: int) -> None:
    path = local_upload(sites, record_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"copy")


def registries(sites: SitePair) -> dict[tuple[str, int], dict[str, Any]]:
    """Every registry row of the secondary by (replicable, record id), without surrogate ids."""
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    with sites.secondary.tracking_engine.connect() as conn:
        for replicator in DEMO_REPLICATORS:
            registry = Registry(sites.secondary, replicator)
            for row in conn.execute(select(registry.table)):
                values = dict(row._mapping)
                values.pop("id")
                key = values.pop(replicator.registry_foreign_key)
                rows[(replicator.replicable_name, int(key))] = values
    return rows


def skip_counts(sites: SitePair) -> dict[str, float]:
    """The secondary's skipped-event counter by reason."""
    skipped = metrics_for(sites.secondary).events_skipped
    return {
        s.labels["reason"]: s.value
        for m in skipped.collect()
        for s in m.samples
        if s.name.endswith("_total") and s.value
    }


def read_events(sites: SitePair) -> list[Event]:
    with sites.primary.main_engine.connect() as conn:
        rows = conn.execute(select(geo_events).order_by(geo_events.c.id))
        return [Event(r.id, r.replicable_name, r.event_name, r.payload, r.created_at) for r in rows]


def apply_one_by_one(sites: SitePair) -> dict[str, int]:
    """The reference: every event through `handle_event` in its own savepoint, in log order."""
    reasons: dict[str, int] = {}
    geo = sites.secondary
    with geo.main_engine.connect() as main, geo.tracking() as tracking:
        node = geo.current_node(main)
        assert node is not None
        ctx = HandlerContext(geo, node, main, tracking)
        for event in read_events(sites):
            try:
                with tracking.begin_nested():
                    handle_event(ctx, event)
            except SkipEvent as skip:
                reasons[skip.reason] = reasons.get(skip.reason, 0) + 1
            except Exception:
                reasons["handler_error"] = reasons.get("handler_error", 0) + 1
    return reasons


def seed_registry(sites: SitePair, replicator: type[Replicator], ids: list[int]) -> Registry:
    registry = Registry(sites.secondary, replicator)
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, ids)
    return registry


def sync_done(sites: SitePair, replicator: type[Replicator], record_id: int) -> None:
    """Mark an existing registry row synced, as a finished download would."""
    registry = Registry(sites.secondary, replicator)
    with sites.secondary.tracking() as conn:
        started = registry.start(conn, record_id)
        assert registry.synced(conn, record_id, started)


# -- a mixed batch, set-wise against one by one ------------------------------------------------


def mixed_log(sites: SitePair, clock: FrozenClock) -> None:
    """Registries in several states and a log interleaving every kind of event."""
    add_records(sites, uploads=[1, 2, 3, 5, 6, 7], packages=[1, 2, 3])
    seed_registry(sites, UploadReplicator, [2, 5])
    seed_registry(sites, PackageFileReplicator, [1])
    sync_done(sites, UploadReplicator, 2)
    sync_done(sites, PackageFileReplicator, 1)
    put_local_upload(sites, 3)  # a stale copy the `deleted` below must remove
    put_local_upload(sites, 5)
    add_events(
        sites,
        clock,
        [
            created(UPLOAD, 1),  # new row
            created(UPLOAD, 2),  # row exists and is synced: left alone
            updated(PACKAGE, 1),  # synced row made pending again
            created(PACKAGE, 2),
            updated(PACKAGE, 2),  # same record again: pending since the later event
            created(UPLOAD, 3),
            upload_deleted(3),  # after its created: no row, no file
            created(UPLOAD, 4),  # not on the primary: out of scope
            upload_deleted(5),  # another record's delete, amid the group
            created(UPLOAD, 5),  # ... then created again: a fresh pending row
            (UPLOAD, CREATED, {"model_record_id": 0}),  # malformed
            created(UPLOAD, 1),  # repeated: idempotent
            updated(UPLOAD, 6),  # uploads are immutable: unknown event
            updated(PACKAGE, 3),  # no row yet: created pending
            created(UPLOAD, 7),
            upload_deleted(7),
            created(UPLOAD, 7),
        ],
    )


@pytest.fixture
def reference_sites(tmp_path: Path, backend: str, clock: FrozenClock) -> Iterator[SitePair]:
    """A second, independent primary and secondary for the one-by-one reference run."""
    databases = DatabaseFactory(backend, tmp_path / "reference-db", POSTGRES_URL)
    pair = build_site_pair(tmp_path / "reference", DEMO_REPLICATORS, databases, clock=clock)
    yield pair
    pair.dispose()
    databases.cleanup()


def test_a_mixed_batch_ends_as_one_by_one_processing_does(
    sites: SitePair, reference_sites: SitePair, clock: FrozenClock
) -> None:
    start = clock.now()
    mixed_log(sites, clock)
    clock.advance(-(clock.now() - start))  # the same event times on the reference
    mixed_log(reference_sites, clock)

    assert LogCursor(sites.secondary).process_batch() == 17
    expected_skips = apply_one_by_one(reference_sites)

    rows = registries(sites)
    assert rows == registries(reference_sites)
    assert skip_counts(sites) == expected_skips
    assert expected_skips == {"out_of_scope": 1, "malformed_payload": 1, "unknown_event": 1}
    assert sorted(rows) == [
        (PACKAGE, 1),
        (PACKAGE, 2),
        (PACKAGE, 3),
        (UPLOAD, 1),
        (UPLOAD, 2),
        (UPLOAD, 5),
        (UPLOAD, 7),
    ]
    assert rows[(UPLOAD, 2)]["state"] == SyncState.SYNCED
    assert {rows[k]["state"] for k in rows if k != (UPLOAD, 2)} == {SyncState.PENDING}
    times = {e.payload["model_record_id"]: e.created_at for e in read_events(sites)[3:5]}
    assert rows[(PACKAGE, 2)]["pending_since"] == times[2], "the later `updated` wins"
    assert rows[(PACKAGE, 1)]["last_synced_at"] is None
    assert rows[(PACKAGE, 1)]["verification_state"] == VerificationState.DISABLED
    assert not local_upload(sites, 3).exists()
    assert not local_upload(sites, 5).exists()


# -- bad events inside a group -------------------------------------------------------------------


def upload_ids(sites: SitePair) -> set[int]:
    return {record_id for name, record_id in registries(sites) if name == UPLOAD}


def test_a_malformed_event_in_a_group_is_counted_and_skipped_and_the_rest_applied(
    sites: SitePair, clock: FrozenClock
) -> None:
    add_records(sites, uploads=[1, 2, 3, 4], packages=[])
    add_events(
        sites,
        clock,
        [
            created(UPLOAD, 1),
            created(UPLOAD, 2),
            created(UPLOAD, "seven"),
            (UPLOAD, CREATED, ["not", "a", "dict"]),
            created("nonexistent", 3),
            created(UPLOAD, 3),
            created(UPLOAD, 4),
        ],
    )
    assert LogCursor(sites.secondary).process_batch() == 7
    assert upload_ids(sites) == {1, 2, 3, 4}
    assert skip_counts(sites) == {"malformed_payload": 2, "unknown_replicable": 1}


@pytest.mark.parametrize("bad_id", [2**64, 2**40], ids=["beyond-bigint", "beyond-integer"])
def test_when_a_group_fails_set_wise_its_events_are_applied_one_by_one(
    sites: SitePair, clock: FrozenClock, backend: str, bad_id: int
) -> None:
    # 2**64 fits no database integer: asking the registry about it fails. 2**40 fits the
    # registry's big integers but not PostgreSQL's `uploads.id` integer: the scope query fails.
    add_records(sites, uploads=[1, 2, 3], packages=[])
    add_events(
        sites,
        clock,
        [created(UPLOAD, 1), created(UPLOAD, bad_id), created(UPLOAD, 2), created(UPLOAD, 3)],
    )
    cursor = LogCursor(sites.secondary)
    assert cursor.process_batch() == 4
    assert upload_ids(sites) == {1, 2, 3}
    # An id no key can hold names no record: a malformed payload, skipped without a traceback.
    # SQLite's integers hold 2**40, and no such upload exists: out of scope.
    malformed = bad_id == 2**64 or backend == "postgres"
    assert skip_counts(sites) == {"malformed_payload" if malformed else "out_of_scope": 1}
    add_records(sites, uploads=[4], packages=[])
    add_events(sites, clock, [created(UPLOAD, 4)])
    assert cursor.process_batch() == 1
    assert upload_ids(sites) == {1, 2, 3, 4}


# -- flags and races ---------------------------------------------------------------------------


def test_a_disabled_flag_skips_only_its_replicators_events(
    sites: SitePair, clock: FrozenClock
) -> None:
    add_records(sites, uploads=[1, 2, 3], packages=[1, 2])
    seed_registry(sites, UploadReplicator, [3])
    with sites.primary.main() as conn:
        set_flag(
            conn, sites.primary.catalog, UploadReplicator.replication_flag_name, False, clock.now()
        )
    add_events(
        sites,
        clock,
        [
            created(UPLOAD, 1),
            created(PACKAGE, 1),
            created(UPLOAD, 2),
            created(UPLOAD, 3),  # its row exists: nothing to do, nothing skipped
            created(PACKAGE, 2),
        ],
    )
    assert LogCursor(sites.secondary).process_batch() == 5
    assert set(registries(sites)) == {(PACKAGE, 1), (PACKAGE, 2), (UPLOAD, 3)}
    assert skip_counts(sites) == {"flag_disabled": 2}


def test_updated_during_a_running_sync_wins_over_its_completion(
    sites: SitePair, clock: FrozenClock
) -> None:
    add_records(sites, uploads=[], packages=[1, 2])
    registry = seed_registry(sites, PackageFileReplicator, [1, 2])
    with sites.secondary.tracking() as conn:
        started = {record_id: at for record_id, at in registry.claim(conn, 10)}
    add_events(sites, clock, [updated(PACKAGE, 1), updated(PACKAGE, 2)])
    assert LogCursor(sites.secondary).process_batch() == 2
    with sites.secondary.tracking() as conn:
        assert not registry.synced(conn, 1, started[1])
        assert not registry.synced(conn, 2, started[2])
        assert {registry.require(conn, i).sync_state for i in (1, 2)} == {SyncState.PENDING}
        since = {i: registry.require(conn, i).pending_since for i in (1, 2)}
    events = read_events(sites)
    assert since == {e.payload["model_record_id"]: e.created_at for e in events}
    assert since[1] != since[2]


def test_snippets_share_a_batch_with_blobs(sites: SitePair, clock: FrozenClock) -> None:
    from geosync.demo.models import Snippet

    add_records(sites, uploads=[1], packages=[1])
    with sites.primary.main() as conn:
        conn.execute(insert(Snippet), [{"id": 1, "title": "s", "namespace_id": 1}])
    snippet = SnippetReplicator.replicable_name
    add_events(
        sites,
        clock,
        [created(UPLOAD, 1), created(snippet, 1), created(PACKAGE, 1), updated(snippet, 1)],
    )
    assert LogCursor(sites.secondary).process_batch() == 4
    assert set(registries(sites)) == {(UPLOAD, 1), (snippet, 1), (PACKAGE, 1)}
    assert registries(sites)[(snippet, 1)]["pending_since"] == read_events(sites)[3].created_at


# -- every kind of event, several about the same records, in one batch -------------------------


def layered_log(sites: SitePair, clock: FrozenClock) -> None:
    """Synced rows with copies, and a log where each record has two or three events of
    different kinds, interleaved with other records' events."""
    add_records(sites, uploads=[1, 2, 3, 5], packages=[1, 2, 3])
    seed_registry(sites, UploadReplicator, [1])
    seed_registry(sites, PackageFileReplicator, [1, 2])
    for replicator, record_id in (
        (UploadReplicator, 1),
        (PackageFileReplicator, 1),
        (PackageFileReplicator, 2),
    ):
        sync_done(sites, replicator, record_id)
    put_local_upload(sites, 1)
    add_events(
        sites,
        clock,
        [
            checksum(PACKAGE, 1),
            updated(PACKAGE, 2),
            checksum(UPLOAD, 1),
            created(UPLOAD, 2),
            updated(PACKAGE, 1),  # after its checksum: verification disabled again ...
            checksum(PACKAGE, 2),  # ... and this one's re-queued after its update
            upload_deleted(1),  # row and copy gone ...
            checksum(UPLOAD, 2),
            upload_deleted(3),  # no row yet: nothing to delete
            created(UPLOAD, 3),
            checksum(PACKAGE, 1),  # the last word: verification pending
            updated(PACKAGE, 2),  # the last word: verification disabled, pending since now
            created(UPLOAD, 1),  # ... and a fresh row after the delete
            upload_deleted(2),  # created, verified, deleted: no row
            checksum(UPLOAD, 3),
            created(UPLOAD, 5),
            checksum(UPLOAD, 5),
            package_deleted(3),
            created(PACKAGE, 3),
        ],
    )


def test_every_kind_of_event_about_the_same_records_keeps_log_order(
    sites: SitePair, reference_sites: SitePair, clock: FrozenClock
) -> None:
    start = clock.now()
    layered_log(sites, clock)
    clock.advance(-(clock.now() - start))  # the same event times on the reference
    layered_log(reference_sites, clock)

    assert LogCursor(sites.secondary).process_batch() == 19
    expected_skips = apply_one_by_one(reference_sites)

    rows = registries(sites)
    assert rows == registries(reference_sites)
    assert skip_counts(sites) == expected_skips == {}
    assert sorted(rows) == [
        (PACKAGE, 1),
        (PACKAGE, 2),
        (PACKAGE, 3),
        (UPLOAD, 1),
        (UPLOAD, 3),
        (UPLOAD, 5),
    ]
    assert {row["state"] for row in rows.values()} == {SyncState.PENDING}
    verification = {key: row["verification_state"] for key, row in rows.items()}
    assert verification == {
        (PACKAGE, 1): VerificationState.PENDING,
        (PACKAGE, 2): VerificationState.DISABLED,
        (PACKAGE, 3): VerificationState.DISABLED,
        (UPLOAD, 1): VerificationState.DISABLED,
        (UPLOAD, 3): VerificationState.PENDING,
        (UPLOAD, 5): VerificationState.PENDING,
    }
    assert rows[(PACKAGE, 2)]["pending_since"] == read_events(sites)[11].created_at
    assert rows[(UPLOAD, 1)]["last_synced_at"] is None, "a fresh row, not the synced one"
    assert not local_upload(sites, 1).exists()


def test_the_log_replayed_gives_the_same_state(sites: SitePair, clock: FrozenClock) -> None:
    layered_log(sites, clock)
    cursor = LogCursor(sites.secondary)
    assert cursor.process_batch() == 19
    once = registries(sites)
    with sites.secondary.tracking() as conn:
        store_position(conn, 0, clock.now())
    assert cursor.process_batch() == 19
    assert registries(sites) == once
    assert not local_upload(sites, 1).exists()


# -- statements per batch, not per event ---------------------------------------------------------


def count_statements(sites: SitePair) -> list[str]:
    """Collects every statement the secondary's databases run from now on."""
    seen: list[str] = []

    def record(conn: Connection, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    engines = {id(e): e for e in (sites.secondary.tracking_engine, sites.secondary.main_engine)}
    for engine in engines.values():
        event.listen(engine, "before_cursor_execute", record)
    return seen


def many_records_log(sites: SitePair, clock: FrozenClock, first: int, count: int) -> None:
    """For `count` records from `first`: new uploads created and verified, existing package
    rows updated, other existing package rows deleted."""
    uploads = list(range(first, first + count))
    packages = list(range(first, first + 2 * count))
    add_records(sites, uploads=uploads, packages=packages)
    seed_registry(sites, PackageFileReplicator, packages)
    events = [created(UPLOAD, i) for i in uploads] + [checksum(UPLOAD, i) for i in uploads]
    events += [updated(PACKAGE, i) for i in packages[:count]]
    events += [package_deleted(i) for i in packages[count:]]
    add_events(sites, clock, events)


def test_a_batch_costs_the_same_statements_for_five_records_or_fifty(
    sites: SitePair, clock: FrozenClock
) -> None:
    cursor = LogCursor(sites.secondary)
    add_events(sites, clock, [created(UPLOAD, 999)])  # the first start, out of scope
    assert cursor.process_batch() == 1
    statements = count_statements(sites)
    counts = []
    for first, count in ((1, 5), (100, 50)):
        many_records_log(sites, clock, first, count)
        statements.clear()
        assert cursor.process_batch() == 4 * count
        counts.append(len(statements))
    assert counts[0] == counts[1], counts
    uploads = {i for name, i in registries(sites) if name == UPLOAD}
    assert uploads == set(range(1, 6)) | set(range(100, 150))
    packages = {i for name, i in registries(sites) if name == PACKAGE}
    assert packages == set(range(1, 6)) | set(range(100, 150))


# -- bad events amid deletes and checksums -------------------------------------------------------


def test_a_failing_delete_amid_a_layer_loses_none_of_its_neighbours(
    sites: SitePair, clock: FrozenClock, backend: str
) -> None:
    add_records(sites, uploads=[1, 2, 3, 4, 5, 6], packages=[])
    seed_registry(sites, UploadReplicator, [2, 3, 4, 5])
    sync_done(sites, UploadReplicator, 5)
    put_local_upload(sites, 2)
    blocker = sites.secondary.settings.blob_storage("uploads") / "blocker"
    blocker.write_bytes(b"a file where a directory should be")
    add_events(
        sites,
        clock,
        [
            created(UPLOAD, 1),
            checksum(UPLOAD, 1),
            upload_deleted(2),
            upload_deleted(3, "blocker/3.bin"),  # removing it fails: not a directory
            upload_deleted(4, "../outside.bin"),  # an unsafe path: skipped, its row kept
            checksum(UPLOAD, 5),
            created(UPLOAD, 6),
            created(UPLOAD, 2**40),  # on PostgreSQL beyond `uploads.id`: its layer fails too
        ],
    )
    cursor = LogCursor(sites.secondary)
    assert cursor.process_batch() == 8
    rows = registries(sites)
    assert sorted(rows) == [(UPLOAD, 1), (UPLOAD, 3), (UPLOAD, 4), (UPLOAD, 5), (UPLOAD, 6)]
    assert rows[(UPLOAD, 1)]["verification_state"] == VerificationState.PENDING
    assert rows[(UPLOAD, 5)]["verification_state"] == VerificationState.PENDING
    assert rows[(UPLOAD, 5)]["state"] == SyncState.SYNCED
    assert not local_upload(sites, 2).exists()
    assert blocker.exists()
    beyond = "malformed_payload" if backend == "postgres" else "out_of_scope"
    assert skip_counts(sites) == {"handler_error": 1, "unsafe_path": 1, beyond: 1}
    add_records(sites, uploads=[7], packages=[])
    add_events(sites, clock, [created(UPLOAD, 7), upload_deleted(6)])
    assert cursor.process_batch() == 2
    assert {i for _name, i in registries(sites)} == {1, 3, 4, 5, 7}
