"""Worker processes of one site wake each other through PostgreSQL's LISTEN/NOTIFY.

Two `Worker`s with their own listeners stand for two worker processes: each has a probe loop
named like the scheduler that sleeps for minutes between rounds, so a round within seconds
can only be a wake-up. On SQLite there is no channel: workers poll, as before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import text

from geosync.app import Geo
from geosync.registry import Registry
from geosync.resync import resync_one
from geosync.states import SyncState
from geosync.testing import DatabaseFactory, SitePair, build_site_pair
from geosync.testing.workers import run_worker, wait_for
from geosync.wakeups import wakeup_engine
from geosync.worker import Worker, notify_local_workers
from tests.conftest import DEMO_REPLICATORS

#: A sleep far longer than any wait below: a round within it was woken.
ASLEEP = 600.0


class Probe:
    """A loop that counts its rounds and the work announced to it, then sleeps for long."""

    name = "scheduler"

    def __init__(self, geo: Geo, worker: Worker) -> None:
        self.rounds = 0
        self.arrivals = 0
        self.ran = threading.Event()

    def run_once(self) -> float:
        self.rounds += 1
        self.ran.set()
        return ASLEEP

    def work_arrived(self) -> None:
        self.arrivals += 1


@pytest.fixture
def sites(tmp_path: Path, databases: DatabaseFactory) -> Iterator[SitePair]:
    pair = build_site_pair(tmp_path / "sites", DEMO_REPLICATORS, databases, poll_interval=60.0)
    yield pair
    pair.dispose()


def probe_of(worker: Worker) -> Probe:
    (loop,) = worker.loops
    assert isinstance(loop, Probe)
    return loop


@contextmanager
def started(geo: Geo) -> Iterator[tuple[Worker, Probe]]:
    """A worker running the probe, past its first round and listening."""
    with run_worker(Worker(geo, [Probe])) as worker:
        probe = probe_of(worker)
        wait_for(probe.ran.is_set, timeout=30, what="the probe's first round")
        if worker.listener is not None:
            wait_for(worker.listener.listening.is_set, timeout=30, what="LISTEN in place")
        yield worker, probe


def second_site_object(sites: SitePair) -> Geo:
    """Another `Geo` of the secondary: what another process of the site (a worker, the web
    server, `geosync resync`) holds."""
    return Geo(sites.secondary.settings, list(sites.secondary.catalog))


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_worker_wakes_the_same_loop_of_another_worker_process(sites: SitePair) -> None:
    other_site = second_site_object(sites)
    try:
        with started(sites.secondary) as (one, probe_one), started(other_site) as (_, probe_two):
            rounds = probe_two.rounds
            one.notify("scheduler")
            wait_for(lambda: probe_two.rounds > rounds, timeout=10, what="the other woken")
            assert probe_two.arrivals >= 1
            assert probe_one.arrivals >= 1  # and its own, at once
    finally:
        other_site.dispose()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_an_operators_resync_wakes_the_schedulers_of_the_worker_processes(
    sites: SitePair,
) -> None:
    registry = Registry(sites.secondary, DEMO_REPLICATORS[0])
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, [7])
        claimed = registry.claim(conn, 1, "someone")
        registry.synced(conn, 7, claimed[0][1])
    operator = second_site_object(sites)
    try:
        with started(sites.secondary) as (_, probe):
            rounds = probe.rounds
            resync_one(operator, DEMO_REPLICATORS[0], 7)
            wait_for(lambda: probe.rounds > rounds, timeout=10, what="the scheduler woken")
        with sites.secondary.tracking_engine.connect() as conn:
            assert registry.require(conn, 7).state == SyncState.PENDING
    finally:
        operator.dispose()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_listener_that_lost_its_connection_listens_again_and_wakes_every_loop(
    sites: SitePair,
) -> None:
    with started(sites.secondary) as (worker, probe):
        assert worker.listener is not None
        rounds = probe.rounds
        with sites.secondary.tracking_engine.connect() as conn:
            ended = conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE query LIKE 'LISTEN geosync_wakeup%' AND pid <> pg_backend_pid()"
                )
            ).all()
        assert ended
        # Back: it wakes every loop, for whatever was announced while it was away...
        wait_for(lambda: probe.rounds > rounds, timeout=15, what="a wake-up after reconnecting")
        time.sleep(0.2)
        rounds = probe.rounds
        # ... and hears announcements again.
        notify_local_workers(second := second_site_object(sites), "scheduler")
        try:
            wait_for(lambda: probe.rounds > rounds, timeout=10, what="a wake-up heard again")
        finally:
            second.dispose()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_on_sqlite_there_is_no_channel_and_workers_poll(sites: SitePair) -> None:
    assert wakeup_engine(sites.secondary) is None
    assert wakeup_engine(sites.primary) is None
    with started(sites.secondary) as (worker, _):
        assert worker.listener is None and worker.announcer is None


def test_the_cursor_holder_notices_a_new_event_long_before_its_poll_interval(
    sites: SitePair,
) -> None:
    from geosync.demo.models import Upload
    from geosync.secondary.log_cursor import LogCursorLoop

    registry = Registry(sites.secondary, DEMO_REPLICATORS[0])
    with run_worker(Worker(sites.secondary, [LogCursorLoop])) as worker:
        (loop,) = worker.loops
        assert isinstance(loop, LogCursorLoop)
        wait_for(lambda: loop.cursor.caught_up_at is not None, timeout=30, what="the lease held")
        with sites.primary.session() as session:
            upload = Upload(path="new.bin", namespace_id=1, size=0)
            session.add(upload)
            session.commit()
            upload_id = upload.id

        def applied() -> bool:
            with sites.secondary.tracking_engine.connect() as conn:
                return registry.get(conn, upload_id) is not None

        # poll_interval is a minute: only the newest-event-id poll gets there this soon.
        wait_for(applied, timeout=10, what="the new event applied")
