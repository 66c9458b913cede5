"""Helpers for takeover tests: worker processes of this machine, alive or killed, holding rows."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from geosync.app import Geo
from geosync.leases import acquire, liveness_name
from geosync.liveness import ProcessIdentity, process_identity
from geosync.registry import Registry, SyncClaim
from geosync.replicator import Replicator
from geosync.secondary.scheduler import StuckSweepLoop
from geosync.worker import Worker

#: The liveness leases these helpers write last this long: far longer than any test waits.
LEASE = timedelta(seconds=60)


@contextmanager
def worker_process() -> Iterator[tuple[subprocess.Popen[bytes], ProcessIdentity]]:
    """A live process of this machine and its identity, as a worker writes it in its lease."""
    process = subprocess.Popen(["sleep", "60"])
    try:
        identity = process_identity(process.pid)
        assert identity is not None
        yield process, identity
    finally:
        process.kill()
        process.wait()


def hold(geo: Geo, holder: str, identity: ProcessIdentity | None) -> None:
    """`holder`'s liveness lease, valid for `LEASE`, naming `identity`."""
    process = identity.text() if identity is not None else None
    with geo.tracking() as conn:
        assert acquire(conn, liveness_name(holder), holder, geo.clock.now(), LEASE, process)


def claimed_by_killed_worker(
    geo: Geo, replicator: type[Replicator], ids: list[int], holder: str
) -> dict[int, SyncClaim]:
    """Claim every due row (exactly `ids`) for a worker `holder` whose liveness lease is still
    valid, then SIGKILL its process; returns the claims."""
    with worker_process() as (process, identity):
        hold(geo, holder, identity)
        with geo.tracking() as conn:
            claims = dict(Registry(geo, replicator).claim(conn, 100, holder))
        process.kill()
        process.wait()
    assert sorted(claims) == ids
    return claims


def sweep(geo: Geo) -> None:
    """One round of a live worker's stuck sweep."""
    StuckSweepLoop(geo, Worker(geo, [])).run_once()
