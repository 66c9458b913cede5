"""Faults of the secondary's storage: a disk that fills up, and copies damaged behind geosync's
back (bytes flipped, files truncated or deleted) that verification must find and repair.

The disk is a real tmpfs of a few MiB mounted over the secondary's upload storage where this
process may mount one (root on Linux); elsewhere the fault is injected on purpose: every write of
a copy raises ENOSPC once the copies written reach the same size.

Damage is found by a detector, a context manager held while the scenario waits for the repairs:
the continuous scrub running on the secondary (`scrub_copies`, the default, with a scrub period of
a few seconds), or an operator's `geosync reverify NAME --all` (`reverify_every_copy`).
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select

from geosync.db.tables import geo_events
from geosync.demo.replicators import UploadReplicator
from geosync.registry import Registry
from geosync.resync import resync_all
from geosync.reverification import reverify_all
from geosync.secondary import partial_file
from geosync.secondary.cursor_state import reported_position
from geosync.states import SyncState, VerificationState
from geosync.status import compute_status
from geosync.testing.faults.base import FaultContext, Row
from geosync.testing.faults.harness import (
    CopyCheck,
    KiB,
    MiB,
    Stopwatch,
    add_uploads,
    attempts,
    check_blobs,
    seconds,
    site_pair,
    state_counts,
    wait_until,
)
from geosync.testing.sites import SitePair
from geosync.testing.workers import checksum_on_primary, run_worker, secondary_worker
from geosync.worker import Worker

#: Damage is found by this: a context manager entered once the copies are damaged and held while
#: the scenario waits for every damaged copy to be repaired.
Detector = Callable[[SitePair], AbstractContextManager[None]]


# -- a full disk -----------------------------------------------------------------------------------


class InjectedFullDisk:
    """The fault injected on purpose where no tmpfs can be mounted: every write of a copy
    (`PartialFile.add`) raises ENOSPC once `capacity` bytes of copies have been written."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.written = 0
        self._lock = threading.Lock()
        self._original = partial_file.PartialFile.add

    def describe(self) -> str:
        """What the fault is, for the table."""
        return f"injected ENOSPC after {self.capacity / MiB:.1f} MiB"

    def grow(self, capacity: int) -> None:
        """Space freed: the disk now holds `capacity` bytes."""
        self.capacity = capacity

    @contextmanager
    def installed(self) -> Iterator[None]:
        """The write hook in place for the block."""
        fault, original = self, self._original

        def add(self: partial_file.PartialFile, chunk: bytes) -> None:
            with fault._lock:
                if fault.written + len(chunk) > fault.capacity:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                fault.written += len(chunk)
            original(self, chunk)

        partial_file.PartialFile.add = add  # type: ignore[method-assign]
        try:
            yield
        finally:
            partial_file.PartialFile.add = original  # type: ignore[method-assign]


class TmpfsDisk:
    """A real tmpfs of `capacity` bytes mounted at `path` (the kernel says ENOSPC)."""

    def __init__(self, path: Path, capacity: int) -> None:
        self.path = path
        self.capacity = capacity

    def describe(self) -> str:
        """What the fault is, for the table."""
        return f"a tmpfs of {self.capacity / MiB:.1f} MiB"

    def grow(self, capacity: int) -> None:
        """Space freed: remount with `capacity` bytes."""
        self.capacity = capacity
        _mount("-o", f"remount,size={capacity}", str(self.path))

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Mounted for the block."""
        _mount("-t", "tmpfs", "-o", f"size={self.capacity},mode=0755", "tmpfs", str(self.path))
        try:
            yield
        finally:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], capture_output=True, check=True, timeout=30)


def full_disk(path: Path, capacity: int) -> TmpfsDisk | InjectedFullDisk:
    """A tmpfs at `path` when this process can mount one, else the injected fault."""
    if os.geteuid() == 0 and shutil.which("mount") and shutil.which("umount"):
        probe = TmpfsDisk(path, capacity)
        try:
            with probe.installed():
                pass
        except (OSError, subprocess.SubprocessError):
            pass
        else:
            return probe
    return InjectedFullDisk(capacity)


def _settled(pair: SitePair, total: int) -> bool:
    counts = state_counts(pair.secondary, UploadReplicator)
    return counts[SyncState.SYNCED] + counts[SyncState.FAILED] >= total


def _no_space_failures(pair: SitePair) -> int:
    registry = Registry(pair.secondary, UploadReplicator)
    t = registry.table
    with pair.secondary.tracking_engine.connect() as conn:
        messages = conn.execute(
            select(t.c.last_sync_failure).where(t.c.state == int(SyncState.FAILED))
        ).scalars()
        return sum(1 for m in messages if m and "No space left" in m)


def disk_full_on_secondary(ctx: FaultContext, size: int, *, tmpfs: bool = True) -> Row:
    """`size` blobs backfilled onto a secondary whose disk holds about 60 % of them; then space
    is freed and the operator resyncs the failed rows. `tmpfs=False` injects the fault even
    where a tmpfs could be mounted."""
    rng = random.Random(ctx.seed)
    sizes = [rng.randint(8 * KiB, 64 * KiB) for _ in range(size)]
    with site_pair(ctx, "disk-full") as pair:
        paths = add_uploads(pair, sizes, rng, "full")
        storage = pair.secondary.settings.blob_storage("uploads")
        capacity = int(sum(sizes) * 0.6)
        disk = full_disk(storage, capacity) if tmpfs else InjectedFullDisk(capacity)
        described = disk.describe()
        with disk.installed(), pair.primary_served(), secondary_worker(pair):
            settled = wait_until(lambda: _settled(pair, size), 60 + size * 0.05)
            counts = state_counts(pair.secondary, UploadReplicator)
            no_space = _no_space_failures(pair)
            classes = attempts(pair.secondary, UploadReplicator, "sync", "failed", "permanent")
            full = check_blobs(pair, {i: p for i, p in paths.items() if (storage / p).exists()})
            partial_when_full = full.partial
            disk.grow(sum(sizes) * 4)
            clock = Stopwatch()
            moved = sum(resync_all(pair.secondary, UploadReplicator, failed_only=True))
            done = wait_until(
                lambda: state_counts(pair.secondary, UploadReplicator)[SyncState.SYNCED] >= size,
                60 + size * 0.05,
            )
            recovery = clock.seconds()
            check = check_blobs(pair, paths)  # inside: a tmpfs takes the copies with it
    failed = counts[SyncState.FAILED]
    passed = (
        settled
        and failed > 0
        and no_space == failed
        and len(classes) == failed
        and partial_when_full == 0
        and full.differing == 0
        and done
        and check.clean
    )
    return Row(
        scenario="disk full on the secondary",
        done=(
            f"backfill {size} blobs ({sum(sizes) / MiB:.1f} MiB) onto {described};"
            " then free space and `geosync resync upload --all --failed`"
        ),
        expected=(
            "rows that do not fit fail as permanent with 'No space left'; 0 partial files,"
            " every file present complete; all synced after the resync"
        ),
        measured=(
            f"{counts[SyncState.SYNCED]} synced, {failed} failed ({no_space} 'No space left',"
            f" {len(classes)} permanent); {partial_when_full} partial, {full.differing} differing"
            f" when full; after freeing space {moved} resynced and"
            f" {'all' if done else 'NOT all'} synced in {seconds(recovery)}; {check.describe()}"
        ),
        passed=passed,
        figures={
            "synced_when_full": counts[SyncState.SYNCED],
            "failed_when_full": failed,
            "no_space_failures": no_space,
            "permanent_failures": len(classes),
            "partial_when_full": partial_when_full,
            "differing_when_full": full.differing,
            "recovered": float(done),
            "missing": check.missing,
            "differing": check.differing,
            "partial": check.partial,
            "stray": check.stray,
        },
        backend=ctx.backend,
    )


# -- damaged copies --------------------------------------------------------------------------------


def damage_copies(
    pair: SitePair, paths: dict[int, str], count: int, rng: random.Random
) -> dict[int, str]:
    """Damage `count` of the secondary's copies behind geosync's back: most get one byte
    flipped, one in 20 (at least one each when `count` >= 3) is truncated or deleted.
    Returns id -> what was done ("flipped", "truncated", "deleted")."""
    storage = pair.secondary.settings.blob_storage("uploads")
    chosen = rng.sample(sorted(paths), count)
    other = max(1, count // 20) if count >= 3 else 0
    kinds = ["truncated"] * other + ["deleted"] * other
    kinds += ["flipped"] * (count - len(kinds))
    damaged: dict[int, str] = {}
    for record_id, kind in zip(chosen, kinds, strict=True):
        copy = storage / paths[record_id]
        if kind == "deleted":
            copy.unlink()
        elif kind == "truncated":
            os.truncate(copy, copy.stat().st_size // 2)
        else:
            data = bytearray(copy.read_bytes())
            data[rng.randrange(len(data))] ^= 0xFF
            copy.write_bytes(bytes(data))
        damaged[record_id] = kind
    return damaged


@contextmanager
def reverify_every_copy(pair: SitePair) -> Iterator[None]:
    """An operator's detection: what `geosync reverify NAME --all` does on the secondary, for
    every replicator whose copies are verified, before the scenario waits for the repairs."""
    for replicator in pair.secondary.catalog:
        if replicator.verification_enabled:
            for _ in reverify_all(pair.secondary, replicator, failed_only=False):
                pass
    yield


@contextmanager
def scrub_copies(pair: SitePair) -> Iterator[None]:
    """geosync's own detection: the continuous scrub (`geosync.scrub.ScrubLoop`) running on the
    secondary for the block, at the site's scrub period and rates; nothing else looks at a
    verified copy again meanwhile."""
    from geosync.scrub import ScrubLoop

    with run_worker(Worker(pair.secondary, [ScrubLoop])):
        yield


#: What finds damaged copies unless a scenario is given another detector.
DETECTOR: Detector = scrub_copies
#: How each detector is named in the table.
DETECTOR_NAMES: dict[Detector, str] = {
    scrub_copies: "the continuous scrub alone",
    reverify_every_copy: "`geosync reverify upload --all` run by hand",
}
#: The scrub period of the corruption scenario's sites: the scrub looks at a copy again once its
#: verification is older than half of it.
SCRUB_PERIOD = timedelta(seconds=4)


def verified_uploads(pair: SitePair) -> int:
    """How many upload rows are synced with a succeeded verification (of any age)."""
    registry = Registry(pair.secondary, UploadReplicator)
    t = registry.table
    with pair.secondary.tracking_engine.connect() as conn:
        rows = conn.execute(select(t.c.state, t.c.verification_state)).all()
    return sum(1 for s, v in rows if s == SyncState.SYNCED and v == VerificationState.SUCCEEDED)


def status_verified_percent(pair: SitePair) -> float:
    """The share of uploads `geosync status` calls verified on the secondary (within the scrub
    period)."""
    values = compute_status(pair.secondary).values
    verified, total = values["uploads_verified_count"], values["uploads_registry_count"]
    return 100.0 * float(verified or 0) / float(total) if total else 0.0


def _caught_up(pair: SitePair) -> bool:
    """Every event read: a `checksum_succeeded` still unread would verify a copy again, and the
    detector must be the only one that looks."""
    with pair.primary.main_engine.connect() as conn:
        newest = conn.execute(select(func.max(geo_events.c.id))).scalar()
    with pair.secondary.tracking_engine.connect() as conn:
        position = reported_position(conn)
    return newest is None or (position is not None and position >= newest)


def _repaired(pair: SitePair, paths: dict[int, str], damaged: dict[int, str]) -> int:
    check = {i: paths[i] for i in damaged}
    registry = Registry(pair.secondary, UploadReplicator)
    with pair.secondary.tracking_engine.connect() as conn:
        rows = {i: registry.get(conn, i) for i in damaged}
    source = pair.primary.settings.blob_storage("uploads")
    target = pair.secondary.settings.blob_storage("uploads")
    return sum(
        1
        for i, relative in check.items()
        if (row := rows[i]) is not None
        and row.sync_state is SyncState.SYNCED
        and row.verification is VerificationState.SUCCEEDED
        and (target / relative).is_file()
        and (target / relative).read_bytes() == (source / relative).read_bytes()
    )


@dataclass(frozen=True)
class Repair:
    """What damaging verified copies and running a detector measured."""

    ready: bool
    damaged: dict[int, str]
    verified_percent_before: float
    repaired_in_time: bool
    seconds: float
    found: int
    repaired: int
    needless: int
    check: CopyCheck


def damage_and_detect(
    pair: SitePair, size: int, detect: Detector, rng: random.Random, timeout: float
) -> Repair:
    """Back up `size` uploads, verified; damage one in ten; hold `detect` until every damaged
    copy is repaired (or `timeout` seconds pass) and measure."""
    paths = add_uploads(pair, [rng.randint(1, 32 * KiB) for _ in range(size)], rng, "c")
    checksum_on_primary(pair)
    with pair.primary_served(), secondary_worker(pair, verification=True):
        ready = wait_until(
            lambda: verified_uploads(pair) >= size and _caught_up(pair), 60 + size * 0.05
        )
        damaged = damage_copies(pair, paths, max(3, size // 10), rng)
        before = status_verified_percent(pair)
        clock = Stopwatch()
        syncs_before = attempts(pair.secondary, UploadReplicator, "sync", "synced")
        with detect(pair):
            done = wait_until(lambda: _repaired(pair, paths, damaged) == len(damaged), timeout, 0.2)
        elapsed = clock.seconds()
        found = attempts(pair.secondary, UploadReplicator, "verification", "failed")
        resynced = attempts(pair.secondary, UploadReplicator, "sync", "synced") - syncs_before
        repaired = _repaired(pair, paths, damaged)
    return Repair(
        ready=ready,
        damaged=damaged,
        verified_percent_before=before,
        repaired_in_time=done,
        seconds=elapsed,
        found=sum(1 for i in damaged if found[i]),
        repaired=repaired,
        needless=sum(1 for i in resynced if i not in damaged),
        check=check_blobs(pair, paths),
    )


def corruption_found_and_repaired(
    ctx: FaultContext, size: int, detector: Detector | None = None
) -> Row:
    """`size` verified copies, one in ten damaged; the detector (the scrub by default) must find
    and repair every damaged one, and download none of the others again. The scrub must do it
    within three scrub periods (a copy is looked at once per period, then downloaded again)."""
    detect = detector or DETECTOR
    by_scrub = detect is scrub_copies
    period = SCRUB_PERIOD.total_seconds()
    rate = max(500.0, float(size))  # every copy within a period: only the period is waited for
    with site_pair(
        ctx, "corruption", scrub_period=SCRUB_PERIOD, scrub_items_per_second=rate
    ) as pair:
        timeout = 3 * period if by_scrub else 60 + size * 0.05
        run = damage_and_detect(pair, size, detect, random.Random(ctx.seed), timeout)
    count = len(run.damaged)
    kinds = {
        k: sum(1 for v in run.damaged.values() if v == k)
        for k in ("flipped", "truncated", "deleted")
    }
    name = DETECTOR_NAMES.get(detect, getattr(detect, "__name__", repr(detect)))
    passed = (
        run.ready
        and run.repaired_in_time
        and run.found == run.repaired == count
        and run.needless == 0
        and run.check.clean
    )
    return Row(
        scenario="corruption found by the scrub" if by_scrub else "corruption found by a reverify",
        done=(
            f"of {size} verified copies flip a byte in {kinds['flipped']}, truncate"
            f" {kinds['truncated']}, delete {kinds['deleted']}; detection: {name}"
            + (f" (scrub period {period:g} s)" if by_scrub else "")
        ),
        expected=(
            "every damaged copy found and repaired"
            + (f" within 3 scrub periods ({3 * period:g} s)" if by_scrub else "")
            + "; no intact copy downloaded again"
        ),
        measured=(
            f"status said {run.verified_percent_before:.0f} % verified over the damage;"
            f" {run.found}/{count} found, {run.repaired}/{count} repaired in"
            f" {seconds(run.seconds)}; {run.needless} intact copies downloaded again;"
            f" {run.check.describe()}"
        ),
        passed=passed,
        figures={
            "damaged": count,
            "verified_percent_before": run.verified_percent_before,
            "found": run.found,
            "repaired": run.repaired,
            "needless_downloads": run.needless,
            "seconds": run.seconds,
            "missing": run.check.missing,
            "differing": run.check.differing,
            "partial": run.check.partial,
            "stray": run.check.stray,
        },
        backend=ctx.backend,
    )


def corruption_found_by_reverify(ctx: FaultContext, size: int) -> Row:
    """`corruption_found_and_repaired` with an operator's `geosync reverify upload --all` as the
    detector instead of the scrub."""
    return corruption_found_and_repaired(ctx, size, reverify_every_copy)
