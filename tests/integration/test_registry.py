"""The registry state machine (ARCHITECTURE.md §5) on a secondary's tracking database."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import update

from geosync import InvalidTransition, NotFound, SyncState, VerificationState
from geosync.demo.replicators import PackageFileReplicator, UploadReplicator
from geosync.registry import Registry, RegistryRow, SyncClaim, SyncedRow, started_total
from geosync.testing import SitePair

ID = 7


@pytest.fixture
def registry(sites: SitePair) -> Registry:
    """The upload registry of the secondary, with one pending row for upload `ID`."""
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, [ID])
    return registry


def row(registry: Registry, model_record_id: int = ID) -> RegistryRow:
    """The current row."""
    with registry.geo.tracking() as conn:
        return registry.require(conn, model_record_id)


def start(registry: Registry, model_record_id: int = ID) -> SyncClaim:
    """Start a sync; returns its claim."""
    with registry.geo.tracking() as conn:
        return registry.start(conn, model_record_id)


def synced(registry: Registry, started_at: SyncClaim, **options: object) -> bool:
    """Finish the sync of the claim `started_at`."""
    with registry.geo.tracking() as conn:
        return registry.synced(conn, ID, started_at, **options)  # type: ignore[arg-type]


def pending(registry: Registry) -> None:
    """A newer event moves the row to pending."""
    with registry.geo.tracking() as conn:
        registry.pending(conn, ID)


def fail(
    registry: Registry, message: str = "boom", claim: SyncClaim | None = None, **options: object
) -> datetime:
    """Fail a sync of the row (started here unless `claim` is given); returns its retry time."""
    with registry.geo.tracking() as conn:
        claim = claim or registry.start(conn, ID)
        retry_at = registry.failed(conn, ID, claim, message, **options)  # type: ignore[arg-type]
    assert retry_at is not None
    return retry_at


def put_in(registry: Registry, state: SyncState) -> None:
    """Move the pending row to `state` through allowed transitions."""
    if state is SyncState.PENDING:
        return
    started_at = start(registry)
    if state is SyncState.SYNCED:
        assert synced(registry, started_at)
    elif state is SyncState.FAILED:
        fail(registry, claim=started_at)


def test_a_new_row_is_pending_with_clean_fields(registry: Registry, sites: SitePair) -> None:
    current = row(registry)
    assert current.sync_state is SyncState.PENDING
    assert current.upload_id == ID
    assert current.created_at == sites.secondary.clock.now()
    assert (current.retry_count, current.retry_at, current.last_synced_at) == (0, None, None)
    assert current.missing_on_primary is False
    assert current.verification is VerificationState.DISABLED


@pytest.mark.parametrize("state", [SyncState.PENDING, SyncState.SYNCED, SyncState.FAILED])
def test_pending_is_allowed_from_every_settled_state_and_clears_retry_fields(
    registry: Registry, sites: SitePair, state: SyncState
) -> None:
    put_in(registry, state)
    sites.secondary.clock.advance(60)  # type: ignore[attr-defined]
    pending(registry)
    current = row(registry)
    assert current.sync_state is SyncState.PENDING
    assert (current.retry_count, current.retry_at, current.last_synced_at) == (0, None, None)
    assert current.verification is VerificationState.DISABLED
    assert current.pending_since == sites.secondary.clock.now()


@pytest.mark.parametrize("state", [SyncState.PENDING, SyncState.SYNCED, SyncState.FAILED])
def test_start_is_allowed_from_pending_synced_and_failed(
    registry: Registry, sites: SitePair, state: SyncState
) -> None:
    put_in(registry, state)
    sites.secondary.clock.advance(5)  # type: ignore[attr-defined]
    started_at = start(registry)
    current = row(registry)
    assert current.sync_state is SyncState.STARTED
    assert current.last_synced_at == started_at.at == sites.secondary.clock.now()


def test_start_is_refused_while_started(registry: Registry) -> None:
    started_at = start(registry)
    with pytest.raises(InvalidTransition, match=r"cannot start upload registry 7: it is started"):
        start(registry)
    assert row(registry).last_synced_at == started_at.at


def test_synced_from_started_clears_retry_and_failure_fields(registry: Registry) -> None:
    fail(registry, "first try failed")
    started_at = start(registry)
    assert synced(
        registry,
        started_at,
        verification=VerificationState.SUCCEEDED,
        checksum="ab" * 32,
        missing_on_primary=False,
    )
    current = row(registry)
    assert current.sync_state is SyncState.SYNCED
    assert (current.retry_count, current.retry_at, current.last_sync_failure) == (0, None, None)
    assert current.verification is VerificationState.SUCCEEDED
    assert current.verification_checksum == "ab" * 32
    assert current.last_synced_at == started_at.at


def test_synced_leaves_verification_disabled_when_the_primary_has_no_checksum(
    registry: Registry,
) -> None:
    assert synced(registry, start(registry), verification=VerificationState.DISABLED)
    assert row(registry).verification is VerificationState.DISABLED


def test_synced_makes_verification_pending_when_the_primary_checksum_succeeded(
    registry: Registry,
) -> None:
    assert synced(registry, start(registry), verification=VerificationState.PENDING)
    assert row(registry).verification is VerificationState.PENDING


def test_synced_can_record_a_resource_missing_on_the_primary(registry: Registry) -> None:
    assert synced(registry, start(registry), missing_on_primary=True)
    assert row(registry).missing_on_primary is True


@pytest.mark.parametrize("state", [SyncState.PENDING, SyncState.SYNCED, SyncState.FAILED])
def test_synced_changes_nothing_unless_started(registry: Registry, state: SyncState) -> None:
    put_in(registry, state)
    before = row(registry)
    claim = SyncClaim(before.last_synced_at or datetime.now().astimezone(), before.claim_generation)
    assert not synced(registry, claim)
    assert row(registry) == before


def test_synced_loses_to_a_newer_event(registry: Registry, sites: SitePair) -> None:
    started_at = start(registry)
    sites.secondary.clock.advance(1)  # type: ignore[attr-defined]
    pending(registry)
    assert not synced(registry, started_at)
    current = row(registry)
    assert current.sync_state is SyncState.PENDING
    assert current.pending_since == sites.secondary.clock.now()
    assert (current.retry_count, current.last_synced_at, current.resync_requested) == (0, None, 0)


def test_a_newer_change_mid_sync_keeps_the_row_claimed_until_the_sync_ends(
    registry: Registry, sites: SitePair
) -> None:
    """The capacity slot stays taken and nobody claims the item again while its overtaken
    sync still transfers: one transfer of an item at a time."""
    first = start(registry)
    sites.secondary.clock.advance(1)  # type: ignore[attr-defined]
    changed_at = sites.secondary.clock.now()
    pending(registry)
    current = row(registry)
    assert current.sync_state is SyncState.STARTED and current.resync_requested
    assert current.pending_since == changed_at
    with sites.secondary.tracking() as conn:
        assert started_total(conn, [registry]) == 1
        assert registry.claim(conn, 10) == []
    sites.secondary.clock.advance(1)  # type: ignore[attr-defined]
    assert not synced(registry, first)
    current = row(registry)
    assert current.sync_state is SyncState.PENDING and not current.resync_requested
    assert current.pending_since == changed_at
    with sites.secondary.tracking() as conn:
        assert started_total(conn, [registry]) == 0
        ((claimed_id, second),) = registry.claim(conn, 10)
    assert claimed_id == ID and second.generation == first.generation + 1
    assert not row(registry).resync_requested
    assert synced(registry, second)
    assert row(registry).sync_state is SyncState.SYNCED


@pytest.mark.parametrize("end", ["failed", "interrupted", "holder died", "timed out"])
def test_every_end_of_an_overtaken_sync_makes_its_row_pending(
    registry: Registry, sites: SitePair, end: str
) -> None:
    fail(registry, "an earlier try")  # retry count 1: an interruption alone would keep it
    sites.secondary.clock.advance(timedelta(days=1))  # type: ignore[attr-defined]
    with sites.secondary.tracking() as conn:
        ((_, claim),) = registry.claim(conn, 1, "w1")
    pending(registry)
    changed_at = sites.secondary.clock.now()
    with sites.secondary.tracking() as conn:
        if end == "failed":
            assert registry.failed(conn, ID, claim, "stale") is None
        elif end == "interrupted":
            assert registry.interrupted(conn, ID, claim, "stopped")
        elif end == "holder died":
            assert [i.model_record_id for i in registry.interrupted_by(conn, "w1", "gone")] == [ID]
        else:
            sites.secondary.clock.advance(timedelta(hours=9))  # type: ignore[attr-defined]
            assert registry.fail_stuck(conn) == 1
    current = row(registry)
    assert current.sync_state is SyncState.PENDING and not current.resync_requested
    assert (current.retry_count, current.retry_at) == (0, None)
    assert current.pending_since == changed_at


def test_only_its_own_claim_releases_an_overtaken_row(registry: Registry) -> None:
    claim = start(registry)
    pending(registry)
    stale = SyncClaim(claim.at, claim.generation - 1)
    with registry.geo.tracking() as conn:
        assert registry.release_overtaken(conn, {ID: stale}) == set()
        assert registry.failed(conn, ID, stale, "stale") is None
    assert row(registry).sync_state is SyncState.STARTED
    with registry.geo.tracking() as conn:
        assert registry.release_overtaken(conn, {ID: claim}) == {ID}
    assert row(registry).sync_state is SyncState.PENDING


def test_synced_of_a_timed_out_sync_loses_to_its_retry(registry: Registry, sites: SitePair) -> None:
    first = start(registry)
    sites.secondary.clock.advance(timedelta(hours=9))  # type: ignore[attr-defined]
    with sites.secondary.tracking() as conn:
        assert registry.fail_stuck(conn) == 1
    second = start(registry)
    assert not synced(registry, first)
    assert synced(registry, second)


def test_synced_rows_settles_a_group_as_each_row_alone_would(
    registry: Registry, sites: SitePair
) -> None:
    """Many rows in one call (one statement on PostgreSQL): each gets its own outcome."""
    clock = sites.secondary.clock
    ids = [21, 22, 23, 24, 25]
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, ids)
        started = dict(registry.claim(conn, 10))
    superseded_at = started[24]
    clock.advance(1)  # type: ignore[attr-defined]
    with sites.secondary.tracking() as conn:
        registry.pending(conn, 24)  # a newer event while its sync ran
        registry.delete(conn, [25])  # deleted meanwhile
        done = registry.synced_rows(
            conn,
            [
                SyncedRow(21, started[21], local_path="a/21"),
                SyncedRow(22, started[22], VerificationState.SUCCEEDED, "c" * 64, False, "a/22"),
                SyncedRow(23, started[23], missing_on_primary=True),
                SyncedRow(24, superseded_at, local_path="a/24"),
                SyncedRow(25, started[25], local_path="a/25"),
            ],
        )
    assert sorted(done) == [21, 22, 23]
    assert all(done[i].pending_since is not None for i in done)
    rows = {i: row(registry, i) for i in [21, 22, 23, 24]}
    assert rows[21].sync_state is SyncState.SYNCED and rows[21].local_path == "a/21"
    assert rows[21].verification is VerificationState.DISABLED
    assert rows[22].verification is VerificationState.SUCCEEDED
    assert rows[22].verification_checksum == "c" * 64
    assert rows[22].verified_at == clock.now()
    assert rows[23].missing_on_primary and rows[23].local_path is None
    assert rows[24].sync_state is SyncState.PENDING and rows[24].local_path is None
    with sites.secondary.tracking() as conn:
        assert registry.get(conn, 25) is None


def test_failed_from_started_counts_retries(registry: Registry, sites: SitePair) -> None:
    fail(registry)
    retry_at = fail(registry, "Download failed", error="connection reset")
    current = row(registry)
    assert current.sync_state is SyncState.FAILED
    assert current.retry_count == 2
    assert current.retry_at == retry_at > sites.secondary.clock.now()
    assert current.last_sync_failure == "Download failed: connection reset"


@pytest.mark.parametrize("state", [SyncState.PENDING, SyncState.SYNCED, SyncState.FAILED])
def test_failed_of_a_row_no_longer_started_changes_nothing(
    registry: Registry, state: SyncState
) -> None:
    claim = start(registry)
    with registry.geo.tracking() as conn:
        registry.failed(conn, ID, claim, "first")
        registry.pending(conn, ID)
    put_in(registry, state)
    before = row(registry)
    with registry.geo.tracking() as conn:
        assert registry.failed(conn, ID, claim, "stale") is None
    assert row(registry) == before


def test_failed_of_a_deleted_row_changes_nothing(registry: Registry) -> None:
    claim = start(registry)
    with registry.geo.tracking() as conn:
        assert registry.delete(conn, [ID]) == {ID: None}
        assert registry.failed(conn, ID, claim, "gone meanwhile") is None
        assert registry.get(conn, ID) is None


def test_repeated_failures_back_off_further(registry: Registry, sites: SitePair) -> None:
    now = sites.secondary.clock.now()
    delays = [(fail(registry) - now).total_seconds() for _ in range(6)]
    assert row(registry).retry_count == 6
    for n, delay in enumerate(delays, start=1):
        assert n**4 + 15 <= delay <= n**4 + 15 + 29 * (n + 1)


def test_a_long_failure_message_is_cut_to_255_characters(registry: Registry) -> None:
    fail(registry, "x" * 200, error="y" * 200)
    message = row(registry).last_sync_failure
    assert len(message) == 255
    assert message.startswith("x" * 200 + ": yy")
    assert message.endswith("…")


@pytest.mark.parametrize(
    ("missing", "cap_seconds"), [(False, 3600), (True, 4 * 3600)], ids=["present", "missing"]
)
def test_many_failures_are_capped(
    registry: Registry, sites: SitePair, missing: bool, cap_seconds: int
) -> None:
    for _ in range(11):
        fail(registry, "gone", missing_on_primary=missing)
    retry_at = fail(registry, "gone", missing_on_primary=missing)
    delay = (retry_at - sites.secondary.clock.now()).total_seconds()
    assert cap_seconds + 16 <= delay <= cap_seconds + 16 + 58
    current = row(registry)
    assert current.missing_on_primary is missing
    assert current.retry_count == 12


@pytest.mark.parametrize("state", [SyncState.SYNCED, SyncState.FAILED])
def test_resync_moves_synced_and_failed_rows_to_pending(
    registry: Registry, state: SyncState
) -> None:
    put_in(registry, state)
    with registry.geo.tracking() as conn:
        registry.resync(conn, ID)
    current = row(registry)
    assert current.sync_state is SyncState.PENDING
    assert (current.retry_count, current.retry_at, current.last_synced_at) == (0, None, None)


@pytest.mark.parametrize("state", [SyncState.PENDING, SyncState.STARTED])
def test_resync_is_refused_for_pending_and_started_rows(
    registry: Registry, state: SyncState
) -> None:
    put_in(registry, state)
    with pytest.raises(
        InvalidTransition, match=f"cannot resync upload registry 7: it is {state.name.lower()}"
    ):
        with registry.geo.tracking() as conn:
            registry.resync(conn, ID)
    assert row(registry).sync_state is state


def test_a_transition_of_a_missing_row_is_not_found(registry: Registry) -> None:
    with pytest.raises(NotFound, match="upload registry 99 not found"):
        with registry.geo.tracking() as conn:
            registry.start(conn, 99)


def test_the_stuck_sweep_fails_rows_started_longer_than_the_timeout(
    registry: Registry, sites: SitePair
) -> None:
    clock = sites.secondary.clock
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, [8, 9])
    start(registry, ID)
    clock.advance(timedelta(hours=1))  # type: ignore[attr-defined]
    start(registry, 8)
    clock.advance(timedelta(hours=7))  # type: ignore[attr-defined]
    with sites.secondary.tracking() as conn:
        assert registry.fail_stuck(conn) == 0  # exactly 8 hours is not yet too long
    clock.advance(1)  # type: ignore[attr-defined]
    with sites.secondary.tracking() as conn:
        assert registry.fail_stuck(conn) == 1
    stuck = row(registry, ID)
    assert stuck.sync_state is SyncState.FAILED
    assert stuck.retry_count == 1
    assert stuck.last_sync_failure == "Sync timed out after 8 hours"
    assert 16 <= (stuck.retry_at - clock.now()).total_seconds() <= 74
    assert row(registry, 8).sync_state is SyncState.STARTED
    assert row(registry, 9).sync_state is SyncState.PENDING


def test_claims_take_pending_rows_first_then_failed_rows_that_are_due(
    registry: Registry, sites: SitePair
) -> None:
    clock = sites.secondary.clock
    fail(registry)
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, [8, 9])
        first = registry.claim(conn, 10)
    assert sorted(model_id for model_id, _ in first) == [8, 9]
    assert {claim.at for _, claim in first} == {clock.now()}
    clock.advance(timedelta(minutes=5))  # type: ignore[attr-defined]
    with sites.secondary.tracking() as conn:
        assert [(key, claim.at) for key, claim in registry.claim(conn, 10)] == [(ID, clock.now())]
        assert registry.claim(conn, 10) == []
        assert started_total(conn, [registry]) == 3  # what the scheduler counts


def test_ensure_pending_creates_or_resets_a_row(registry: Registry, sites: SitePair) -> None:
    put_in(registry, SyncState.SYNCED)
    with sites.secondary.tracking() as conn:
        registry.ensure_pending(conn, ID)
        registry.ensure_pending(conn, 8)
        counts = registry.count_by_state(conn)
    assert counts[SyncState.PENDING] == 2
    assert counts[SyncState.SYNCED] == 0


def test_registries_of_different_types_are_separate(registry: Registry, sites: SitePair) -> None:
    packages = Registry(sites.secondary, PackageFileReplicator)
    with sites.secondary.tracking() as conn:
        assert packages.get(conn, ID) is None
        packages.insert_pending(conn, [ID])
    put_in(registry, SyncState.SYNCED)
    with sites.secondary.tracking() as conn:
        assert packages.require(conn, ID).sync_state is SyncState.PENDING


def test_a_claim_takes_pending_rows_in_arrival_order_then_failed_rows_by_due_time(
    registry: Registry, sites: SitePair
) -> None:
    now = sites.secondary.clock.now()
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, [20, 5, 11, 30, 31, 32])
        for model_id, minutes in ((30, 3), (31, 1), (32, -1)):  # 32 is not due yet
            conn.execute(
                registry.table.update()
                .where(registry.key == model_id)
                .values(state=SyncState.FAILED, retry_at=now - timedelta(minutes=minutes))
            )
    with sites.secondary.tracking() as conn:
        first = [model_id for model_id, _ in registry.claim(conn, 3)]
        second = [model_id for model_id, _ in registry.claim(conn, 3)]
        third = registry.claim(conn, 3)
    assert sorted(first) == [5, 7, 20]  # ID (the fixture's row) came first, then 20, 5, 11
    assert sorted(second) == [11, 30, 31]
    assert third == []


def test_counts_per_state_pair_and_the_oldest_unsynced_row(
    registry: Registry, sites: SitePair
) -> None:
    """The status's one GROUP BY, and the oldest unsynced time over rows with and without a
    `pending_since` (older rows may lack one: their creation counts)."""
    clock = sites.secondary.clock
    c = registry.table.c
    put_in(registry, SyncState.SYNCED)
    with sites.secondary.tracking() as conn:
        assert registry.oldest_unsynced_since(conn) is None
        clock.advance(10)  # type: ignore[attr-defined]
        registry.insert_pending(conn, [8, 9])
        conn.execute(update(registry.table).where(c.upload_id == 9).values(pending_since=None))
        assert registry.oldest_unsynced_since(conn) == clock.now()
        clock.advance(10)  # type: ignore[attr-defined]
        registry.pending(conn, 8)  # the row without `pending_since` is now the oldest
        assert registry.oldest_unsynced_since(conn) == clock.now() - timedelta(seconds=10)
        registry.delete(conn, [9])
        assert registry.oldest_unsynced_since(conn) == clock.now()
        registry.synced(conn, 8, registry.start(conn, 8), verification=VerificationState.PENDING)
        assert registry.oldest_unsynced_since(conn) is None
        registry.insert_pending(conn, [10])
        pairs = registry.count_by_states(conn)
        by_state = registry.count_by_state(conn)
    assert pairs == {
        (SyncState.SYNCED, VerificationState.DISABLED): 1,
        (SyncState.SYNCED, VerificationState.PENDING): 1,
        (SyncState.PENDING, VerificationState.DISABLED): 1,
    }
    assert by_state == {
        SyncState.PENDING: 1,
        SyncState.STARTED: 0,
        SyncState.SYNCED: 2,
        SyncState.FAILED: 0,
    }
