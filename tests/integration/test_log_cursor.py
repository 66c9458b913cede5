"""The log cursor: first start, batches, bad events, gaps and the lease (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete, func, insert, select, text

from geosync.clock import FrozenClock
from geosync.db.tables import geo_event_gaps, geo_event_log_state, geo_events
from geosync.demo.models import Upload
from geosync.demo.replicators import UploadReplicator
from geosync.metrics import metrics_for
from geosync.registry import Registry
from geosync.secondary.log_cursor import LogCursor
from geosync.states import SyncState
from geosync.testing import SitePair


def add_uploads(sites: SitePair, count: int) -> list[int]:
    """Upload rows on the primary (each publishes `created`)."""
    with sites.primary.session() as session:
        uploads = [Upload(path=f"f{n}.bin", namespace_id=1) for n in range(count)]
        session.add_all(uploads)
        session.commit()
        return [u.id for u in uploads]


def raw_event(sites: SitePair, event_id: int | None, name: str, event: str, payload: Any) -> int:
    """Write an event row directly, as a buggy or newer primary might."""
    values: dict[str, Any] = {
        "replicable_name": name,
        "event_name": event,
        "payload": payload,
        "created_at": sites.primary.clock.now(),
    }
    if event_id is not None:
        values["id"] = event_id
    with sites.primary.main() as conn:
        return int(conn.execute(insert(geo_events).returning(geo_events.c.id), values).scalar_one())


def registry_ids(sites: SitePair) -> set[int]:
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking_engine.connect() as conn:
        return set(conn.execute(select(registry.key)).scalars())


def cursor_state(sites: SitePair) -> tuple[int, bool]:
    with sites.secondary.tracking_engine.connect() as conn:
        row = conn.execute(select(geo_event_log_state)).one()
    return int(row.event_id), bool(row.pruned_behind)


def test_first_start_reads_from_the_oldest_event_of_an_unpruned_log(sites: SitePair) -> None:
    ids = add_uploads(sites, 3)
    assert LogCursor(sites.secondary).process_batch() == 3
    assert registry_ids(sites) == set(ids)
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking_engine.connect() as conn:
        assert {registry.require(conn, i).sync_state for i in ids} == {SyncState.PENDING}
    assert cursor_state(sites) == (max_event_id(sites), False)


def max_event_id(sites: SitePair) -> int:
    with sites.primary.main_engine.connect() as conn:
        return int(conn.execute(select(func.max(geo_events.c.id))).scalar_one())


def test_first_start_after_pruning_begins_at_the_newest_event(sites: SitePair) -> None:
    add_uploads(sites, 3)
    with sites.primary.main() as conn:
        conn.execute(delete(geo_events).where(geo_events.c.id == 1))
    cursor = LogCursor(sites.secondary)
    assert cursor.process_batch() == 0
    assert registry_ids(sites) == set()
    assert cursor_state(sites) == (max_event_id(sites), True)
    later = add_uploads(sites, 1)
    cursor.process_batch()
    assert registry_ids(sites) == set(later)


def test_batches_are_bounded_and_the_cursor_advances_per_batch(sites: SitePair) -> None:
    ids = add_uploads(sites, 5)
    cursor = LogCursor(sites.secondary, batch_size=2)
    assert [cursor.process_batch() for _ in range(4)] == [2, 2, 1, 0]
    assert registry_ids(sites) == set(ids)


def test_bad_events_are_counted_and_skipped_without_stopping(sites: SitePair) -> None:
    (good,) = add_uploads(sites, 1)
    raw_event(sites, None, "nonexistent", "created", {"model_record_id": 1})
    raw_event(sites, None, "upload", "exploded", {"model_record_id": good})
    raw_event(sites, None, "upload", "created", {"model_record_id": "seven"})
    raw_event(sites, None, "upload", "created", ["not", "a", "dict"])
    (after,) = add_uploads(sites, 1)
    assert LogCursor(sites.secondary).process_batch() == 6
    assert registry_ids(sites) == {good, after}
    assert cursor_state(sites)[0] == max_event_id(sites)
    skipped = metrics_for(sites.secondary).events_skipped
    reasons = {
        s.labels["reason"]: s.value
        for m in skipped.collect()
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert reasons == {"unknown_replicable": 1, "unknown_event": 1, "malformed_payload": 2}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_rows_the_columns_cannot_decode_are_skipped_not_a_stuck_cursor(sites: SitePair) -> None:
    # SQLite keeps whatever text it is given; PostgreSQL's JSONB and timestamptz refuse it.
    (good,) = add_uploads(sites, 1)
    bad_json = raw_event(sites, None, "upload", "created", {"model_record_id": good})
    bad_time = raw_event(sites, None, "upload", "created", {"model_record_id": good})
    with sites.primary.main() as conn:
        conn.execute(
            text("UPDATE geo_events SET payload = '{not json' WHERE id = :i"), {"i": bad_json}
        )
        conn.execute(
            text("UPDATE geo_events SET created_at = 'soon' WHERE id = :i"), {"i": bad_time}
        )
    (after,) = add_uploads(sites, 1)
    cursor = LogCursor(sites.secondary)
    assert cursor.process_batch() == 4
    assert registry_ids(sites) == {good, after}
    assert cursor_state(sites)[0] == max_event_id(sites)
    skipped = metrics_for(sites.secondary).events_skipped
    reasons = {
        s.labels["reason"]: s.value
        for m in skipped.collect()
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert reasons == {"malformed_payload": 1, "malformed_row": 1}
    assert cursor.process_batch() == 0


def test_gaps_are_remembered_reread_after_grace_and_dropped_after_an_hour(
    sites: SitePair, clock: FrozenClock
) -> None:
    ids = add_uploads(sites, 3)
    first = raw_event(sites, None, "upload", "created", {"model_record_id": ids[0]})
    raw_event(sites, first + 2, "upload", "created", {"model_record_id": ids[1]})
    raw_event(sites, first + 5, "upload", "created", {"model_record_id": ids[1]})
    cursor = LogCursor(sites.secondary)
    cursor.process_batch()
    with sites.secondary.tracking_engine.connect() as conn:
        gaps = set(conn.execute(select(geo_event_gaps.c.event_id)).scalars())
        assert gaps == {first + 1, first + 3, first + 4}
        assert cursor.reported_position(conn) == first
    # The transaction that held id first+1 commits late.
    raw_event(sites, first + 1, "upload", "created", {"model_record_id": ids[2]})
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:  # forget it, to see the late event recreate it
        conn.execute(delete(registry.table).where(registry.key == ids[2]))
    cursor.process_batch()
    assert ids[2] not in registry_ids(sites), "gaps wait for their grace period"
    clock.advance(timedelta(minutes=11))
    cursor.process_batch()
    assert ids[2] in registry_ids(sites)
    clock.advance(timedelta(hours=1))
    cursor.process_batch()
    with sites.secondary.tracking_engine.connect() as conn:
        assert set(conn.execute(select(geo_event_gaps.c.event_id)).scalars()) == set()
        assert cursor.reported_position(conn) == first + 5


def test_only_the_lease_holder_reads_and_a_standby_takes_over(
    sites: SitePair, clock: FrozenClock
) -> None:
    add_uploads(sites, 1)
    active = LogCursor(sites.secondary, holder="a")
    standby = LogCursor(sites.secondary, holder="b")
    assert active.process_batch() == 1
    add_uploads(sites, 1)
    assert standby.process_batch() == 0
    clock.advance(timedelta(seconds=31))
    assert standby.process_batch() == 1
    assert active.process_batch() == 0


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_tracking_database_gone_mid_batch_fails_the_round_and_skips_no_event(
    sites: SitePair,
) -> None:
    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError

    cursor = LogCursor(sites.secondary)
    cursor.process_batch()  # the first start
    ids = add_uploads(sites, 3)
    engine = sites.secondary.tracking_engine
    fired: list[int] = []

    def cut(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        # An injected fault: the server ends this connection as the registry rows go in.
        if statement.startswith("INSERT INTO upload_registry") and not fired:
            pid = conn.connection.dbapi_connection.info.backend_pid
            fired.append(pid)
            with engine.connect() as other:
                other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})

    event.listen(engine, "before_cursor_execute", cut)
    try:
        with pytest.raises(OperationalError):
            cursor.process_batch()
    finally:
        event.remove(engine, "before_cursor_execute", cut)
    assert fired
    assert registry_ids(sites) == set()
    skipped = metrics_for(sites.secondary).events_skipped
    assert not [s for m in skipped.collect() for s in m.samples if s.name.endswith("_total")]
    assert cursor.process_batch() == 3  # the batch, read again
    assert registry_ids(sites) == set(ids)
