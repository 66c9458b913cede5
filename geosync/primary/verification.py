"""The primary's verification: state rows backfilled, records checksummed, stale ones re-queued.

`PrimaryVerificationLoop` claims rounds of up to four batches of 10 within the primary node's
`verification_max_capacity`, checksums them (side by side when it has several threads), stores
each batch's results and publishes `checksum_succeeded`. `PrimaryVerificationSweepLoop` keeps
`<name>_states` in step with the model tables (`geosync.primary.backfill`), fails checksums
running for over 8 hours and re-queues checksums older than the node's
`minimum_reverification_interval`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from geosync.checksums import ChecksumResult, checksum_loaded
from geosync.db.held import HeldConnection
from geosync.events import publish_events, published_types
from geosync.flags import flag_enabled
from geosync.log import get_logger
from geosync.primary.backfill import StateBackfill

# Their home is `geosync.primary.backfill`; importing them from here still works.
from geosync.primary.backfill import backfill_all as backfill_all
from geosync.primary.backfill import backfill_range as backfill_range
from geosync.records import load_records
from geosync.replicator import CHECKSUM_SUCCEEDED
from geosync.verification import (
    REVERIFY_BATCH,
    Batch,
    Claim,
    Verifiable,
    claim_batches,
    lock_claims,
    primary_verifiable,
    verifiable_replicators,
)

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.nodes import Node
    from geosync.replicator import Replicator
    from geosync.worker import Worker

log = get_logger("primary_verification")

TIMEOUT_SWEEP_EVERY = timedelta(minutes=10)
REVERIFY_EVERY = timedelta(minutes=1)
SITE_TTL = 1.0
ROUND_BATCHES = 4


def primary_node(geo: Geo, conn: Connection) -> Node | None:
    """This site's node when it is the primary, else None (then nothing is verified here)."""
    node = geo.current_node(conn)
    return node if node is not None and node.primary else None


# -- checksumming ---------------------------------------------------------------------------------


def record_results(
    geo: Geo,
    conn: Connection,
    target: Verifiable,
    claims: list[Claim],
    results: list[ChecksumResult],
    published: Collection[type[Replicator]] | None = None,
) -> int:
    """Store each result (only where the claim still stands) and publish `checksum_succeeded`
    for the successes, in one transaction; returns how many succeeded.

    `published`: the types this site publishes events for, when the caller knows them (see
    `publish_events`).
    """
    replicator = target.replicator
    pairs = list(zip(claims, results, strict=True))
    unchanged = [
        (claim, result.checksum)
        for claim, result in pairs
        if result.checksum is not None and claim.previous_checksum in (None, result.checksum)
    ]
    succeeded = target.succeeded_many(conn, unchanged)
    done = {claim.model_record_id for claim, _checksum in unchanged}
    for claim, result in pairs:
        if claim.model_record_id not in done:
            settle_failure(conn, target, claim, result)
    if succeeded:
        publish_events(
            geo,
            conn,
            [
                (
                    replicator,
                    CHECKSUM_SUCCEEDED,
                    replicator(model_record_id=i, geo=geo).payload_for(CHECKSUM_SUCCEEDED),
                )
                for i in succeeded
            ],
            published=published,
        )
    return len(succeeded)


def settle_failure(
    conn: Connection, target: Verifiable, claim: Claim, result: ChecksumResult
) -> None:
    """Store a failed checksum if its claim still stands.

    A re-verification whose checksum differs from the last one fails too: the resource changed
    without an `updated` event. Immutable blobs keep their reference checksum, so a corrupted
    file keeps failing until it is restored; other types accept the new content on retry.
    """
    replicator = target.replicator
    failure = result.failure or "Checksum could not be calculated"
    if result.checksum is not None:
        failure = (
            "Checksum does not match the last verified checksum: the"
            f" {replicator.noun} changed without"
            f" an update (expected {claim.previous_checksum}, found {result.checksum})"
        )
    immutable = replicator.keeps_checksum()
    count = target.failed(
        conn, claim.model_record_id, claim.started_at, failure, keep_checksum=immutable
    )
    if count is not None:
        log.warning(
            "verification failed",
            replicable=replicator.replicable_name,
            id=claim.model_record_id,
            failure=failure,
            retry_count=count,
        )


def load_claimed(conn: Connection, replicator: type[Replicator], ids: list[int]) -> dict[int, Any]:
    """The model records of claimed `ids` (detached, by id; missing ones absent), read in
    `conn`'s transaction.
    """
    return load_records(conn, replicator.model, ids)


def verify_batch(
    geo: Geo,
    target: Verifiable,
    claims: list[Claim],
    pool: ThreadPoolExecutor | None = None,
    records: dict[int, Any] | None = None,
) -> int:
    """Checksum claimed records and record the outcomes; returns how many succeeded."""
    ids = [claim.model_record_id for claim in claims]
    if records is None:
        records = load_records(geo.main_engine, target.replicator.model, ids)
    results = checksum_loaded(geo, target.replicator, ids, records, pool)
    with geo.main() as conn:
        return record_results(geo, conn, target, claims, results)


@dataclass(frozen=True)
class SiteView:
    """What a busy loop reads about its site at most once a second: this node when it is the
    primary, the verifiable types whose flag is on, and the types it publishes events for.
    """

    read_at: float
    node: Node | None
    enabled: list[type[Replicator]]
    published: frozenset[type[Replicator]]


Work = list[tuple[Verifiable, list[Claim], dict[int, Any]]]


class PrimaryVerificationLoop:
    """Checksums pending and retry-due records of every verifiable type on the primary.

    A round claims up to `ROUND_BATCHES` batches of 10 in one transaction, within the node's
    capacity, and stores each batch's results in a transaction of its own. With several threads
    the batches are shared among lanes (at most `ROUND_BATCHES`) that run side by side, each
    storing over its own connection, so one lane's round trips to the database overlap another
    lane's hashing. A round of a single batch hashes its files on the thread pool instead, so a
    few large files still use every core.
    """

    name = "primary_verification"

    def __init__(
        self, geo: Geo, worker: Worker | None = None, *, threads: int | None = None
    ) -> None:
        self.geo = geo
        self.worker = worker
        size = threads or os.cpu_count() or 1
        # One thread hashes inline: a pool would only add a hand-off per file.
        self.pool = ThreadPoolExecutor(size, thread_name_prefix="checksum") if size > 1 else None
        self._offset = 0
        self._held = HeldConnection(geo.main_engine)
        # Lane 0 is the calling thread on the claiming connection; the others have their own.
        lanes = min(size, ROUND_BATCHES) - 1
        self._lanes = [HeldConnection(geo.main_engine) for _ in range(lanes)]
        self._lane_pool = ThreadPoolExecutor(lanes, thread_name_prefix="lane") if lanes else None
        self._view: SiteView | None = None

    def run_once(self) -> float:
        """Claim one round of batches, checksum them, store the results."""
        poll = self.geo.settings.poll_interval
        with self._held.transaction() as conn:
            view = self._site(conn)
            if view.node is None:
                return poll
            lock_claims(conn, "primary")
            capacity = view.node.verification_max_capacity
            every = [primary_verifiable(self.geo, r) for r in verifiable_replicators(self.geo)]
            targets = self._rotated(view.enabled)
            batches = claim_batches(conn, capacity, every, targets, ROUND_BATCHES)
            work = self._load(conn, batches)
        if len(work) == 1:
            self._verify(self._held, work, self.pool, view.published)
        elif work:
            self._verify_in_lanes(work, view.published)
        self._offset += 1
        return 0.0 if batches else poll

    def _verify(
        self,
        held: HeldConnection,
        batches: list[Work],
        pool: ThreadPoolExecutor | None,
        published: frozenset[type[Replicator]],
    ) -> None:
        """Checksum `batches` one after the other, storing each one's results over `held`."""
        for batch in batches:
            for target, claims, records in batch:
                ids = [claim.model_record_id for claim in claims]
                results = checksum_loaded(self.geo, target.replicator, ids, records, pool)
                with held.transaction() as conn:
                    record_results(self.geo, conn, target, claims, results, published)

    def _verify_in_lanes(self, work: list[Work], published: frozenset[type[Replicator]]) -> None:
        """Share the batches among the lanes, the first lane in this thread; returns (or raises
        the first error) only when every lane is done, so no lane's connection is left busy.
        """
        lanes = [self._held, *self._lanes]
        shares = [work[index :: len(lanes)] for index in range(len(lanes))]
        futures = []
        if self._lane_pool is not None:
            futures = [
                self._lane_pool.submit(self._verify, lane, share, None, published)
                for lane, share in zip(lanes[1:], shares[1:], strict=True)
                if share
            ]
        try:
            self._verify(self._held, shares[0], None, published)
        finally:
            errors = [future.exception() for future in futures]
        for error in errors:
            if error is not None:
                raise error

    def _load(self, conn: Connection, batches: list[Batch]) -> list[Work]:
        """The claimed records of every batch, read with one query per type."""
        wanted: dict[type[Replicator], list[int]] = {}
        for batch in batches:
            for target, claims in batch:
                wanted.setdefault(target.replicator, []).extend(c.model_record_id for c in claims)
        records = {r: load_claimed(conn, r, ids) for r, ids in wanted.items()}
        return [
            [(target, claims, records[target.replicator]) for target, claims in batch]
            for batch in batches
        ]

    def _site(self, conn: Connection) -> SiteView:
        """The site as read at most a second ago.

        A changed capacity, flag or set of nodes takes effect within a second, and a busy loop
        does not spend queries per batch on them.
        """
        now = time.monotonic()
        if self._view is None or now - self._view.read_at >= SITE_TTL:
            node = primary_node(self.geo, conn)
            enabled = [r for r in verifiable_replicators(self.geo) if flag_enabled(conn, r)]
            published = published_types(self.geo, conn, enabled) if node is not None else set()
            self._view = SiteView(now, node, enabled, frozenset(published))
        return self._view

    def _rotated(self, replicators: list[type[Replicator]]) -> list[Verifiable]:
        """The enabled types in this round's turn order."""
        if replicators:
            turn = self._offset % len(replicators)
            replicators = replicators[turn:] + replicators[:turn]
        return [primary_verifiable(self.geo, r) for r in replicators]

    def close(self) -> None:
        """Let running checksums finish, then close the loop's connections."""
        for executor in (self.pool, self._lane_pool):
            if executor is not None:
                executor.shutdown(wait=True)
        for held in (self._held, *self._lanes):
            held.close()


# -- sweeps ---------------------------------------------------------------------------------------


def fail_timed_out(geo: Geo, conn: Connection) -> int:
    """Fail every checksum started more than 8 hours ago; returns how many."""
    return sum(
        len(primary_verifiable(geo, r).fail_timed_out(conn)) for r in verifiable_replicators(geo)
    )


def requeue_stale(geo: Geo, conn: Connection, node: Node, replicator: type[Replicator]) -> int:
    """Re-queue up to 1,000 succeeded records verified longer ago than the node's interval."""
    cutoff = geo.clock.now() - timedelta(days=node.minimum_reverification_interval)
    return primary_verifiable(geo, replicator).requeue_stale(conn, cutoff, REVERIFY_BATCH)


class PrimaryVerificationSweepLoop:
    """Backfills state rows, fails timed-out checksums, re-queues stale ones (on the primary).

    A round runs every `poll_interval`, so a record written without an event (bulk SQL) gets
    its state row, and then its checksum, within seconds (`geosync.primary.backfill`).
    """

    name = "primary_verification_sweep"

    def __init__(self, geo: Geo, worker: Worker | None = None) -> None:
        self.geo = geo
        self.worker = worker
        self.backfill = StateBackfill(geo)
        self._last: dict[str, datetime] = {}

    def run_once(self) -> float:
        """One round: backfill state rows; sweep timeouts and re-verify when due."""
        with self.geo.main_engine.connect() as conn:
            node = primary_node(self.geo, conn)
            enabled = [r for r in verifiable_replicators(self.geo) if flag_enabled(conn, r)]
        if node is None:
            return self.geo.settings.poll_interval
        busy = any([self._backfill(r) for r in enabled])
        if self._due("timeouts", TIMEOUT_SWEEP_EVERY):
            with self.geo.main() as conn:
                timed_out = fail_timed_out(self.geo, conn)
            if timed_out:
                log.warning("verification timed out", count=timed_out)
        if self._due("reverify", REVERIFY_EVERY):
            with self.geo.main() as conn:
                requeued = sum(requeue_stale(self.geo, conn, node, r) for r in enabled)
            if requeued:
                log.info("re-queued stale checksums", count=requeued)
                self._wake()
        return 0.0 if busy else self.geo.settings.poll_interval

    def _backfill(self, replicator: type[Replicator]) -> bool:
        """One backfill round of one replicator; True while more is waiting."""
        done = self.backfill.run(replicator)
        if done.added_new or done.changed_by_walk:
            log.info(
                "backfilled verification states",
                replicable=replicator.replicable_name,
                new_records=done.added_new,
                changed=done.changed_by_walk,
            )
            self._wake()
        return done.more

    def _due(self, what: str, every: timedelta) -> bool:
        now = self.geo.clock.now()
        last = self._last.get(what)
        if last is not None and now - last < every:
            return False
        self._last[what] = now
        return True

    def _wake(self) -> None:
        if self.worker is not None:
            self.worker.notify(PrimaryVerificationLoop.name)
