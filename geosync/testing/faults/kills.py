"""SIGKILL storms: the secondary's `geosync worker` is killed again and again while it backfills
blobs or repositories, and restarted each time.

After the storm the backfill must finish by itself with every copy equal to its original, no
temp file, clone directory or lock file left, and no process (a `git` child) outliving its worker.
The time a restarted worker takes to transfer again is printed, not judged: a dead worker's rows
hold the site's capacity until its lease expires.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from geosync.app import Geo
from geosync.demo.replicators import SnippetReplicator, UploadReplicator
from geosync.replicator import Replicator
from geosync.states import SyncState
from geosync.testing.faults.base import FaultContext, Row
from geosync.testing.faults.harness import (
    CopyCheck,
    ProcessPair,
    Stopwatch,
    add_snippets,
    add_uploads,
    blob_sizes,
    check_blobs,
    check_mirrors,
    process_pair,
    processes_mentioning,
    seconds,
    set_capacity,
    state_counts,
    synced_count,
    wait_until,
)

#: Seconds a killed worker's children get to die with it before they count as orphans.
ORPHAN_GRACE = 2.0


def kill_count(size: int) -> int:
    """Kills in a storm over `size` items: one per 100, at least 2 and at most 20."""
    return max(2, min(20, size // 100))


@dataclass
class Storm:
    """What a storm did: kills, rows left in flight by them, restart-to-transfer times, and the
    most processes found outliving a killed worker."""

    kills: int = 0
    in_flight: int = 0
    first_transfer: list[float] = field(default_factory=list)
    orphans: int = 0
    finished: bool = False
    duration: float = 0.0

    def takeover(self) -> str:
        """The restart-to-first-transfer times as a table cell."""
        if not self.first_transfer:
            return "no restart transferred"
        median = statistics.median(self.first_transfer)
        return f"median {seconds(median)}, max {seconds(max(self.first_transfer))}"


def _synced_at_least(geo: Geo, replicator: type[Replicator], count: int) -> Callable[[], bool]:
    return lambda: synced_count(geo, replicator) >= count


def storm(
    sites: ProcessPair,
    replicator: type[Replicator],
    total: int,
    kills: int,
    rng: random.Random,
    timeout: float,
) -> Storm:
    """Start the secondary's worker, SIGKILL it `kills` times at random points of the backfill
    (each restart timed to its first transfer), then let a last worker finish; bounded by
    `timeout` seconds overall."""
    result = Storm()
    clock = Stopwatch()
    geo = sites.pair.secondary
    marker = sites.pair.root / "secondary"  # the secondary's storages and repositories
    for k in range(kills + 1):
        before = synced_count(geo, replicator)
        restarted = Stopwatch()
        process = sites.secondary.start("worker")
        left = timeout - clock.seconds()
        if wait_until(_synced_at_least(geo, replicator, before + 1), left) and k:
            result.first_transfer.append(restarted.seconds())
        if k == kills or synced_count(geo, replicator) >= total:
            break
        goal = before + max(1, (total - before) // (kills - k + 1))
        wait_until(
            _synced_at_least(geo, replicator, goal),
            min(rng.uniform(0.3, 2.0), max(0.0, timeout - clock.seconds())),
        )
        os.kill(process.pid, signal.SIGKILL)
        sites.secondary.stop("worker")
        result.kills += 1
        result.in_flight += state_counts(geo, replicator)[SyncState.STARTED]
        wait_until(lambda: not processes_mentioning(marker), ORPHAN_GRACE)
        result.orphans = max(result.orphans, len(processes_mentioning(marker)))
    left = max(0.0, timeout - clock.seconds())
    result.finished = wait_until(_synced_at_least(geo, replicator, total), left, 0.1)
    result.duration = clock.seconds()
    sites.secondary.stop("worker")
    return result


def _row(
    name: str, what: str, total: int, run: Storm, check: CopyCheck, lease: float, backend: str
) -> Row:
    passed = run.finished and check.clean and run.orphans == 0 and run.kills >= 1
    return Row(
        scenario=name,
        done=(
            f"SIGKILL the secondary's worker {run.kills}x during a backfill of {total} {what},"
            " restarting it each time"
        ),
        expected="everything synced by itself; 0 missing, differing, partial or stray; 0 orphans",
        measured=(
            f"{'all' if run.finished else 'NOT all'} synced in {seconds(run.duration)};"
            f" {check.describe()}; {run.in_flight} syncs cut in flight; {run.orphans} orphans;"
            f" restart to first transfer {run.takeover()}"
        ),
        passed=passed,
        figures={
            "kills": run.kills,
            "in_flight": run.in_flight,
            "missing": check.missing,
            "differing": check.differing,
            "partial": check.partial,
            "stray": check.stray,
            "orphans": run.orphans,
            "finished": float(run.finished),
            "first_transfer_max": max(run.first_transfer, default=0.0),
            "first_transfer_median": statistics.median(run.first_transfer or [0.0]),
        },
        notes=f"restart to first transfer is printed, not judged; lease {lease:g} s",
        backend=backend,
    )


def worker_kills_during_blob_backfill(ctx: FaultContext, size: int) -> Row:
    """SIGKILL storm of the secondary's worker while it backfills `size` blobs."""
    rng = random.Random(ctx.seed)
    kills = kill_count(size)
    with process_pair(ctx, "blob-kills") as sites:
        paths = add_uploads(sites.pair, blob_sizes(rng, size, large_every=20), rng, "storm")
        sites.primary.start("serve")
        run = storm(sites, UploadReplicator, size, kills, rng, timeout=60 + size * 0.2)
        check = check_blobs(sites.pair, paths)
    return _row(
        "SIGKILL storm, blob backfill", "blobs", size, run, check, ctx.lease_seconds, ctx.backend
    )


def worker_kills_during_repository_backfill(ctx: FaultContext, size: int) -> Row:
    """SIGKILL storm of the secondary's worker while it mirrors `size` repositories."""
    rng = random.Random(ctx.seed)
    kills = kill_count(size * 10)
    with process_pair(ctx, "repository-kills") as sites:
        disk_paths = add_snippets(sites.pair, size, commits=40, rng=rng)
        # Few clones at once, so that the backfill takes long enough for kills to land in it.
        set_capacity(sites.pair, repos_max_capacity=3)
        sites.primary.start("serve")
        run = storm(sites, SnippetReplicator, size, kills, rng, timeout=60 + size * 1.0)
        check = check_mirrors(sites.pair, disk_paths)
    return _row(
        "SIGKILL storm, repository backfill",
        "repositories",
        size,
        run,
        check,
        ctx.lease_seconds,
        ctx.backend,
    )
