"""A site's background loops run inside a test process, and polling for what they achieve.

Tests and the contract suites run the same loops `geosync worker` runs, in threads, against a
served primary; they then wait for an observable outcome instead of sleeping a fixed time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from geosync.testing.sites import SitePair
from geosync.worker import LoopFactory, Worker

__all__ = ["primary_worker", "run_worker", "secondary_worker", "wait_for"]


def wait_for(
    predicate: Callable[[], bool],
    timeout: float = 30.0,
    what: str = "condition",
    interval: float = 0.05,
) -> None:
    """Poll `predicate` every `interval` seconds until it holds, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def run_worker(worker: Worker) -> Iterator[Worker]:
    """Start `worker`'s loops for the block and stop them (waiting for work in flight) after."""
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


def _secondary_loops(verification: bool) -> list[LoopFactory]:
    from geosync.secondary.log_cursor import LogCursorLoop
    from geosync.secondary.scheduler import SchedulerLoop, StuckSweepLoop

    loops: list[LoopFactory] = [LogCursorLoop, SchedulerLoop, StuckSweepLoop]
    if verification:
        from geosync.secondary.verification import SecondaryVerificationLoop

        loops.append(SecondaryVerificationLoop)
    return loops


@contextmanager
def secondary_worker(sites: SitePair, *, verification: bool = False) -> Iterator[Worker]:
    """The secondary's sync loops (log cursor, scheduler, stuck sweep) running in threads;
    `verification` adds the loop that verifies synced copies against the primary's checksums.
    """
    with run_worker(Worker(sites.secondary, _secondary_loops(verification))) as worker:
        yield worker


@contextmanager
def primary_worker(sites: SitePair) -> Iterator[Worker]:
    """The primary's verification loops running in threads: they compute the checksums that
    secondaries compare with and publish `checksum_succeeded`.
    """
    from geosync.primary.verification import PrimaryVerificationLoop, PrimaryVerificationSweepLoop

    loops: list[LoopFactory] = [PrimaryVerificationLoop, PrimaryVerificationSweepLoop]
    with run_worker(Worker(sites.primary, loops)) as worker:
        yield worker


def checksum_on_primary(sites: SitePair) -> None:
    """Run the primary's verification until a round finds nothing left to checksum."""
    from geosync.primary.verification import PrimaryVerificationLoop

    loop = PrimaryVerificationLoop(sites.primary, threads=1)
    try:
        while loop.run_once() == 0:
            pass
    finally:
        loop.close()
