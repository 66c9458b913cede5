"""The verification state machine (ARCHITECTURE.md §6) on every table that holds it: the primary's
`upload_states` table (option 2), the `package_files` columns (option 1) and a registry.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Connection, select, text, update

from geosync.clock import FrozenClock
from geosync.db.held import HeldConnection
from geosync.demo.models import PackageFile
from geosync.demo.replicators import PackageFileReplicator, UploadReplicator
from geosync.states import VerificationState
from geosync.testing import SitePair
from geosync.verification import (
    BATCH_SIZE,
    Claim,
    Failure,
    Verifiable,
    batch_size,
    claim_batches,
    claim_next,
    lock_claims,
    primary_verifiable,
    registry_verifiable,
)

try:
    from tests import verifyutil as vu
except ModuleNotFoundError:  # tests/ is not a package and the project root is not on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests import verifyutil as vu

S = VerificationState


def claim(sites: SitePair, target: Verifiable, limit: int = BATCH_SIZE) -> list[int]:
    with sites.primary.main() as conn:
        return [c.model_record_id for c in target.claim(conn, limit)]


def claims(sites: SitePair, target: Verifiable, limit: int = BATCH_SIZE) -> list[Claim]:
    with sites.primary.main() as conn:
        return list(target.claim(conn, limit))


@pytest.fixture(params=["states_table", "model_columns"])
def target(request: pytest.FixtureRequest, sites: SitePair) -> Verifiable:
    """Option 2 (uploads) and option 1 (package files): the same machine on either table."""
    if request.param == "states_table":
        return vu.primary_states(sites.primary)
    return vu.package_states(sites.primary)


def add(sites: SitePair, target: Verifiable, content: bytes = b"x") -> int:
    if target.replicator is UploadReplicator:
        return vu.add_upload(sites.primary, content)
    return vu.add_package_file(sites.primary, content)


def row(sites: SitePair, target: Verifiable, record_id: int) -> dict[str, object]:
    with sites.primary.main_engine.connect() as conn:
        found = target.get(conn, record_id)
    assert found is not None
    return found


# -- where the state lives ------------------------------------------------------------------------


def test_a_created_record_starts_pending(sites: SitePair, target: Verifiable) -> None:
    record_id = add(sites, target)
    state = row(sites, target, record_id)
    assert state["verification_state"] == S.PENDING
    assert state["verification_checksum"] is None


def test_uploads_keep_state_in_a_table_and_package_files_on_the_model(sites: SitePair) -> None:
    assert primary_verifiable(sites.primary, UploadReplicator).table.name == "upload_states"
    assert primary_verifiable(sites.primary, PackageFileReplicator).table.name == "package_files"


def test_deleting_a_record_deletes_its_state_row(sites: SitePair) -> None:
    record_id = vu.add_upload(sites.primary, b"x")
    from geosync.demo.models import Upload

    with sites.primary.session() as session:
        session.delete(session.get(Upload, record_id))
        session.commit()
    assert vu.state_of(sites.primary, UploadReplicator, record_id) is None


# -- claims ---------------------------------------------------------------------------------------


def test_claim_marks_rows_started_at_the_claim_time(
    sites: SitePair, target: Verifiable, clock: FrozenClock
) -> None:
    record_id = add(sites, target)
    assert claim(sites, target) == [record_id]
    state = row(sites, target, record_id)
    assert state["verification_state"] == S.STARTED
    assert state["verification_started_at"] == clock.now()
    assert claim(sites, target) == []


def test_claim_takes_at_most_the_batch_and_never_verified_rows_first(
    sites: SitePair, target: Verifiable, clock: FrozenClock
) -> None:
    limit = 10
    ids = [add(sites, target) for _ in range(limit + 2)]
    verified_long_ago = ids[0]
    with sites.primary.main() as conn:
        conn.execute(
            update(target.table)
            .where(target.key == verified_long_ago)
            .values(verified_at=clock.now() - timedelta(days=30))
        )
    first = claim(sites, target, limit)
    assert len(first) == limit
    assert verified_long_ago not in first
    assert claim(sites, target, limit) == [
        verified_long_ago,
        *sorted(set(ids) - set(first) - {ids[0]}),
    ]


def test_failed_rows_top_up_a_claim_only_when_their_retry_is_due(
    sites: SitePair, target: Verifiable, clock: FrozenClock
) -> None:
    failing = add(sites, target)
    (claimed,) = claims(sites, target)
    with sites.primary.main() as conn:
        target.failed(conn, failing, claimed.started_at, "File is missing")
    fresh = add(sites, target)
    assert claim(sites, target) == [fresh]
    clock.advance(timedelta(hours=2))
    assert claim(sites, target) == [failing]


def test_claims_take_never_verified_then_oldest_verified_then_due_failures_in_retry_order(
    sites: SitePair, target: Verifiable, clock: FrozenClock
) -> None:
    never, old, recent, late_failure, early_failure, not_due = (
        add(sites, target) for _ in range(6)
    )
    now = clock.now()
    with sites.primary.main() as conn:
        for record_id, verified in ((old, timedelta(days=30)), (recent, timedelta(days=10))):
            conn.execute(
                update(target.table)
                .where(target.key == record_id)
                .values(verified_at=now - verified)
            )
        for record_id, retry in (
            (late_failure, -timedelta(minutes=1)),
            (early_failure, -timedelta(minutes=5)),
            (not_due, timedelta(minutes=5)),
        ):
            conn.execute(
                update(target.table)
                .where(target.key == record_id)
                .values(verification_state=S.FAILED, verification_retry_at=now + retry)
            )
    order = [claim(sites, target, 1) for _ in range(6)]
    assert order == [[never], [old], [recent], [early_failure], [late_failure], []]


def test_a_claim_of_several_rows_tops_up_pending_ones_with_due_failures(
    sites: SitePair, target: Verifiable, clock: FrozenClock
) -> None:
    failing = add(sites, target)
    with sites.primary.main() as conn:
        conn.execute(
            update(target.table)
            .where(target.key == failing)
            .values(verification_state=S.FAILED, verification_retry_at=clock.now())
        )
    pending = [add(sites, target) for _ in range(3)]
    assert claim(sites, target, 3) == pending
    assert claim(sites, target, 3) == [failing]


def test_two_workers_claiming_at_once_never_get_the_same_row(
    sites: SitePair, target: Verifiable
) -> None:
    ids = {add(sites, target) for _ in range(60)}
    barrier = threading.Barrier(2)
    got: list[list[int]] = [[], []]
    errors: list[BaseException] = []

    def worker(slot: int) -> None:
        try:
            barrier.wait()
            while True:
                batch = claim(sites, target, 3)
                if not batch:
                    return
                got[slot].extend(batch)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert not set(got[0]) & set(got[1])
    assert sorted(got[0] + got[1]) == sorted(ids)


def test_a_claim_skips_rows_another_open_claim_holds(
    sites: SitePair, target: Verifiable, backend: str
) -> None:
    ids = {add(sites, target) for _ in range(6)}
    second: list[int] = []
    done = threading.Event()

    def other_worker() -> None:
        second.extend(claim(sites, target, 3))
        done.set()

    with sites.primary.main() as conn:
        first = [c.model_record_id for c in target.claim(conn, 3)]
        thread = threading.Thread(target=other_worker)
        thread.start()
        # PostgreSQL skips the locked rows at once; SQLite's writer lock makes it wait for us.
        assert done.wait(10 if backend == "postgres" else 1.0) is (backend == "postgres")
    thread.join(30)
    assert len(first) == len(second) == 3
    assert set(first) | set(second) == ids


def batch_sizes(sites: SitePair, capacity: int, count: int) -> list[list[tuple[str, int]]]:
    uploads, packages = vu.primary_states(sites.primary), vu.package_states(sites.primary)
    with sites.primary.main() as conn:
        every = [uploads, packages]
        batches = claim_batches(conn, capacity, every, every, count, size=10)
    return [[(t.replicator.replicable_name, len(c)) for t, c in batch] for batch in batches]


def test_a_round_claims_batches_of_ten_each_starting_with_the_next_type(sites: SitePair) -> None:
    for _ in range(25):
        vu.add_upload(sites.primary, b"u")
    for _ in range(3):
        vu.add_package_file(sites.primary, b"p")
    assert batch_sizes(sites, 100, 4) == [
        [("upload", 10)],
        [("package_file", 3), ("upload", 7)],
        [("upload", 8)],
    ]
    assert batch_sizes(sites, 100, 4) == []


def test_a_round_of_batches_stays_within_the_capacity(sites: SitePair, clock: FrozenClock) -> None:
    ids = [vu.add_upload(sites.primary, b"u") for _ in range(30)]
    target = vu.primary_states(sites.primary)
    with sites.primary.main() as conn:
        conn.execute(
            update(target.table)
            .where(target.key.in_(ids[:4]))
            .values(verification_state=S.STARTED, verification_started_at=clock.now())
        )
    assert batch_sizes(sites, 19, 4) == [[("upload", 10)], [("upload", 5)]]
    assert batch_sizes(sites, 19, 4) == []


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_claim_transaction_on_sqlite_holds_the_write_lock(sites: SitePair) -> None:
    """SQLite has no advisory lock to take: BEGIN IMMEDIATE already serialises claims."""
    database = sites.primary.main_engine.url.database
    assert database is not None
    held = HeldConnection(sites.primary.main_engine)
    try:
        with held.transaction() as conn:
            lock_claims(conn, "primary")
            other = sqlite3.connect(database, timeout=0.1, isolation_level=None)
            try:
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    other.execute("BEGIN IMMEDIATE")
            finally:
                other.close()
    finally:
        held.close()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_only_the_claim_transaction_skips_waiting_for_the_disk_and_bitmap_scans(
    sites: SitePair,
) -> None:
    def settings(conn: Connection) -> tuple[str, str]:
        commit = conn.execute(text("SHOW synchronous_commit")).scalar_one()
        bitmaps = conn.execute(text("SHOW enable_bitmapscan")).scalar_one()
        return str(commit), str(bitmaps)

    held = HeldConnection(sites.primary.main_engine)
    try:
        with held.transaction() as conn:
            lock_claims(conn, "primary")
            # A claim lost in a crash only leaves its rows pending.
            assert settings(conn) == ("off", "off")
        with held.transaction() as conn:
            # Results stored later on the same connection commit durably again.
            assert settings(conn) == ("on", "on")
        with held.transaction() as conn:
            # A transaction that stores results and then claims (the pipeline's) stays durable.
            lock_claims(conn, "primary", claims_only=False)
            assert settings(conn) == ("on", "off")
    finally:
        held.close()


# -- the next batch -------------------------------------------------------------------------------


def next_batch(sites: SitePair, capacity: int, size: int | None = None) -> list[int] | None:
    uploads = vu.primary_states(sites.primary)
    with sites.primary.main() as conn:
        batch = claim_next(conn, capacity, [uploads], [uploads], size=size)
    if batch is None:
        return None
    return [claim.model_record_id for _target, claims in batch for claim in claims]


def test_a_batch_is_half_the_capacity_up_to_a_hundred() -> None:
    assert [batch_size(c) for c in (1, 2, 3, 25, 100, 200, 1000)] == [1, 1, 1, 12, 50, 100, 100]
    assert BATCH_SIZE == 100


def test_the_next_batch_says_no_room_apart_from_no_work(sites: SitePair) -> None:
    assert next_batch(sites, 4) == []  # no work
    ids = [vu.add_upload(sites.primary, b"u") for _ in range(5)]
    assert next_batch(sites, 4) == ids[:2]  # half the capacity
    assert next_batch(sites, 4) == ids[2:4]
    assert next_batch(sites, 4) is None  # four started: no room, though one is waiting
    assert next_batch(sites, 6, size=10) == ids[4:]  # the room bounds the batch, not the size


def test_a_batch_shares_one_claim_time_across_types(sites: SitePair, clock: FrozenClock) -> None:
    vu.add_upload(sites.primary, b"u")
    vu.add_package_file(sites.primary, b"p")
    uploads, packages = vu.primary_states(sites.primary), vu.package_states(sites.primary)
    with sites.primary.main() as conn:
        batch = claim_next(conn, 100, [uploads, packages], [uploads, packages])
    assert batch is not None and len(batch) == 2
    assert {claim.started_at for _t, claims in batch for claim in claims} == {clock.now()}


# -- transitions ----------------------------------------------------------------------------------


def test_succeeded_stores_the_checksum_and_clears_failures(
    sites: SitePair, target: Verifiable, clock: FrozenClock
) -> None:
    record_id = add(sites, target)
    (first,) = claims(sites, target)
    with sites.primary.main() as conn:
        target.failed(conn, record_id, first.started_at, "File is missing")
    clock.advance(timedelta(hours=2))
    (second,) = claims(sites, target)
    with sites.primary.main() as conn:
        assert target.succeeded(conn, record_id, second.started_at, "abc")
    state = row(sites, target, record_id)
    assert state["verification_state"] == S.SUCCEEDED
    assert state["verification_checksum"] == "abc"
    assert state["verified_at"] == clock.now()
    assert state["verification_failure"] is None
    assert state["verification_retry_count"] == 0
    assert state["verification_retry_at"] is None


def test_succeeded_is_refused_unless_started(sites: SitePair, target: Verifiable) -> None:
    record_id = add(sites, target)
    with sites.primary.main() as conn:
        assert not target.succeeded(conn, record_id, sites.primary.clock.now(), "abc")
    assert row(sites, target, record_id)["verification_state"] == S.PENDING


def test_failed_counts_retries_backs_off_and_clears_the_checksum(
    sites: SitePair, target: Verifiable, clock: FrozenClock
) -> None:
    record_id = add(sites, target)
    (first,) = claims(sites, target)
    with sites.primary.main() as conn:
        assert target.succeeded(conn, record_id, first.started_at, "abc")
        target.pending(conn, record_id)
    (second,) = claims(sites, target)
    with sites.primary.main() as conn:
        count = target.failed(conn, record_id, second.started_at, "E" * 400)
    assert count == 1
    state = row(sites, target, record_id)
    assert state["verification_state"] == S.FAILED
    assert state["verification_checksum"] is None
    assert state["verified_at"] == clock.now()
    assert len(str(state["verification_failure"])) == 255
    delay = state["verification_retry_at"] - clock.now()  # type: ignore[operator]
    assert timedelta(seconds=16) <= delay <= timedelta(seconds=16 + 29 * 2)


def test_pending_from_failed_keeps_the_retry_count_for_progressive_backoff(
    sites: SitePair, target: Verifiable, clock: FrozenClock
) -> None:
    record_id = add(sites, target)
    for expected in (1, 2):
        (started,) = claims(sites, target)
        with sites.primary.main() as conn:
            assert target.failed(conn, record_id, started.started_at, "boom") == expected
        clock.advance(timedelta(hours=2))
    with sites.primary.main() as conn:
        assert target.pending(conn, record_id)
    state = row(sites, target, record_id)
    assert state["verification_state"] == S.PENDING
    assert state["verification_retry_count"] == 2
    assert state["verification_failure"] is None


def test_pending_from_succeeded_clears_the_retry_fields(
    sites: SitePair, target: Verifiable
) -> None:
    record_id = add(sites, target)
    (started,) = claims(sites, target)
    with sites.primary.main() as conn:
        target.succeeded(conn, record_id, started.started_at, "abc")
        assert target.pending(conn, record_id)
    state = row(sites, target, record_id)
    assert state["verification_state"] == S.PENDING
    assert state["verification_retry_count"] == 0
    assert state["verification_checksum"] == "abc"  # kept: re-verification compares with it


def test_disabled_only_from_started(sites: SitePair, target: Verifiable) -> None:
    record_id = add(sites, target)
    with sites.primary.main() as conn:
        assert not target.disabled(conn, record_id, sites.primary.clock.now())
    (started,) = claims(sites, target)
    with sites.primary.main() as conn:
        assert target.disabled(conn, record_id, started.started_at)
    assert row(sites, target, record_id)["verification_state"] == S.DISABLED


def test_a_row_requeued_while_checksummed_stays_pending(
    sites: SitePair, target: Verifiable, clock: FrozenClock
) -> None:
    record_id = add(sites, target)
    (stale,) = claims(sites, target)
    with sites.primary.main() as conn:
        target.pending(conn, record_id)
        assert not target.succeeded(conn, record_id, stale.started_at, "old")
    assert row(sites, target, record_id)["verification_state"] == S.PENDING
    clock.advance(1)
    (fresh,) = claims(sites, target)
    with sites.primary.main() as conn:
        assert target.failed(conn, record_id, stale.started_at, "late") is None
        assert target.succeeded(conn, record_id, fresh.started_at, "new")
    assert row(sites, target, record_id)["verification_checksum"] == "new"


def test_a_batch_of_results_is_stored_only_where_its_claim_still_stands(
    sites: SitePair, target: Verifiable, clock: FrozenClock
) -> None:
    first, requeued, third = (add(sites, target) for _ in range(3))
    batch = claims(sites, target)
    with sites.primary.main() as conn:
        target.pending(conn, requeued)
        stored = target.succeeded_many(conn, [(c, f"sum-{c.model_record_id}") for c in batch])
    assert stored == [first, third]
    for record_id in (first, third):
        state = row(sites, target, record_id)
        assert state["verification_state"] == S.SUCCEEDED
        assert state["verification_checksum"] == f"sum-{record_id}"
        assert state["verified_at"] == clock.now()
    assert row(sites, target, requeued)["verification_state"] == S.PENDING
    assert row(sites, target, requeued)["verification_checksum"] is None


def test_results_of_claims_made_at_different_times_are_all_stored(
    sites: SitePair, target: Verifiable, clock: FrozenClock
) -> None:
    first = add(sites, target)
    (early,) = claims(sites, target)
    clock.advance(1)
    second = add(sites, target)
    (late,) = claims(sites, target)
    with sites.primary.main() as conn:
        assert target.succeeded_many(conn, [(late, "b"), (early, "a")]) == [second, first]
    assert row(sites, target, first)["verification_checksum"] == "a"
    assert row(sites, target, second)["verification_checksum"] == "b"


def test_rows_started_over_eight_hours_ago_time_out(
    sites: SitePair, target: Verifiable, clock: FrozenClock
) -> None:
    record_id = add(sites, target)
    claims(sites, target)
    clock.advance(timedelta(hours=8))
    with sites.primary.main() as conn:
        assert target.fail_timed_out(conn) == []
    clock.advance(1)
    with sites.primary.main() as conn:
        assert target.fail_timed_out(conn) == [(record_id, 1)]
    state = row(sites, target, record_id)
    assert state["verification_state"] == S.FAILED
    assert state["verification_failure"] == "Verification timed out after 8 hours"


def test_stale_succeeded_rows_are_requeued_oldest_first_up_to_the_limit(
    sites: SitePair, target: Verifiable, clock: FrozenClock
) -> None:
    ids = [add(sites, target) for _ in range(3)]
    for record_id in ids:
        (started,) = claims(sites, target, 1)
        with sites.primary.main() as conn:
            target.succeeded(conn, record_id, started.started_at, "abc")
        clock.advance(timedelta(days=1))
    cutoff = clock.now() - timedelta(days=2)
    with sites.primary.main() as conn:
        assert target.requeue_stale(conn, cutoff, 1) == 1
        assert target.requeue_stale(conn, cutoff, 10) == 0
    states = [row(sites, target, i)["verification_state"] for i in ids]
    assert states == [S.PENDING, S.SUCCEEDED, S.SUCCEEDED]


# -- created / updated ----------------------------------------------------------------------------


def test_an_immutable_blob_with_a_checksum_keeps_it_when_created_again(sites: SitePair) -> None:
    target = vu.primary_states(sites.primary)
    record_id = vu.add_upload(sites.primary, b"x")
    (started,) = claims(sites, target)
    with sites.primary.main() as conn:
        target.succeeded(conn, record_id, started.started_at, "abc")
    replicator = UploadReplicator(model_record_id=record_id, geo=sites.primary)
    replicator.publish("created")
    state = vu.state_of(sites.primary, UploadReplicator, record_id)
    assert state is not None
    assert state["verification_state"] == S.SUCCEEDED
    assert state["verification_checksum"] == "abc"


def test_an_updated_mutable_blob_becomes_pending_and_forgets_its_checksum(
    sites: SitePair,
) -> None:
    target = vu.package_states(sites.primary)
    record_id = vu.add_package_file(sites.primary, b"v1")
    (started,) = claims(sites, target)
    with sites.primary.main() as conn:
        target.succeeded(conn, record_id, started.started_at, "abc")
    with sites.primary.session() as session:
        record = session.get(PackageFile, record_id)
        PackageFileReplicator(record, geo=sites.primary).handle_after_update()
        session.commit()
    with sites.primary.main_engine.connect() as conn:
        state = conn.execute(
            select(
                PackageFile.__table__.c.verification_state, PackageFile.verification_checksum
            ).where(PackageFile.id == record_id)
        ).one()
    assert state == (S.PENDING, None)


def test_an_updated_record_whose_state_row_is_missing_gets_one(sites: SitePair) -> None:
    from geosync.demo.replicators import SnippetReplicator

    record_id = vu.add_snippet(sites.primary)
    target = primary_verifiable(sites.primary, SnippetReplicator)
    with sites.primary.main() as conn:
        conn.execute(target.table.delete())
    SnippetReplicator(model_record_id=record_id, geo=sites.primary).handle_after_update()
    state = vu.state_of(sites.primary, SnippetReplicator, record_id)
    assert state is not None and state["verification_state"] == S.PENDING


# -- registries -----------------------------------------------------------------------------------


def test_registry_claims_only_synced_rows(sites: SitePair) -> None:
    from geosync.registry import Registry

    geo = sites.secondary
    target = registry_verifiable(geo, UploadReplicator)
    with geo.tracking() as conn:
        Registry(geo, UploadReplicator).insert_pending(conn, [1])
    vu.make_synced(geo, UploadReplicator, 2, verification=S.PENDING)
    with geo.tracking() as conn:
        assert [c.model_record_id for c in target.claim(conn, 10)] == [2]


def test_registry_pending_clears_the_mismatch_fields(sites: SitePair) -> None:
    geo = sites.secondary
    target = registry_verifiable(geo, UploadReplicator)
    vu.make_synced(geo, UploadReplicator, 7, verification=S.PENDING)
    with geo.tracking() as conn:
        (started,) = target.claim(conn, 10)
        target.failed(conn, 7, started.started_at, "Checksum does not match", mismatched="ff")
    assert vu.registry_row(geo, UploadReplicator, 7)["checksum_mismatch"] is True
    with geo.tracking() as conn:
        assert target.pending(conn, 7)
    state = vu.registry_row(geo, UploadReplicator, 7)
    assert state["checksum_mismatch"] is False
    assert state["verification_checksum_mismatched"] is None
    assert state["verification_state"] == S.PENDING
    assert state["verification_retry_count"] == 1


# -- set-wise transitions -------------------------------------------------------------------------


def test_a_set_of_results_is_stored_where_each_claim_still_stands(
    sites: SitePair, target: Verifiable, clock: FrozenClock
) -> None:
    ids = [add(sites, target) for _ in range(4)]
    claimed = claims(sites, target)
    requeued = claimed[1]
    with sites.primary.main() as conn:
        assert target.pending(conn, requeued.model_record_id)
    stale = Claim(claimed[2].model_record_id, claimed[2].started_at - timedelta(seconds=1))
    results = [(claimed[0], "a" * 64), (requeued, "b" * 64), (stale, "c" * 64), (claimed[3], "d")]
    with sites.primary.main() as conn:
        done = target.succeeded_many(conn, results)
    assert done == [ids[0], ids[3]]
    assert row(sites, target, ids[0])["verification_checksum"] == "a" * 64
    assert row(sites, target, ids[3])["verification_checksum"] == "d"
    assert row(sites, target, ids[1])["verification_state"] == S.PENDING
    assert row(sites, target, ids[2])["verification_state"] == S.STARTED


def test_a_set_of_failures_backs_off_each_row_from_its_own_count(
    sites: SitePair, target: Verifiable, clock: FrozenClock
) -> None:
    ids = [add(sites, target) for _ in range(3)]
    first = {c.model_record_id: c for c in claims(sites, target)}
    with sites.primary.main() as conn:
        assert target.failed(conn, ids[0], first[ids[0]].started_at, "once") == 1
        assert target.succeeded(conn, ids[1], first[ids[1]].started_at, "x")
        assert target.succeeded(conn, ids[2], first[ids[2]].started_at, "y")
        target.pending_where(conn, target.key.in_(ids[1:]))
    clock.advance(timedelta(hours=2))
    again = {c.model_record_id: c for c in claims(sites, target)}
    assert sorted(again) == ids
    failures = [Failure(again[i], f"broken {i}") for i in ids]
    with sites.primary.main() as conn:
        counts = target.failed_many(conn, failures, keep_checksum=True)
    assert counts == {ids[0]: 2, ids[1]: 1, ids[2]: 1}
    for record_id in ids:
        state = row(sites, target, record_id)
        assert state["verification_state"] == S.FAILED
        assert state["verification_failure"] == f"broken {record_id}"
        assert state["verified_at"] == clock.now()
        retry_at = state["verification_retry_at"]
        assert isinstance(retry_at, type(clock.now())) and retry_at > clock.now()
    assert row(sites, target, ids[1])["verification_checksum"] == "x"  # kept
    with sites.primary.main() as conn:  # a second store of the same claims finds none standing
        assert target.failed_many(conn, failures) == {}


def test_a_set_of_disabled_rows_clears_their_state(sites: SitePair, clock: FrozenClock) -> None:
    record_ids = [vu.add_upload(sites.primary, b"x") for _ in range(3)]
    registry = registry_verifiable(sites.secondary, UploadReplicator)
    for record_id in record_ids:
        vu.make_synced(sites.secondary, UploadReplicator, record_id)
    with sites.secondary.tracking() as conn:
        claimed = registry.claim(conn, 10, "host:1:worker")
        assert [c.model_record_id for c in claimed] == record_ids
        stale = Claim(claimed[2].model_record_id, claimed[2].started_at - timedelta(seconds=1))
        assert registry.disabled_many(conn, [claimed[0], claimed[1], stale]) == record_ids[:2]
    states = [vu.registry_row(sites.secondary, UploadReplicator, i) for i in record_ids]
    assert [s["verification_state"] for s in states] == [S.DISABLED, S.DISABLED, S.STARTED]


def test_a_registry_failure_set_records_each_mismatch(sites: SitePair) -> None:
    record_ids = [vu.add_upload(sites.primary, b"x") for _ in range(2)]
    registry = registry_verifiable(sites.secondary, UploadReplicator)
    for record_id in record_ids:
        vu.make_synced(sites.secondary, UploadReplicator, record_id)
    with sites.secondary.tracking() as conn:
        first, second = registry.claim(conn, 10, "host:1:worker")
        failures = [Failure(first, "Checksum differs", "f" * 64), Failure(second, "Unreadable")]
        assert registry.failed_many(conn, failures) == {record_ids[0]: 1, record_ids[1]: 1}
    mismatched, unreadable = (
        vu.registry_row(sites.secondary, UploadReplicator, i) for i in record_ids
    )
    assert mismatched["checksum_mismatch"] is True
    assert mismatched["verification_checksum_mismatched"] == "f" * 64
    assert unreadable["checksum_mismatch"] is False
    assert unreadable["verification_checksum_mismatched"] is None
    assert unreadable["verification_failure"] == "Unreadable"
