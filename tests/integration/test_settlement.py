"""Settling finished syncs in group commits: every waiting sync gets its own true answer."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import Connection

from geosync.attempts import recent_attempts
from geosync.demo.replicators import UploadReplicator
from geosync.registry import Registry, RegistryRow, SyncClaim
from geosync.secondary.settlement import (
    Failure,
    Finished,
    Settled,
    Settler,
    Success,
    settle_group,
)
from geosync.states import SyncState
from geosync.testing import SitePair

IDS = list(range(1, 21))


@pytest.fixture
def registry(sites: SitePair) -> Registry:
    """The upload registry of the secondary, with pending rows for `IDS`."""
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, IDS)
    return registry


def start(registry: Registry, model_record_id: int) -> SyncClaim:
    """Mark one row started, as a claim does."""
    with registry.geo.tracking() as conn:
        return registry.start(conn, model_record_id)


def state(registry: Registry, model_record_id: int) -> RegistryRow | None:
    """The row now, or None."""
    with registry.geo.tracking() as conn:
        return registry.get(conn, model_record_id)


def success(registry: Registry, model_record_id: int) -> Finished:
    """A finished download of one row."""
    started = start(registry, model_record_id)
    return Finished(registry, model_record_id, started, Success(f"f/{model_record_id}", bytes=3))


class RecordingSettler(Settler):
    """A settler that records the size of every transaction it writes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.groups: list[int] = []

    def _transaction(self, items: list[Finished]) -> list[Settled]:
        self.groups.append(len(items))
        return super()._transaction(items)


class BlockingRegistry(Registry):
    """Holds the first sync it settles until released: the others queue meanwhile."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.entered = threading.Event()
        self.release = threading.Event()

    def synced_rows(self, conn: Connection, *args: Any, **kwargs: Any) -> dict[int, RegistryRow]:
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(10)
        return super().synced_rows(conn, *args, **kwargs)


class BrokenRegistry(Registry):
    """An injected fault: writing this registry's rows fails."""

    def synced_rows(self, conn: Connection, *args: Any, **kwargs: Any) -> dict[int, RegistryRow]:
        raise RuntimeError("injected fault")


def test_syncs_finishing_while_a_group_is_written_share_the_next_one(sites: SitePair) -> None:
    blocking = BlockingRegistry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        blocking.insert_pending(conn, IDS[:6])
    items = [success(blocking, i) for i in IDS[:6]]
    settler = RecordingSettler(sites.secondary)
    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(settler.settle, items[0])
        assert blocking.entered.wait(10)
        rest = [pool.submit(settler.settle, item) for item in items[1:]]
        while len(settler._queue) < 5:
            threading.Event().wait(0.01)
        blocking.release.set()
        answers = [first.result(10)] + [f.result(10) for f in rest]
    assert all(answer.done for answer in answers)
    assert settler.groups == [1, 5]
    assert all(state(blocking, i).sync_state is SyncState.SYNCED for i in IDS[:6])  # type: ignore[union-attr]


def test_many_threads_each_get_their_own_answer(registry: Registry, sites: SitePair) -> None:
    items = [success(registry, i) for i in IDS]
    with registry.geo.tracking() as conn:  # superseded: a newer event moved it on
        registry.pending(conn, IDS[0])
        conn.execute(registry.table.delete().where(registry.key == IDS[1]))
    settler = Settler(sites.secondary)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(settler.settle, items))
    assert answers[0] == Settled(False, gone=False)
    assert answers[1] == Settled(False, gone=True)
    assert all(a.done for a in answers[2:])
    assert state(registry, IDS[0]).sync_state is SyncState.PENDING  # type: ignore[union-attr]
    with registry.geo.tracking() as conn:
        attempts = [recent_attempts(conn, "upload", i) for i in IDS]
    assert [a[0].outcome for a in attempts[2:]] == ["synced"] * (len(IDS) - 2)
    assert attempts[0][0].outcome == "superseded"
    assert attempts[1] == []  # deleted meanwhile: no history for a row that is gone
    assert attempts[2][0].bytes == 3


def test_a_deleted_row_is_reported_gone(registry: Registry, sites: SitePair) -> None:
    item = success(registry, IDS[0])
    with registry.geo.tracking() as conn:
        conn.execute(registry.table.delete().where(registry.key == IDS[0]))
    assert Settler(sites.secondary).settle(item) == Settled(False, gone=True)


def test_a_failure_fails_the_row_with_its_message(registry: Registry, sites: SitePair) -> None:
    started = start(registry, IDS[0])
    failure = Failure("File is missing on the primary", None, "primary_missing", True)
    answer = Settler(sites.secondary).settle(Finished(registry, IDS[0], started, failure))
    row = state(registry, IDS[0])
    assert answer == Settled(False)
    assert row is not None and row.sync_state is SyncState.FAILED
    assert row.missing_on_primary is True and row.retry_count == 1
    assert row.last_sync_failure == "File is missing on the primary"
    with registry.geo.tracking() as conn:
        (attempt,) = recent_attempts(conn, "upload", IDS[0])
    assert (attempt.outcome, attempt.error_class) == ("failed", "primary_missing")


def test_one_bad_sync_does_not_sink_its_group(registry: Registry, sites: SitePair) -> None:
    broken = BrokenRegistry(sites.secondary, UploadReplicator)
    good = [success(registry, i) for i in IDS[:4]]
    bad = Finished(broken, IDS[4], start(registry, IDS[4]), Success("f/bad"))
    settler = RecordingSettler(sites.secondary)
    # Queue everything, then let one thread write it: the group fails, then each goes alone.
    futures = [(item, settler._enqueue(item)) for item in [*good[:2], bad, *good[2:]]]
    settler._drain()
    results = {item.model_record_id: future for item, future in futures}
    assert all(results[i].result(1).done for i in IDS[:4])
    with pytest.raises(RuntimeError, match="injected fault"):
        results[IDS[4]].result(1)
    assert settler.groups == [5, 1, 1, 1, 1, 1]
    assert state(registry, IDS[4]).sync_state is SyncState.STARTED  # type: ignore[union-attr]


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_failure_loses_to_a_pending_committed_while_it_settles(
    registry: Registry, sites: SitePair
) -> None:
    """Two real connections: A claimed the row and settles its failure; B (the log cursor)
    commits a newer change in between. The stale failure changes nothing: the row stays
    pending, without a retry count or a backoff, and no attempt is recorded."""
    geo = sites.secondary
    with geo.tracking() as conn:
        claims = dict(registry.claim(conn, 2))
    settled, direct = sorted(claims)
    failure = Failure("Download failed", None, "transient", False)
    with geo.tracking_engine.connect() as a, a.begin():
        seen = registry.get(a, settled)  # A's transaction saw the row started
        assert seen is not None and seen.sync_state is SyncState.STARTED
        with geo.tracking() as b:
            registry.pending(b, settled)
            registry.pending(b, direct)
        item = Finished(registry, settled, claims[settled], failure)
        assert settle_group(a, [item], claims[settled].at) == [Settled(False)]
        assert registry.failed(a, direct, claims[direct], "Download failed") is None
    for model_id in (settled, direct):
        row = state(registry, model_id)
        assert row is not None and row.sync_state is SyncState.PENDING
        assert (row.retry_count, row.retry_at, row.last_sync_failure) == (0, None, None)
        with geo.tracking() as conn:
            assert recent_attempts(conn, "upload", model_id) == []


def test_an_older_claim_of_the_same_instant_settles_nothing(
    registry: Registry, sites: SitePair
) -> None:
    """Two claims of one row at the very same time (the clock does not move): only the newer
    claim's outcome is written, whether the older sync succeeded or failed."""
    geo = sites.secondary
    older: dict[int, SyncClaim] = {}
    newer: dict[int, SyncClaim] = {}
    with geo.tracking() as conn:
        for model_id in IDS[:2]:
            older[model_id] = registry.start(conn, model_id)
            # Its worker stopped it (pending again), as if it were gone: the item is claimed anew.
            assert registry.interrupted(conn, model_id, older[model_id], "stopped")
        newer.update(registry.claim(conn, 2))
    assert sorted(newer) == IDS[:2]
    assert all(older[i].at == newer[i].at for i in IDS[:2])
    claimed = {i: state(registry, i) for i in IDS[:2]}
    failure = Failure("Download failed", None, "transient", False)
    stale = [
        Finished(registry, IDS[0], older[IDS[0]], Success("f/old")),
        Finished(registry, IDS[1], older[IDS[1]], failure),
    ]
    assert Settler(geo).settle_all(stale) == [Settled(False), Settled(False)]
    for model_id in IDS[:2]:
        row = state(registry, model_id)
        assert row is not None and row.sync_state is SyncState.STARTED
        assert row == claimed[model_id] and (row.retry_count, row.local_path) == (0, None)
    current = [
        Finished(registry, IDS[0], newer[IDS[0]], Success("f/new")),
        Finished(registry, IDS[1], newer[IDS[1]], failure),
    ]
    assert [a.done for a in Settler(geo).settle_all(current)] == [True, False]
    synced, failed = (state(registry, i) for i in IDS[:2])
    assert synced is not None and synced.sync_state is SyncState.SYNCED
    assert synced.local_path == "f/new"
    assert failed is not None and failed.sync_state is SyncState.FAILED
    assert failed.retry_count == 1


def test_an_outcome_written_once_whose_commit_answer_was_lost_is_done_not_superseded(
    registry: Registry,
) -> None:
    item = success(registry, 3)
    with registry.geo.tracking() as conn:
        (first,) = settle_group(conn, [item], registry.geo.clock.now())
    # The tracking database went away as it acknowledged the commit: the settler kept the
    # outcome and writes it again once the database is back.
    with registry.geo.tracking() as conn:
        (again,) = settle_group(conn, [item], registry.geo.clock.now())
        history = recent_attempts(conn, "upload", 3)
    assert first.done and again.done and not again.gone
    assert [a.outcome for a in history] == ["synced"]
    row = state(registry, 3)
    assert row is not None and row.sync_state == SyncState.SYNCED


def test_an_outcome_whose_row_was_claimed_again_since_is_superseded(registry: Registry) -> None:
    item = success(registry, 4)
    with registry.geo.tracking() as conn:
        settle_group(conn, [item], registry.geo.clock.now())
        registry.resync(conn, 4)
    start(registry, 4)  # a newer claim of the same row
    with registry.geo.tracking() as conn:
        (late,) = settle_group(conn, [item], registry.geo.clock.now())
    assert not late.done
