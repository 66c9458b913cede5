"""The primary's verification: state rows backfilled, records checksummed, stale ones re-queued.

`PrimaryVerificationLoop` runs the verification pipeline (`geosync.pipeline`) within the primary
node's `verification_max_capacity`: one batch is hashed while the previous one's results are
stored (and `checksum_succeeded` published) in the transaction that claims the next.
`PrimaryVerificationSweepLoop` keeps `<name>_states` in step with the model tables
(`geosync.primary.backfill`), fails checksums running for over 8 hours and re-queues checksums
older than the node's
`minimum_reverification_interval`.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from geosync.checksums import ChecksumResult, Hashers, PendingChecksums, checksum_loaded
from geosync.db.held import HeldConnection
from geosync.events import publish_events, published_types
from geosync.flags import flag_enabled
from geosync.log import get_logger
from geosync.pipeline import Pipeline
from geosync.primary.backfill import StateBackfill

# Their home is `geosync.primary.backfill`; importing them from here still works.
from geosync.primary.backfill import backfill_all as backfill_all
from geosync.primary.backfill import backfill_range as backfill_range
from geosync.records import load_records
from geosync.replicator import CHECKSUM_SUCCEEDED
from geosync.verification import (
    REVERIFY_BATCH,
    Claim,
    Failure,
    Verifiable,
    claim_next,
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
#: Batches one round claims at most; rows in flight stay within the capacity throughout.
ROUND_BATCHES = 8


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
    settle_failures(conn, target, [(c, r) for c, r in pairs if c.model_record_id not in done])
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
            ids=False,
        )
    return len(succeeded)


def settle_failure(
    conn: Connection, target: Verifiable, claim: Claim, result: ChecksumResult
) -> None:
    """Store a failed checksum if its claim still stands (see `settle_failures`)."""
    settle_failures(conn, target, [(claim, result)])


def settle_failures(
    conn: Connection, target: Verifiable, failures: list[tuple[Claim, ChecksumResult]]
) -> None:
    """Store failed checksums whose claims still stand, in one `failed_many`.

    A re-verification whose checksum differs from the last one fails too: the resource changed
    without an `updated` event. Immutable blobs keep their reference checksum, so a corrupted
    file keeps failing until it is restored; other types accept the new content on retry.
    """
    if not failures:
        return
    replicator = target.replicator
    rows = []
    for claim, result in failures:
        failure = result.failure or "Checksum could not be calculated"
        if result.checksum is not None:
            failure = (
                "Checksum does not match the last verified checksum: the"
                f" {replicator.noun} changed without"
                f" an update (expected {claim.previous_checksum}, found {result.checksum})"
            )
        rows.append(Failure(claim, failure))
    counts = target.failed_many(conn, rows, keep_checksum=replicator.keeps_checksum())
    for row in rows:
        count = counts.get(row.claim.model_record_id)
        if count is not None:
            log.warning(
                "verification failed",
                replicable=replicator.replicable_name,
                id=row.claim.model_record_id,
                failure=row.failure,
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


#: A claimed batch with its records: (type, claims, records by id) per type in the batch.
Work = list[tuple[Verifiable, list[Claim], dict[int, Any]]]


class BatchChecksums:
    """The checksums of every type in one claimed batch, being computed."""

    def __init__(self, parts: list[PendingChecksums]) -> None:
        self.parts = parts

    def results(self) -> list[list[ChecksumResult]]:
        """Each type's checksums, in the batch's order (waits for them)."""
        return [part.results() for part in self.parts]


class PrimaryVerificationLoop:
    """Checksums pending and retry-due records of every verifiable type on the primary.

    A round runs the verification pipeline (`geosync.pipeline`) over batches of half the
    node's `verification_max_capacity` (up to 100 rows): each transaction on the loop's held
    connection stores one batch's results and publishes `checksum_succeeded`, claims the next
    batch and loads its records, while the batch claimed before it is hashed on `Hashers`'
    threads. A round claims at most the capacity's worth of rows, so a changed capacity or flag
    takes effect within a round.
    """

    name = "primary_verification"

    def __init__(
        self, geo: Geo, worker: Worker | None = None, *, threads: int | None = None
    ) -> None:
        self.geo = geo
        self.worker = worker
        self.hashers = Hashers(threads)
        #: The hashers' thread pool (None with one thread: files are hashed inline).
        self.pool: ThreadPoolExecutor | None = self.hashers.pool
        self._offset = 0
        self._held = HeldConnection(geo.main_engine)
        self._view: SiteView | None = None

    def run_once(self) -> float:
        """One round of the pipeline: claim, checksum and store batches until none is left
        (or the round has claimed the capacity's worth)."""
        round_ = _Round(self)
        Pipeline(self._held.transaction, round_.claim, round_.start, round_.settle).run()
        self._offset += 1
        return 0.0 if round_.claimed else self.geo.settings.poll_interval

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
        """Let running checksums finish, then close the loop's connection."""
        self.hashers.close()
        self._held.close()


class _Round:
    """One round of `PrimaryVerificationLoop`: the pipeline's claim, start and settle."""

    def __init__(self, loop: PrimaryVerificationLoop) -> None:
        self.loop = loop
        self.geo = loop.geo
        self.claimed = 0
        self.batches = 0
        self.view: SiteView | None = None
        self._settled_here = False

    def claim(self, conn: Connection) -> Work | None:
        """The next batch and its records, read in the claim's transaction."""
        view = self.view = self.view or self.loop._site(conn)
        if view.node is None:
            return None
        capacity = view.node.verification_max_capacity
        if self.batches >= ROUND_BATCHES:
            return None  # the round has had its share: flags and capacity are read again
        lock_claims(conn, "primary", claims_only=not self._settled_here)
        self._settled_here = False
        every = [primary_verifiable(self.geo, r) for r in verifiable_replicators(self.geo)]
        targets = self.loop._rotated(view.enabled)
        batch = claim_next(conn, capacity, every, targets)
        if not batch:
            return None if batch is None else []
        self.batches += 1
        self.claimed += sum(len(claims) for _target, claims in batch)
        return [
            (target, claims, load_claimed(conn, target.replicator, _ids(claims)))
            for target, claims in batch
        ]

    def start(self, work: Work) -> BatchChecksums:
        """Start hashing the batch's files on the loop's threads."""
        hashers = self.loop.hashers
        return BatchChecksums(
            [
                hashers.start(self.geo, target.replicator, _ids(claims), records)
                for target, claims, records in work
            ]
        )

    def settle(self, conn: Connection, work: Work, pending: BatchChecksums) -> None:
        """Store the batch's results and publish its `checksum_succeeded` events."""
        assert self.view is not None
        published = self.view.published
        for (target, claims, _records), results in zip(work, pending.results(), strict=True):
            record_results(self.geo, conn, target, claims, results, published)
        self._settled_here = True


def _ids(claims: list[Claim]) -> list[int]:
    return [claim.model_record_id for claim in claims]


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
