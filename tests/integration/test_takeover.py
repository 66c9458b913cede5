"""Takeover: the syncs, verifications and singleton leases of a worker whose process is gone
go back to the queue at once, keeping their retry counts, each with an `interrupted` attempt;
a live worker's — even a stopped one's — and one of another machine (until its lease lapses)
are left alone. Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import replace
from datetime import datetime, timedelta

from sqlalchemy import select

from geosync.attempts import INTERRUPTED, recent_attempts
from geosync.clock import FrozenClock
from geosync.db.tables import geo_leases
from geosync.demo.models import Upload
from geosync.demo.replicators import UploadReplicator
from geosync.leases import acquire, holder_of, liveness_name
from geosync.liveness import (
    LEASE_LAPSED,
    PROCESS_GONE,
    ProcessIdentity,
    process_identity,
    take_role,
)
from geosync.registry import Registry, SyncClaim
from geosync.scrub import claim_due
from geosync.secondary.batch_sync import BatchSync
from geosync.secondary.blob_client import BlobClient
from geosync.secondary.log_cursor import LEASE as CURSOR_LEASE
from geosync.secondary.sync import SyncService
from geosync.secondary.takeover import interruption_message
from geosync.states import SyncState, VerificationState
from geosync.testing import SitePair
from geosync.testing.workers import secondary_worker, wait_for
from geosync.verification import registry_verifiable
from tests.takeoverutil import LEASE, hold, sweep, worker_process


def claim(sites: SitePair, holder: str, ids: list[int]) -> dict[int, SyncClaim]:
    """Claim exactly `ids` (every due row) for `holder`."""
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        claims = dict(registry.claim(conn, 100, holder))
    assert sorted(claims) == ids
    return claims


def failed_before(sites: SitePair, clock: FrozenClock, ids: list[int], times: int) -> None:
    """Rows for `ids` that failed `times` times, the last time just now (not due yet)."""
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, ids)
    for round in range(times):
        if round:
            clock.advance(timedelta(hours=2))  # the retry is due
        for model_id, started in claim(sites, "an-earlier-worker", ids).items():
            with sites.secondary.tracking() as conn:
                assert registry.failed(conn, model_id, started, "Connection reset") is not None


def rows(sites: SitePair) -> dict[int, tuple[SyncState, int, datetime | None]]:
    """Every upload registry row: state, retry count, retry time."""
    registry = Registry(sites.secondary, UploadReplicator)
    c = registry.table.c
    with sites.secondary.tracking_engine.connect() as conn:
        found = conn.execute(select(registry.key, c.state, c.retry_count, c.retry_at)).all()
    return {int(k): (SyncState(s), int(n), at) for k, s, n, at in found}


def test_a_dead_workers_syncs_go_back_at_once_as_they_were_and_a_live_ones_stay(
    sites: SitePair, clock: FrozenClock
) -> None:
    failed_before(sites, clock, [4], times=2)
    failed_before(sites, clock, [3], times=1)
    clock.advance(timedelta(hours=2))  # both due
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, [1, 2])
    with worker_process() as (dead, dead_identity), worker_process() as (live, live_identity):
        hold(sites.secondary, "host:101:dead", dead_identity)
        hold(sites.secondary, "host:102:live", live_identity)
        started = claim(sites, "host:101:dead", [1, 2, 3, 4])
        with sites.secondary.tracking() as conn:
            registry.insert_pending(conn, [5, 6])
        claim(sites, "host:102:live", [5, 6])
        dead.kill()  # SIGKILL: nothing of that worker runs any more
        dead.wait()
        live.send_signal(signal.SIGSTOP)  # alive, but not running at all
        sweep(sites.secondary)
        live.send_signal(signal.SIGCONT)
        now = clock.now()
        assert rows(sites) == {
            1: (SyncState.PENDING, 0, None),
            2: (SyncState.PENDING, 0, None),
            3: (SyncState.FAILED, 1, now),
            4: (SyncState.FAILED, 2, now),
            5: (SyncState.STARTED, 0, None),
            6: (SyncState.STARTED, 0, None),
        }
    message = interruption_message("host:101:dead", PROCESS_GONE)
    with sites.secondary.tracking_engine.connect() as conn:
        assert registry.require(conn, 3).last_sync_failure == message
        for model_id in (1, 2, 3, 4):
            newest = recent_attempts(conn, "upload", model_id)[0]
            assert (newest.kind, newest.outcome, newest.message) == ("sync", INTERRUPTED, message)
            assert (newest.started_at, newest.finished_at) == (started[model_id].at, now)
        assert recent_attempts(conn, "upload", 5) == []
    # Due at once: the next claim takes them back, before anything newer.
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, [7])
    assert sorted(claim(sites, "host:103:next", [1, 2, 3, 4, 7])) == [1, 2, 3, 4, 7]


def test_a_worker_of_another_machine_keeps_its_rows_until_its_lease_lapses(
    sites: SitePair, clock: FrozenClock
) -> None:
    with worker_process() as (process, identity):
        elsewhere = replace(identity, scope="another-machine:pid:[4026531836]")
        hold(sites.secondary, "far:7:away", elsewhere)
        with sites.secondary.tracking() as conn:
            Registry(sites.secondary, UploadReplicator).insert_pending(conn, [1])
        claim(sites, "far:7:away", [1])
        process.kill()
        process.wait()
        sweep(sites.secondary)
        assert rows(sites)[1][0] == SyncState.STARTED  # its pid says nothing here
        clock.advance(LEASE + timedelta(seconds=1))
        sweep(sites.secondary)
    assert rows(sites)[1] == (SyncState.PENDING, 0, None)
    with sites.secondary.tracking_engine.connect() as conn:
        newest = recent_attempts(conn, "upload", 1)[0]
    assert newest.message == interruption_message("far:7:away", LEASE_LAPSED)


def test_a_dead_workers_verifications_go_back_to_pending_with_their_retry_count(
    sites: SitePair, clock: FrozenClock
) -> None:
    registry = Registry(sites.secondary, UploadReplicator)
    verifiable = registry_verifiable(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, [1])
    (started,) = claim(sites, "host:9:syncer", [1]).values()
    with sites.secondary.tracking() as conn:
        assert registry.synced(conn, 1, started, verification=VerificationState.PENDING)
        (first,) = verifiable.claim(conn, 10, "host:9:syncer")
        assert verifiable.failed(conn, 1, first.started_at, "unreadable") == 1
    clock.advance(timedelta(hours=2))
    with worker_process() as (process, identity):
        hold(sites.secondary, "host:10:verifier", identity)
        with sites.secondary.tracking() as conn:
            (second,) = verifiable.claim(conn, 10, "host:10:verifier")
        process.kill()
        process.wait()
        sweep(sites.secondary)
    with sites.secondary.tracking_engine.connect() as conn:
        row = verifiable.get(conn, 1)
        newest = recent_attempts(conn, "upload", 1)[0]
    assert row is not None
    assert (row["verification_state"], row["verification_retry_count"]) == (
        VerificationState.PENDING,
        1,
    )
    assert (newest.kind, newest.outcome, newest.started_at) == (
        "verification",
        INTERRUPTED,
        second.started_at,
    )
    assert newest.message == interruption_message("host:10:verifier", PROCESS_GONE, "Verification")


def test_a_dead_workers_scrub_claims_go_back_to_be_verified_again(
    sites: SitePair, clock: FrozenClock
) -> None:
    registry = Registry(sites.secondary, UploadReplicator)
    verifiable = registry_verifiable(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, [1])
    (started,) = claim(sites, "host:9:syncer", [1]).values()
    with sites.secondary.tracking() as conn:
        assert registry.synced(
            conn, 1, started, verification=VerificationState.SUCCEEDED, checksum="ab" * 32
        )
    clock.advance(sites.secondary.settings.scrub_period)
    now = clock.now()
    with worker_process() as (process, identity):
        hold(sites.secondary, "host:13:scrubber", identity)
        with sites.secondary.tracking() as conn:
            (scrubbed,) = claim_due(conn, verifiable, now, now, 10, "host:13:scrubber")
        process.kill()
        process.wait()
        sweep(sites.secondary)
    with sites.secondary.tracking_engine.connect() as conn:
        row = verifiable.get(conn, 1)
        newest = recent_attempts(conn, "upload", 1)[0]
    assert row is not None and row["verification_state"] == VerificationState.PENDING
    assert (newest.kind, newest.outcome, newest.started_at) == (
        "verification",
        INTERRUPTED,
        scrubbed.started_at,
    )


def test_a_dead_workers_log_cursor_lease_is_taken_at_once_a_live_ones_is_not(
    sites: SitePair,
) -> None:
    now = sites.secondary.clock.now()
    with worker_process() as (process, identity):
        hold(sites.secondary, "host:11:cursor", identity)
        with sites.secondary.tracking() as conn:
            assert acquire(conn, CURSOR_LEASE, "host:11:cursor", now, LEASE)
        with sites.secondary.tracking() as conn:
            assert not take_role(conn, CURSOR_LEASE, "host:12:standby", now, LEASE)
        process.kill()
        process.wait()
        with sites.secondary.tracking() as conn:
            assert take_role(conn, CURSOR_LEASE, "host:12:standby", now, LEASE)
        with sites.secondary.tracking_engine.connect() as conn:
            assert holder_of(conn, CURSOR_LEASE) == "host:12:standby"


def test_a_lease_holder_that_is_no_worker_is_waited_out(sites: SitePair) -> None:
    now = sites.secondary.clock.now()
    with sites.secondary.tracking() as conn:
        assert acquire(conn, CURSOR_LEASE, "a-cursor-of-its-own", now, LEASE)
        assert not take_role(conn, CURSOR_LEASE, "host:12:standby", now, LEASE)
        assert take_role(conn, CURSOR_LEASE, "host:12:standby", now + LEASE * 2, LEASE)


def test_a_worker_names_its_process_while_it_runs_and_gives_its_leases_up_as_it_stops(
    sites: SitePair,
) -> None:
    t = geo_leases
    with secondary_worker(sites) as worker:
        with sites.secondary.tracking_engine.connect() as conn:
            process = conn.execute(
                select(t.c.process).where(t.c.name == liveness_name(worker.holder))
            ).scalar_one()
        assert ProcessIdentity.parse(process) == process_identity(os.getpid())
    with sites.secondary.tracking_engine.connect() as conn:
        left = conn.execute(select(t.c.name).where(t.c.holder == worker.holder)).scalars().all()
    assert left == []


def test_a_sync_stopped_by_a_shutdown_is_interrupted_the_same_way(live_sites: SitePair) -> None:
    sites = live_sites
    ids = []
    for name in ("a.bin", "b.bin"):
        path = sites.primary.settings.blob_storage("uploads") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"data of " + name.encode())
        with sites.primary.session() as session:
            upload = Upload(path=name, namespace_id=1, size=path.stat().st_size)
            session.add(upload)
            session.commit()
            ids.append(int(upload.id))
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, ids[1:])
        ((_, first),) = registry.claim(conn, 10, "host:1:before")
        retry_at = registry.failed(conn, ids[1], first, "Connection reset")
        registry.insert_pending(conn, ids[:1])
    assert retry_at is not None
    wait_for(lambda: retry_at <= sites.secondary.clock.now(), what="the retry due")
    with sites.secondary.tracking() as conn:
        claims = dict(registry.claim(conn, 10, "host:2:stopping"))
    assert sorted(claims) == ids
    stopping = threading.Event()
    stopping.set()  # the worker is shutting down: transfers stop at their next chunk
    client = BlobClient()
    services = [
        SyncService(sites.secondary, UploadReplicator, i, claims[i], client, stopping) for i in ids
    ]
    with sites.primary_served():
        assert BatchSync(services, client, stopping).execute() == 0
    client.close()
    state = rows(sites)
    assert state[ids[0]] == (SyncState.PENDING, 0, None)
    assert state[ids[1]][:2] == (SyncState.FAILED, 1)
    with sites.secondary.tracking_engine.connect() as conn:
        for model_id in ids:
            newest = recent_attempts(conn, "upload", model_id)[0]
            assert (newest.outcome, newest.error_class) == (INTERRUPTED, None)
            assert newest.message == "Sync interrupted: the worker is shutting down"


def test_a_worker_never_takes_over_its_own_process_rows_even_with_its_lease_lapsed(
    sites: SitePair, clock: FrozenClock
) -> None:
    with sites.secondary.tracking() as conn:
        Registry(sites.secondary, UploadReplicator).insert_pending(conn, [1])
    hold(sites.secondary, "host:14:this-process", process_identity(os.getpid()))
    claim(sites, "host:14:this-process", [1])
    clock.advance(LEASE * 2)  # no heartbeat for two leases: the database was away
    sweep(sites.secondary)
    assert rows(sites)[1][0] == SyncState.STARTED
