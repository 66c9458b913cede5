"""The scheduler: claims due registry rows and runs their syncs within the node's capacities.

Work is the registry tables themselves. Claims for one capacity group (the replicators whose
strategies share a node capacity setting) happen under a site-wide lock (PostgreSQL advisory
lock; SQLite's `BEGIN IMMEDIATE`), so the count of rows in `started` —
the syncs running in every worker process of the site — never exceeds the capacity.
"""

from __future__ import annotations

import contextlib
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING

from sqlalchemy import Connection, text

from geosync.db.engines import error_line, is_sqlite
from geosync.flags import flag_enabled
from geosync.leases import prune_liveness
from geosync.log import get_logger
from geosync.loops import OUTAGES
from geosync.object_sync import left_to_store, primary_object_storages
from geosync.registry import Registry, SyncClaim, started_total
from geosync.secondary.batch_sync import BatchSync
from geosync.secondary.blob_client import BlobClient
from geosync.secondary.leftovers import remove_leftovers
from geosync.secondary.reachability import MAIN_DATABASE, PRIMARY
from geosync.secondary.settlement import Settler
from geosync.secondary.sync import Route, SyncService, prefetch_missing
from geosync.secondary.takeover import take_over

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.nodes import Node
    from geosync.replicator import Replicator
    from geosync.worker import Worker

log = get_logger("scheduler")

Claim = tuple["type[Replicator]", int, datetime]
SHUTDOWN_GRACE = 20.0
#: Claim for a strategy only once this fraction of its slots (1/n) is free locally...
CLAIM_FRACTION = 3
#: ... or once a slot has waited this long for others to free up (seconds): a slot left idle
#: while a large file's download runs on would cost more than the claim's queries.
CLAIM_GATHER = 0.05
#: After a round found no work for a strategy, skip it for this long (seconds, at most the poll
#: interval) even when woken: finished syncs wake the scheduler many times a second.
DRAINED_RECHECK = 0.25
#: Threads writing the files of blob batches.
BATCH_WRITERS = 4
#: How long the scheduler trusts its reading of the replicators' flags (seconds).
FLAGS_TTL = 1.0
#: How long the scheduler trusts its reading of this node and the primary's URL (seconds).
ROUTE_TTL = 5.0


class _Release:
    """Gives a job's slots back to the scheduler, once: when its rows are written (a batch
    says so before its log lines and metrics) or else when it ends."""

    def __init__(self, scheduler: SchedulerLoop, group: str, count: int) -> None:
        self.scheduler = scheduler
        self.group = group
        self.count = count

    def __call__(self, wake: bool = True) -> None:
        scheduler = self.scheduler
        with scheduler._lock:
            count, self.count = self.count, 0
            scheduler.inflight[self.group] -= count
        if count and wake:
            scheduler.worker.wake(scheduler.name)


def capacity_of(node: Node, group: str) -> int:
    """The node's limit of concurrent syncs of a capacity group (the name of a node field
    that replicators declare as their `capacity_setting`)."""
    return int(getattr(node, group))


def capacity_groups(replicators: Iterable[type[Replicator]]) -> list[str]:
    """The capacity settings `replicators` declare, each once, in catalog order."""
    return list(dict.fromkeys(r.capacity_setting for r in replicators))


def _lock_claims(conn: Connection, group: str) -> None:
    if not is_sqlite(conn.engine):
        key = zlib.crc32(f"geosync-claim-{group}".encode())
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def claim_round_robin(
    conn: Connection,
    registries: list[Registry],
    capacity: int,
    holder: str,
    offset: int = 0,
    counted: list[Registry] | None = None,
) -> list[tuple[Registry, int, SyncClaim]]:
    """Claim up to the free capacity, sharing it across `registries` in turn.

    The capacity is shared by the syncs of `counted` (default: `registries`): every registry
    of the group, when only some are worth a claim.
    """
    _lock_claims(conn, registries[0].replicator.capacity_setting if registries else "none")
    free = capacity - started_total(conn, counted if counted is not None else registries)
    if not registries or free <= 0:
        return []
    active = registries[offset % len(registries) :] + registries[: offset % len(registries)]
    claimed: list[tuple[Registry, int, SyncClaim]] = []
    while free > 0 and active:
        share = max(1, free // len(active))
        for registry in list(active):
            got = registry.claim(conn, min(share, free), holder)
            claimed.extend((registry, model_id, started) for model_id, started in got)
            free -= len(got)
            if len(got) < share:
                active.remove(registry)
            if free <= 0:
                break
    return claimed


class SchedulerLoop:
    """Claims work for blobs and repositories and runs it on thread pools."""

    name = "scheduler"
    #: It claims nothing while the primary or the main database is away (`Worker._round`).
    needs = (PRIMARY, MAIN_DATABASE)

    def __init__(self, geo: Geo, worker: Worker) -> None:
        self.geo = geo
        self.worker = worker
        self.cancel = threading.Event()
        self.pools: dict[str, ThreadPoolExecutor] = {}
        #: The capacity groups of the catalog's replicators, each with its own slots and pool.
        self.groups = capacity_groups(geo.catalog)
        self.inflight: dict[str, int] = dict.fromkeys(self.groups, 0)
        self._lock = threading.Lock()
        self._offset = 0
        self._route: Route | None = None
        self._route_read = 0.0
        self._drained_at: dict[str, float | None] = {}
        #: Since when a group has had free slots, too few to claim for yet.
        self._gathering_since: dict[str, float] = {}
        self._empty_at: dict[type[Replicator], float] = {}
        self._fresh = False
        self._flags: dict[type[Replicator], bool] = {}
        self._flags_read = -FLAGS_TTL
        self.client = BlobClient()
        self.settler = Settler(geo)
        #: Small blobs of one replicator travel in batch requests (`geosync.wire`).
        self.batch_blobs = geo.settings.blob_batches
        #: Where batches write their files: creating and fsyncing small files is slow kernel
        #: work, better done side by side than one after the other.
        self.writers = (
            ThreadPoolExecutor(BATCH_WRITERS, thread_name_prefix="blob-writer")
            if BATCH_WRITERS
            else None
        )

    def run_once(self) -> float:
        """Claim and start as much work as the capacities allow (after writing the outcomes
        a tracking database outage kept back)."""
        self.settler.settle_kept()
        if self._fresh:
            self._fresh = False
            self._drained_at.clear()
            self._empty_at.clear()
        route = self._current_route()
        node = route.node
        if node is None:
            return self.geo.settings.poll_interval
        started = 0
        full = False
        wait = self.geo.settings.poll_interval
        for group in self.groups:
            capacity = capacity_of(node, group)
            delay = self._claim_delay(group, capacity)
            if delay > 0:
                wait = min(wait, delay)
                continue
            started_now = self._schedule(group, capacity)
            self._drained_at[group] = None if started_now else time.monotonic()
            started += started_now
            with self._lock:
                full = full or self.inflight[group] >= capacity
        self._offset += 1
        if started and not full:
            return 0.0
        return wait

    def _claim_delay(self, group: str, capacity: int) -> float:
        """Seconds until claiming for `group` is worth its queries; 0 when it is now.

        Claims come in groups, not one per finished sync: a round waits until a third of the
        slots are free, or until a free slot has waited `CLAIM_GATHER` for others. A round
        that found nothing is not repeated for a while either.
        """
        with self._lock:
            inflight = self.inflight[group]
        now = time.monotonic()
        free = capacity - inflight
        if free <= 0:
            self._gathering_since.pop(group, None)
            return self._recheck_after()
        if inflight and free < max(1, capacity // CLAIM_FRACTION):
            waited = now - self._gathering_since.setdefault(group, now)
            if waited < CLAIM_GATHER:
                return CLAIM_GATHER - waited
        drained_at = self._drained_at.get(group)
        if drained_at is not None and now - drained_at < self._recheck_after():
            return self._recheck_after() - (now - drained_at)
        self._gathering_since.pop(group, None)
        return 0.0

    def _recheck_after(self) -> float:
        return min(self.geo.settings.poll_interval, DRAINED_RECHECK)

    def _current_route(self) -> Route:
        """This node and the primary's URL, read again every `ROUTE_TTL` seconds: a round
        runs after every finished sync, and these change only when an operator edits a node."""
        now = time.monotonic()
        if self._route is None or self._route.node is None or now - self._route_read > ROUTE_TTL:
            node = self.geo.current_node()
            self._route = Route(self.geo.primary_internal_url() if node else "", node)
            self._route_read = now
        return self._route

    def _enabled(self, replicator: type[Replicator]) -> bool:
        """The replicator's flag, read for all replicators at most every `FLAGS_TTL` seconds;
        a blob type left to the object store's own replication counts as off."""
        now = time.monotonic()
        if now - self._flags_read > FLAGS_TTL:
            node = self._current_route().node
            with self.geo.main_reads() as main:
                storages = primary_object_storages(main)
                self._flags = {
                    r: flag_enabled(main, r)
                    and not (node is not None and left_to_store(node, r, storages))
                    for r in self.geo.catalog
                }
            self._flags_read = now
        return self._flags.get(replicator, False)

    def _schedule(self, group: str, capacity: int) -> int:
        replicators = [r for r in self.geo.catalog if r.capacity_setting == group]
        if not replicators or capacity <= 0:
            return 0
        enabled = [Registry(self.geo, r) for r in replicators if self._enabled(r)]
        now = time.monotonic()
        worth = [
            r
            for r in enabled
            if (empty_at := self._empty_at.get(r.replicator)) is None
            or now - empty_at >= DRAINED_RECHECK
        ]
        if not worth:
            return 0
        with self.geo.tracking() as conn:
            claims = claim_round_robin(
                conn, worth, capacity, self.worker.holder, self._offset, counted=enabled
            )
        claimed = {registry.replicator for registry, _, _ in claims}
        for registry in worth:
            if registry.replicator in claimed:
                self._empty_at.pop(registry.replicator, None)
            else:
                self._empty_at[registry.replicator] = now
        jobs = self._jobs(group, capacity, claims)
        # A batch reads its own records while its request is out; a sync alone gets them here.
        prefetch_missing([job[0] for job in jobs if len(job) == 1])
        for job in jobs:
            self._submit(group, capacity, job)
        return len(claims)

    def _submit(self, group: str, capacity: int, job: list[SyncService]) -> None:
        """Run `job` (one sync, or a batch of blobs) on the group's pool, counted in flight
        until it ends. A batch hands the items too large for it back here, as syncs of their
        own: counted twice for a moment, never not at all."""
        with self._lock:
            self.inflight[group] += len(job)
        pool = self._pool(group, capacity)
        release = _Release(self, group, len(job))
        run: Callable[[], object]
        if len(job) == 1:
            run = job[0].execute
        else:
            hand_off = partial(self._hand_off, group, capacity)
            batch = BatchSync(job, self.client, self.cancel, self.writers, hand_off, release)
            run = batch.execute
        try:
            future = pool.submit(run)
        except RuntimeError:  # the pool is shut down: the worker is stopping
            release(wake=False)
            raise
        future.add_done_callback(partial(self._done, release=release))

    def _hand_off(self, group: str, capacity: int, service: SyncService) -> None:
        try:
            self._submit(group, capacity, [service])
        except RuntimeError:  # stopping: the batch's own thread runs it (or fails it cleanly)
            service.execute()

    def _jobs(
        self,
        group: str,
        capacity: int,
        claims: list[tuple[Registry, int, SyncClaim]],
    ) -> list[list[SyncService]]:
        """The claimed syncs, as jobs for the pool: items of one replicator whose strategy
        batches go in one batch (a claim is at most the capacity), everything else alone.

        One batch at a time measured best: half-capacity batches paid the request, claim and
        settle costs twice as often without overlapping enough to make up for it.
        """
        by_replicator: dict[type[Replicator], list[SyncService]] = {}
        for registry, model_id, claim in claims:
            service = SyncService(
                self.geo,
                registry.replicator,
                model_id,
                claim,
                self.client,
                self.cancel,
                self._route,
                self.settler,
            )
            by_replicator.setdefault(registry.replicator, []).append(service)
        jobs: list[list[SyncService]] = []
        for replicator, services in by_replicator.items():
            batches = replicator.transfers_in_batches(self.geo.settings)
            size = max(1, capacity) if batches and self.batch_blobs else 1
            jobs.extend(services[i : i + size] for i in range(0, len(services), size))
        return jobs

    def _pool(self, group: str, capacity: int) -> ThreadPoolExecutor:
        pool = self.pools.get(group)
        if pool is None:
            prefix = f"sync-{group.removesuffix('_max_capacity')}"
            pool = ThreadPoolExecutor(max(1, capacity), thread_name_prefix=prefix)
            self.pools[group] = pool
        return pool

    def _done(self, future: Future[object], *, release: _Release) -> None:
        exc = future.exception()
        if isinstance(exc, OUTAGES):
            log.warning("sync thread failed", error=error_line(exc), error_class=type(exc).__name__)
        elif exc is not None:
            log.error("sync thread failed", exc_info=exc)
        release()

    def work_arrived(self) -> None:
        """Another loop made work (new events, recovered or failed rows): the next round looks
        at every queue again, even one found empty a moment ago. Called from other threads."""
        self._fresh = True

    def close(self) -> None:
        """Stop: let running syncs finish for a grace period, then interrupt the rest."""
        timer = threading.Timer(SHUTDOWN_GRACE, self.cancel.set)
        timer.start()
        for pool in self.pools.values():
            pool.shutdown(wait=True)
        timer.cancel()
        if self.writers is not None:
            self.writers.shutdown(wait=True)
        self.client.close()
        if self.settler.kept:
            # The rows stay `started` by this worker: once its lease expires, a worker's stuck
            # sweep recovers them.
            with contextlib.suppress(*OUTAGES):
                self.settler.settle_kept()


class StuckSweepLoop:
    """Takes over the work of dead workers (`geosync.secondary.takeover`) and removes what
    they left beside those rows' copies; fails stuck syncs.

    Its first round runs as the worker starts, not after the housekeeping pause: a worker that
    replaces a killed one finds the capacity taken by the dead one's rows until this round.
    """

    name = "stuck_sweep"
    STUCK_EVERY = timedelta(minutes=10)

    def __init__(self, geo: Geo, worker: Worker) -> None:
        self.geo = geo
        self.worker = worker
        self._last_stuck: datetime | None = None
        self.ttl = timedelta(seconds=geo.settings.lease_seconds)

    def run_once(self) -> float:
        """Take over dead workers' rows; every 10 minutes fail rows started too long ago and
        forget the liveness leases of workers long gone."""
        now = self.geo.clock.now()
        taken = take_over(self.geo)
        stuck = 0
        if self._last_stuck is None or now - self._last_stuck >= self.STUCK_EVERY:
            with self.geo.tracking() as conn:
                stuck = sum(Registry(self.geo, r).fail_stuck(conn) for r in self.geo.catalog)
                prune_liveness(conn, now - self.ttl)
            self._last_stuck = now
        if taken.sync_count or stuck:
            log.warning("recovered abandoned syncs", abandoned=taken.sync_count, timed_out=stuck)
            self.worker.notify(SchedulerLoop.name)
        if taken.verifications:
            self.worker.notify("secondary_verification")
        if taken.syncs:
            remove_leftovers(self.geo, taken.syncs)
        return min(self.geo.settings.poll_interval, self.ttl.total_seconds() / 3)
