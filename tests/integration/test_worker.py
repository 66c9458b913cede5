"""The worker: loops in threads, housekeeping a moment after the data-moving loops, clean stop."""

from __future__ import annotations

import time

from geosync.app import Geo
from geosync.loops import HOUSEKEEPING_START, Loop
from geosync.secondary.log_cursor import LogCursorLoop
from geosync.secondary.scheduler import SchedulerLoop
from geosync.testing import SitePair
from geosync.worker import LoopFactory, Worker


class Recording:
    """A loop that notes when each of its rounds ran."""

    def __init__(self, name: str, start_after: float) -> None:
        self.name = name
        self.start_after = start_after
        self.rounds: list[float] = []

    def run_once(self) -> float:
        self.rounds.append(time.monotonic())
        return 60.0


def handing_out(loop: Recording) -> LoopFactory:
    """A loop factory that ignores its arguments and returns `loop`."""

    def factory(_geo: Geo, _worker: Worker) -> Loop:
        return loop

    return factory


def worker_with(geo: Geo, *loops: Recording) -> Worker:
    """A worker running exactly `loops`."""
    return Worker(geo, [handing_out(loop) for loop in loops])


def test_a_loop_with_start_after_waits_before_its_first_round(sites: SitePair) -> None:
    eager, patient = Recording("eager", 0.0), Recording("patient", 0.4)
    worker = worker_with(sites.secondary, eager, patient)
    started = time.monotonic()
    worker.start()
    try:
        deadline = started + 10
        while not patient.rounds and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop()
    assert eager.rounds and eager.rounds[0] - started < 0.3
    assert patient.rounds and patient.rounds[0] - started >= 0.4


def test_stopping_during_the_wait_skips_the_round_and_returns_at_once(sites: SitePair) -> None:
    patient = Recording("patient", 30.0)
    worker = worker_with(sites.secondary, patient)
    worker.start()
    asked = time.monotonic()
    worker.stop(timeout=10)
    assert time.monotonic() - asked < 5
    assert patient.rounds == []


def test_only_housekeeping_waits_on_a_secondary(sites: SitePair) -> None:
    worker = Worker(sites.secondary)
    delays = {loop.name: getattr(loop, "start_after", 0.0) for loop in worker.loops}
    moving = {LogCursorLoop.name, SchedulerLoop.name}
    assert {name: delays[name] for name in moving} == dict.fromkeys(moving, 0.0)
    assert all(delays[name] == HOUSEKEEPING_START for name in set(delays) - moving)
    for loop in worker.loops:
        closer = getattr(loop, "close", None)
        if callable(closer):
            closer()
