"""A secondary's verification: prove each synced copy against the primary's checksum.

Only synced registries are verified, and only when the primary has a checksum (otherwise the
row's verification is disabled until `checksum_succeeded` arrives). A copy that differs — or
cannot be read — fails verification and the registry's sync, with the verification retry count,
so the scheduler downloads it again and mismatches that keep coming back keep backing off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from geosync.attempts import Attempt, record_attempts
from geosync.checksums import ChecksumResult, Hashers, PendingChecksums, checksum_loaded
from geosync.db.held import HeldConnection
from geosync.flags import flag_enabled
from geosync.log import get_logger
from geosync.loops import HOUSEKEEPING_START
from geosync.object_sync import left_to_store, primary_object_storages
from geosync.pipeline import Pipeline
from geosync.registry import Registry, RegistryRow
from geosync.secondary.reachability import MAIN_DATABASE
from geosync.verification import (
    MISMATCH_FAILURE,
    Batch,
    Claim,
    Failure,
    RoundClaims,
    Verifiable,
    lock_claims,
    primary_checksum,
    read_registry_batch,
    registry_verifiable,
    verifiable_replicators,
)

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.replicator import Replicator
    from geosync.worker import Worker

log = get_logger("secondary_verification")
#: Called with the ids whose verification failed, in the transaction that stored it.
FailedHook = Callable[[Connection, list[int]], None]

TIMEOUT_SWEEP_EVERY = timedelta(minutes=10)
#: Batches one round claims at most (the node and the flags are read once per round).
ROUND_BATCHES = 8
NO_PRIMARY_CHECKSUM = "The primary has no checksum for this item yet"


def handle_checksum_succeeded(
    geo: Geo, conn_tracking: Connection, replicator: type[Replicator], model_record_id: int
) -> bool:
    """Called by the log cursor for `checksum_succeeded`: re-verify against the new checksum.

    Sets an existing registry's verification to pending; returns False when there is no row.
    """
    return handle_checksums_succeeded(geo, conn_tracking, replicator, [model_record_id]) == 1


def handle_checksums_succeeded(
    geo: Geo, conn_tracking: Connection, replicator: type[Replicator], ids: Sequence[int]
) -> int:
    """`handle_checksum_succeeded` for many records in one statement; returns how many rows
    exist (and had their verification re-queued)."""
    if not replicator.verification_enabled or not ids:
        return 0
    verifiable = registry_verifiable(geo, replicator)
    return verifiable.pending_where(conn_tracking, verifiable.key.in_(list(ids)))


def fail_sync_after_verification(
    geo: Geo,
    conn: Connection,
    replicator: type[Replicator],
    model_record_id: int,
    failure: str,
    retry_count: int,
) -> bool:
    """A synced copy failed verification: fail its sync so it is downloaded again.

    `retry_count` is the verification retry count, so repeated failures back off further.
    """
    registry = Registry(geo, replicator)
    failed = registry.fail_synced(
        conn, model_record_id, "Verification failed with", failure, retry_count
    )
    return failed is not None


# -- one batch ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """How one claimed copy compares with the primary."""

    claim: Claim
    outcome: str  # succeeded, failed or disabled
    checksum: str | None = None
    failure: str | None = None
    mismatched: str | None = None


def judge(claim: Claim, expected: str | None, result: ChecksumResult | None) -> Verdict:
    """Compare this site's checksum of a copy with the primary's."""
    if expected is None or result is None:
        return Verdict(claim, "disabled")
    if result.checksum is None:
        return Verdict(
            claim, "failed", failure=result.failure or "Checksum could not be calculated"
        )
    if result.checksum != expected:
        return Verdict(claim, "failed", failure=MISMATCH_FAILURE, mismatched=result.checksum)
    return Verdict(claim, "succeeded", checksum=result.checksum)


def verify_registry_batch(
    geo: Geo,
    target: Verifiable,
    claims: list[Claim],
    pool: ThreadPoolExecutor | None = None,
    *,
    main: HeldConnection | None = None,
    tracking: HeldConnection | None = None,
    on_failed: FailedHook | None = None,
) -> dict[str, int]:
    """Checksum claimed copies, compare, settle each row; returns counts per outcome.

    A loop passes the connections it holds; otherwise the batch opens and closes its own.
    `on_failed` is called in the transaction that stored the verdicts, with the ids whose
    verification failed (the scrub notes them before anything can resync them).
    """
    main_held = main or HeldConnection(geo.main_engine, reads=True)
    tracking_held = tracking or HeldConnection(geo.tracking_engine)
    try:
        ids = [claim.model_record_id for claim in claims]
        with main_held.transaction() as conn:
            records, expected = read_registry_batch(geo, conn, target.replicator, ids)
        computed = checksum_loaded(geo, target.replicator, list(records), records, pool)
        verdicts = judge_batch(claims, expected, computed)
        with tracking_held.transaction() as conn:
            return settle_verdicts(geo, conn, target, verdicts, on_failed)
    finally:
        if main is None:
            main_held.close()
        if tracking is None:
            tracking_held.close()


def judge_batch(
    claims: list[Claim], expected: dict[int, str], computed: list[ChecksumResult]
) -> list[Verdict]:
    """Each claim's verdict: its copy's checksum (`computed`; hashed only where the primary
    has one) against the primary's (`expected`)."""
    results = {result.model_record_id: result for result in computed}
    return [
        judge(claim, expected.get(claim.model_record_id), results.get(claim.model_record_id))
        for claim in claims
    ]


def settle_verdicts(
    geo: Geo,
    conn: Connection,
    target: Verifiable,
    verdicts: list[Verdict],
    on_failed: FailedHook | None = None,
) -> dict[str, int]:
    """Store a batch's verdicts where their claims still stand; returns counts per outcome.

    Set-wise: one statement for the successes, one for the disabled rows, two for the
    failures (each of which also fails its sync), one insert for the attempt rows.
    `on_failed` gets the ids whose failed verification was stored, in this transaction.
    """
    by_outcome: dict[str, list[Verdict]] = {"succeeded": [], "failed": [], "disabled": []}
    for verdict in verdicts:
        by_outcome[verdict.outcome].append(verdict)
    done = set(
        target.succeeded_many(conn, [(v.claim, v.checksum or "") for v in by_outcome["succeeded"]])
    )
    done.update(target.disabled_many(conn, [v.claim for v in by_outcome["disabled"]]))
    failed = _settle_failed(geo, conn, target, by_outcome["failed"])
    done.update(failed)
    settled = [v for v in verdicts if v.claim.model_record_id in done]
    record_attempts(conn, [_attempt(geo, target, verdict) for verdict in settled])
    if failed and on_failed is not None:
        on_failed(conn, failed)
    counts = {"succeeded": 0, "failed": 0, "disabled": 0}
    for verdict in settled:
        counts[verdict.outcome] += 1
    return counts


def _settle_failed(
    geo: Geo, conn: Connection, target: Verifiable, verdicts: list[Verdict]
) -> list[int]:
    """Store failed verdicts and fail their syncs; returns the ids stored, in order."""
    failures = [Failure(v.claim, v.failure or MISMATCH_FAILURE, v.mismatched) for v in verdicts]
    counts = target.failed_many(conn, failures)
    stored = []
    for verdict, failure in zip(verdicts, failures, strict=True):
        model_record_id = verdict.claim.model_record_id
        count = counts.get(model_record_id)
        if count is None:
            continue
        stored.append(model_record_id)
        fail_sync_after_verification(
            geo, conn, target.replicator, model_record_id, failure.failure, count
        )
        log.warning(
            "verification failed",
            replicable=target.replicator.replicable_name,
            id=model_record_id,
            failure=failure.failure,
            local_checksum=verdict.mismatched,
        )
    return stored


def settle(geo: Geo, conn: Connection, target: Verifiable, verdict: Verdict) -> bool:
    """Store one verdict if its claim still stands; a failure also fails the sync."""
    counts = settle_verdicts(geo, conn, target, [verdict])
    return counts[verdict.outcome] == 1


def _attempt(geo: Geo, target: Verifiable, verdict: Verdict) -> Attempt:
    error_class = None
    message = None
    if verdict.outcome == "failed":
        error_class = "checksum_mismatch" if verdict.mismatched else "unknown"
        message = verdict.failure
    elif verdict.outcome == "disabled":
        message = NO_PRIMARY_CHECKSUM
    return Attempt(
        target.replicator.replicable_name,
        verdict.claim.model_record_id,
        "verification",
        verdict.claim.started_at,
        geo.clock.now(),
        verdict.outcome,
        error_class,
        message,
    )


def fail_timed_out(geo: Geo, conn: Connection) -> int:
    """Fail verifications started more than 8 hours ago (and their syncs); returns how many."""
    failure = "Verification timed out after 8 hours"
    count = 0
    for replicator in verifiable_replicators(geo):
        timed_out = registry_verifiable(geo, replicator).fail_timed_out(conn)
        for model_record_id, retries in timed_out:
            fail_sync_after_verification(geo, conn, replicator, model_record_id, failure, retries)
        count += len(timed_out)
    return count


# -- the loop -------------------------------------------------------------------------------------


class SecondaryVerificationLoop:
    """Verifies synced copies of every verifiable type within `verification_max_capacity`.

    A round runs the verification pipeline (`geosync.pipeline`) over batches of half the
    capacity (up to 100 rows): each tracking transaction stores one batch's verdicts, attempt
    rows and failed syncs and claims the next batch; the next batch's records and the primary's
    checksums are then read in one query on a held read connection, and its copies hashed on
    `Hashers`' threads while the batch before it is settled. At most two batches are in flight,
    so the started rows stay within the capacity; a round ends after `ROUND_BATCHES` batches.
    """

    name = "secondary_verification"
    #: It reads the primary's checksums: paused while the main database is away.
    needs = (MAIN_DATABASE,)
    start_after = HOUSEKEEPING_START

    def __init__(
        self, geo: Geo, worker: Worker | None = None, *, threads: int | None = None
    ) -> None:
        self.geo = geo
        self.worker = worker
        #: Who claims: a dead worker's verifications are taken over by name (`claimed_by`).
        self._holder = worker.holder if worker is not None else None
        self.hashers = Hashers(threads, name="verify")
        self._offset = 0
        self._last_sweep: datetime | None = None
        self._main = HeldConnection(geo.main_engine, reads=True)
        self._tracking = HeldConnection(geo.tracking_engine)

    def run_once(self) -> float:
        """One round of the pipeline; sweep timeouts every 10 minutes."""
        poll = self.geo.settings.poll_interval
        with self._main.transaction() as main:
            node = self.geo.current_node(main)
            if node is None or node.primary:
                return poll
            storages = primary_object_storages(main)
            replicators = [
                r
                for r in verifiable_replicators(self.geo)
                if flag_enabled(main, r) and not left_to_store(node, r, storages)
            ]
        targets = self._rotated([registry_verifiable(self.geo, r) for r in replicators])
        every = [registry_verifiable(self.geo, r) for r in verifiable_replicators(self.geo)]
        round_ = _Round(self, node.verification_max_capacity, every, targets)
        Pipeline(self._tracking.transaction, round_.claim, round_.start, round_.settle).run()
        self._sweep()
        if round_.failed and self.worker is not None:
            self.worker.notify("scheduler")  # failed syncs are work for the scheduler
        return 0.0 if round_.claimed else poll

    def _rotated(self, targets: list[Verifiable]) -> list[Verifiable]:
        self._offset += 1
        if not targets:
            return targets
        turn = self._offset % len(targets)
        return targets[turn:] + targets[:turn]

    def _sweep(self) -> None:
        now = self.geo.clock.now()
        if self._last_sweep is not None and now - self._last_sweep < TIMEOUT_SWEEP_EVERY:
            return
        self._last_sweep = now
        with self._tracking.transaction() as conn:
            count = fail_timed_out(self.geo, conn)
        if count:
            log.warning("verification timed out", count=count)

    def close(self) -> None:
        """Let running checksums finish, then close the loop's connections."""
        self.hashers.close()
        self._main.close()
        self._tracking.close()


#: A claimed batch of copies: per type, its claims and the primary's checksums of them.
Copies = list[tuple[Verifiable, list[Claim], dict[int, str]]]


class CopyChecksums:
    """One claimed batch's copies (per type: its claims and the primary's checksums) and
    their checksums, being computed."""

    def __init__(self, copies: Copies, parts: list[PendingChecksums]) -> None:
        self.copies = copies
        self.parts = parts

    def results(self) -> list[list[ChecksumResult]]:
        """Each type's checksums (waits for them)."""
        return [part.results() for part in self.parts]


class _Round:
    """One round of `SecondaryVerificationLoop`: the pipeline's claim, start and settle."""

    def __init__(
        self,
        loop: SecondaryVerificationLoop,
        capacity: int,
        every: list[Verifiable],
        targets: list[Verifiable],
    ) -> None:
        self.loop = loop
        self.geo = loop.geo
        self.capacity = capacity
        self.every = every
        self.targets = targets
        self.claimed = 0
        self.batches = 0
        self.failed = 0
        self._settled_here = False
        self._claims = RoundClaims(capacity, every, targets, loop._holder)

    def claim(self, conn: Connection) -> Batch | None:
        """The next batch, claimed in the transaction that settled the one before."""
        if self.batches >= ROUND_BATCHES:
            return None  # the round has had its share: the node and flags are read again
        lock_claims(conn, "secondary", claims_only=not self._settled_here)
        self._settled_here = False
        batch = self._claims.next(conn)
        if batch:
            self.batches += 1
            self.claimed += sum(len(claims) for _target, claims in batch)
        return batch

    def start(self, batch: Batch) -> CopyChecksums:
        """Read the batch's records and the primary's checksums, start hashing the copies."""
        hashers = self.loop.hashers
        with self.loop._main.transaction() as main:
            loaded = [
                read_registry_batch(self.geo, main, target.replicator, _ids(claims))
                for target, claims in batch
            ]
        copies: Copies = []
        parts = []
        for (target, claims), (records, expected) in zip(batch, loaded, strict=True):
            copies.append((target, claims, expected))
            parts.append(hashers.start(self.geo, target.replicator, list(records), records))
        return CopyChecksums(copies, parts)

    def settle(self, conn: Connection, batch: Batch, pending: CopyChecksums) -> None:
        """Store the batch's verdicts (and fail the syncs of bad copies)."""
        for (target, claims, expected), computed in zip(
            pending.copies, pending.results(), strict=True
        ):
            verdicts = judge_batch(claims, expected, computed)
            self.failed += settle_verdicts(self.geo, conn, target, verdicts)["failed"]
        self._settled_here = True


def _ids(claims: list[Claim]) -> list[int]:
    return [claim.model_record_id for claim in claims]


# -- skip-download ------------------------------------------------------------------------------


def skip_download_checksum(
    geo: Geo,
    main_conn: Connection,
    replicator: type[Replicator],
    model_record_id: int,
    registry_row: RegistryRow,
) -> str | None:
    """The checksum to mark the row synced and verified with, when no download is needed;
    None when the file must be downloaded.
    """
    expected = primary_checksum(geo, main_conn, replicator, model_record_id)
    if expected is None:
        return None
    record: Any = geo.load_record(replicator.model, model_record_id)
    if record is None:
        return None
    skip = replicator(record, geo=geo).can_skip_download(registry_row, expected)
    return expected if skip else None
