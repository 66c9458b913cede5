"""The worker: loops in threads, housekeeping a moment after the data-moving loops and the
takeover of dead workers' rows, clean stop."""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from typing import Any

import structlog
from sqlalchemy.exc import OperationalError

from geosync.app import Geo
from geosync.loops import HOUSEKEEPING_START, Loop
from geosync.secondary.log_cursor import LogCursorLoop
from geosync.secondary.scheduler import SchedulerLoop, StuckSweepLoop
from geosync.testing import SitePair
from geosync.worker import LoopFactory, Worker, retry_delay


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
    # The stuck sweep gives a killed worker's rows (and the capacity they hold) back at once.
    moving = {LogCursorLoop.name, SchedulerLoop.name, StuckSweepLoop.name}
    assert {name: delays[name] for name in moving} == dict.fromkeys(moving, 0.0)
    assert all(delays[name] == HOUSEKEEPING_START for name in set(delays) - moving)
    for loop in worker.loops:
        closer = getattr(loop, "close", None)
        if callable(closer):
            closer()


def test_retry_delays_double_up_to_a_cap() -> None:
    assert [retry_delay(n) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert retry_delay(10_000) == 30.0


class Failing:
    """A loop whose first rounds raise `error`; it notes when each round ran."""

    name = "failing"

    def __init__(self, error: Exception, failures: int) -> None:
        self.error = error
        self.failures = failures
        self.rounds: list[float] = []

    def run_once(self) -> float:
        self.rounds.append(time.monotonic())
        if len(self.rounds) <= self.failures:
            raise self.error
        return 60.0


def run_until_rounds(geo: Geo, loop: Failing, rounds: int) -> list[MutableMapping[str, Any]]:
    """Run `loop` in a worker until it has run `rounds` times; the log events it produced."""
    worker = Worker(geo, [lambda _geo, _worker: loop])
    with structlog.testing.capture_logs() as events:
        worker.start()
        try:
            deadline = time.monotonic() + 15
            while len(loop.rounds) < rounds and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            worker.stop()
    return [e for e in events if e.get("loop") == loop.name]


def test_a_failing_loop_waits_longer_each_time_and_says_when_it_recovered(
    sites: SitePair,
) -> None:
    loop = Failing(OperationalError("SELECT 1", {}, Exception("server closed\nthe connection")), 2)
    events = run_until_rounds(sites.secondary, loop, 3)
    assert len(loop.rounds) == 3
    gaps = [b - a for a, b in zip(loop.rounds, loop.rounds[1:], strict=False)]
    assert 1.0 <= gaps[0] < 1.8 and 2.0 <= gaps[1] < 2.8
    assert [(e["event"], e["log_level"]) for e in events] == [
        ("loop failed, retrying", "warning"),
        ("loop failed, retrying", "warning"),
        ("loop recovered", "info"),
    ]
    assert [e["retry_in"] for e in events[:2]] == [1.0, 2.0]
    assert events[0]["error"] == "server closed"  # the cause's first line
    assert all("exc_info" not in e for e in events)


def test_an_unexpected_error_gets_one_traceback_per_run_of_failures(sites: SitePair) -> None:
    loop = Failing(RuntimeError("a bug"), 2)
    events = run_until_rounds(sites.secondary, loop, 3)
    assert [e["event"] for e in events] == [
        "loop crashed, retrying",
        "loop failed, retrying",
        "loop recovered",
    ]
    assert isinstance(events[0]["exc_info"], RuntimeError)
    assert "exc_info" not in events[1]
