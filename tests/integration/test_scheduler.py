"""Claims: pending before retry-due failed, round-robin across replicators, capacity held."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from geosync.clock import FrozenClock
from geosync.demo.replicators import PackageFileReplicator, UploadReplicator
from geosync.registry import Registry
from geosync.secondary.scheduler import claim_round_robin
from geosync.states import SyncState
from geosync.testing import SitePair


def registries(sites: SitePair) -> tuple[Registry, Registry]:
    return Registry(sites.secondary, UploadReplicator), Registry(
        sites.secondary, PackageFileReplicator
    )


def test_pending_rows_come_before_failed_ones_and_failed_wait_for_retry_at(
    sites: SitePair, clock: FrozenClock
) -> None:
    uploads, _ = registries(sites)
    with sites.secondary.tracking() as conn:
        uploads.insert_pending(conn, [1, 2, 3])
        for model_id in (1, 2):
            started = uploads.start(conn, model_id)
            uploads.failed(conn, model_id, started, "boom")
        assert started
    with sites.secondary.tracking() as conn:
        claims = uploads.claim(conn, 10)
    assert [model_id for model_id, _ in claims] == [3], "failed rows are not due yet"
    clock.advance(timedelta(hours=2))
    with sites.secondary.tracking() as conn:
        assert uploads.synced(conn, 3, claims[0][1])
        uploads.pending(conn, 3)  # a newer change after that sync
        first = [model_id for model_id, _ in uploads.claim(conn, 1)]
        rest = sorted(model_id for model_id, _ in uploads.claim(conn, 10))
    assert (first, rest) == ([3], [1, 2]), "pending first, then failed rows that are due"


def test_a_sync_overtaken_by_a_newer_change_keeps_its_slot_until_it_ends(
    sites: SitePair,
) -> None:
    """With a capacity of 2 and two transfers in flight, an `updated` event for one of them
    frees no slot: neither its item nor another is claimed until that transfer ends."""
    uploads, packages = registries(sites)
    with sites.secondary.tracking() as conn:
        uploads.insert_pending(conn, [1, 2, 3])
        claims = {key: claim for _, key, claim in claim_round_robin(conn, [uploads], 2, "w1")}
    assert sorted(claims) == [1, 2]
    with sites.secondary.tracking() as conn:
        uploads.pending_many(conn, {1: sites.secondary.clock.now()})  # the log cursor's update
    with sites.secondary.tracking() as conn:
        assert claim_round_robin(conn, [uploads], 2, "w2", counted=[uploads, packages]) == []
        assert not uploads.synced(conn, 1, claims[1])  # the overtaken transfer ends
    with sites.secondary.tracking() as conn:
        again = claim_round_robin(conn, [uploads], 2, "w2")
    assert [key for _, key, _ in again] == [1]  # the changed item first, in id order
    with sites.secondary.tracking() as conn:
        assert uploads.synced(conn, 2, claims[2])
        assert [key for _, key, _ in claim_round_robin(conn, [uploads], 2, "w2")] == [3]


def test_capacity_is_shared_round_robin_and_counts_started_rows(sites: SitePair) -> None:
    uploads, packages = registries(sites)
    with sites.secondary.tracking() as conn:
        uploads.insert_pending(conn, list(range(1, 11)))
        packages.insert_pending(conn, list(range(1, 11)))
    with sites.secondary.tracking() as conn:
        first = claim_round_robin(conn, [uploads, packages], 6, "w1")
    by_type = {r.replicator.replicable_name: 0 for r in (uploads, packages)}
    for registry, _, _ in first:
        by_type[registry.replicator.replicable_name] += 1
    assert by_type == {"upload": 3, "package_file": 3}
    with sites.secondary.tracking() as conn:
        assert claim_round_robin(conn, [uploads, packages], 6, "w2") == []
        assert claim_round_robin(conn, [uploads, packages], 8, "w2").__len__() == 2


def test_one_type_with_no_work_leaves_its_share_to_the_others(sites: SitePair) -> None:
    uploads, packages = registries(sites)
    with sites.secondary.tracking() as conn:
        uploads.insert_pending(conn, list(range(1, 11)))
    with sites.secondary.tracking() as conn:
        claimed = claim_round_robin(conn, [packages, uploads], 5, "w1")
    assert len(claimed) == 5
    assert {r.replicator.replicable_name for r, _, _ in claimed} == {"upload"}


def test_concurrent_claims_never_exceed_capacity_nor_overlap(sites: SitePair) -> None:
    uploads, packages = registries(sites)
    with sites.secondary.tracking() as conn:
        uploads.insert_pending(conn, list(range(1, 201)))
    results: list[list[int]] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        for _ in range(5):
            with sites.secondary.tracking() as conn:
                got = claim_round_robin(conn, [uploads, packages], 30, name)
            with lock:
                results.append([model_id for _, model_id, _ in got])

    threads = [threading.Thread(target=claimer, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    claimed = [i for batch in results for i in batch]
    assert len(claimed) == len(set(claimed)) == 30
    with sites.secondary.tracking_engine.connect() as conn:
        assert uploads.count_by_state(conn)[SyncState.STARTED] == 30


@pytest.mark.parametrize("limit", [0, -1])
def test_claiming_nothing_changes_nothing(sites: SitePair, limit: int) -> None:
    uploads, _ = registries(sites)
    with sites.secondary.tracking() as conn:
        uploads.insert_pending(conn, [1])
        assert uploads.claim(conn, limit) == []
        assert uploads.require(conn, 1).sync_state == SyncState.PENDING


def test_new_work_is_claimed_at_once_even_right_after_a_round_found_none(
    sites: SitePair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A queue found empty is skipped for a pause, but work another loop announces (new events,
    # recovered rows) must not wait for that pause to end.
    from geosync.secondary import scheduler as scheduler_module
    from geosync.worker import Worker

    monkeypatch.setattr(scheduler_module, "DRAINED_RECHECK", 3600.0)
    uploads, _ = registries(sites)
    worker = Worker(sites.secondary, [scheduler_module.SchedulerLoop])
    loop = worker.loops[0]
    assert isinstance(loop, scheduler_module.SchedulerLoop)
    try:
        loop.run_once()  # nothing to do: every queue is now marked drained
        with sites.secondary.tracking() as conn:
            uploads.insert_pending(conn, [1, 2])
        loop.run_once()
        assert pending_ids(sites, uploads) == [1, 2], "a drained queue is skipped for a while"
        worker.wake(loop.name)  # a finished sync's wake-up is not news of work
        loop.run_once()
        assert pending_ids(sites, uploads) == [1, 2]
        worker.notify(loop.name)
        loop.run_once()
        assert pending_ids(sites, uploads) == [], "announced work is claimed in the next round"
    finally:
        loop.close()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_few_free_slots_wait_briefly_for_more_then_are_claimed_for(
    sites: SitePair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Claims come in groups (a third of the slots), but a slot freed while long downloads run
    # on must not stay idle until they end.
    from geosync.secondary import scheduler as scheduler_module
    from geosync.worker import Worker

    monkeypatch.setattr(scheduler_module, "CLAIM_GATHER", 0.3)
    worker = Worker(sites.secondary, [scheduler_module.SchedulerLoop])
    loop = worker.loops[0]
    assert isinstance(loop, scheduler_module.SchedulerLoop)
    try:
        capacity = 9
        files = "files_max_capacity"  # the blob strategy's capacity group
        loop.inflight[files] = capacity - 3  # a third free: worth a claim at once
        assert loop._claim_delay(files, capacity) == 0.0
        loop.inflight[files] = capacity  # none free
        assert loop._claim_delay(files, capacity) > 0
        loop.inflight[files] = capacity - 1  # one free: wait for others to free up...
        first = loop._claim_delay(files, capacity)
        assert 0.0 < first <= 0.3
        time.sleep(0.1)
        assert 0.0 < loop._claim_delay(files, capacity) < first  # the wait is not restarted
        time.sleep(0.25)
        assert loop._claim_delay(files, capacity) == 0.0  # ... but not for long
        assert loop._claim_delay(files, capacity) > 0.0  # a new wait after a claim round
    finally:
        loop.close()


def pending_ids(sites: SitePair, registry: Registry) -> list[int]:
    with sites.secondary.tracking_engine.connect() as conn:
        rows = [registry.get(conn, model_id) for model_id in (1, 2)]
    return [i for i, r in zip((1, 2), rows, strict=True) if r and r.sync_state == SyncState.PENDING]
