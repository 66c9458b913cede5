"""A secondary's verification: prove each synced copy against the primary's checksum.

Only synced registries are verified, and only when the primary has a checksum (otherwise the
row's verification is disabled until `checksum_succeeded` arrives). A copy that differs — or
cannot be read — fails verification and the registry's sync, with the verification retry count,
so the scheduler downloads it again and mismatches that keep coming back keep backing off.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from geosync.attempts import Attempt, record_attempt
from geosync.checksums import ChecksumResult, checksum_loaded
from geosync.db.held import HeldConnection
from geosync.flags import flag_enabled
from geosync.log import get_logger
from geosync.loops import HOUSEKEEPING_START
from geosync.records import load_records
from geosync.registry import Registry, RegistryRow
from geosync.secondary.reachability import MAIN_DATABASE
from geosync.verification import (
    MISMATCH_FAILURE,
    Claim,
    Verifiable,
    claim_within,
    lock_claims,
    primary_checksum,
    primary_checksums,
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
NO_PRIMARY_CHECKSUM = "The primary has no checksum for this item yet"


def handle_checksum_succeeded(
    geo: Geo, conn_tracking: Connection, replicator: type[Replicator], model_record_id: int
) -> bool:
    """Called by the log cursor for `checksum_succeeded`: re-verify against the new checksum.

    Sets an existing registry's verification to pending; returns False when there is no row.
    """
    if not replicator.verification_enabled:
        return False
    return registry_verifiable(geo, replicator).pending(conn_tracking, model_record_id)


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
    main_held = main or HeldConnection(geo.main_engine)
    tracking_held = tracking or HeldConnection(geo.tracking_engine)
    try:
        return _verify(geo, target, claims, pool, main_held, tracking_held, on_failed)
    finally:
        if main is None:
            main_held.close()
        if tracking is None:
            tracking_held.close()


def _verify(
    geo: Geo,
    target: Verifiable,
    claims: list[Claim],
    pool: ThreadPoolExecutor | None,
    main: HeldConnection,
    tracking: HeldConnection,
    on_failed: FailedHook | None = None,
) -> dict[str, int]:
    replicator = target.replicator
    ids = [claim.model_record_id for claim in claims]
    with main.transaction() as conn:
        expected = primary_checksums(geo, conn, replicator, ids)
        # Hash only what can be compared: without a primary checksum the row is disabled.
        records = load_records(conn, replicator.model, [i for i in ids if i in expected])
    computed = checksum_loaded(geo, replicator, list(records), records, pool)
    results = {result.model_record_id: result for result in computed}
    verdicts = [
        judge(claim, expected.get(claim.model_record_id), results.get(claim.model_record_id))
        for claim in claims
    ]
    counts = {"succeeded": 0, "failed": 0, "disabled": 0}
    failed: list[int] = []
    with tracking.transaction() as conn:
        for verdict in verdicts:
            if settle(geo, conn, target, verdict):
                counts[verdict.outcome] += 1
                if verdict.outcome == "failed":
                    failed.append(verdict.claim.model_record_id)
        if failed and on_failed is not None:
            on_failed(conn, failed)
    return counts


def settle(geo: Geo, conn: Connection, target: Verifiable, verdict: Verdict) -> bool:
    """Store one verdict if its claim still stands; a failure also fails the sync."""
    claim = verdict.claim
    model_record_id = claim.model_record_id
    if verdict.outcome == "succeeded":
        assert verdict.checksum is not None
        done = target.succeeded(conn, model_record_id, claim.started_at, verdict.checksum)
    elif verdict.outcome == "disabled":
        done = target.disabled(conn, model_record_id, claim.started_at)
    else:
        failure = verdict.failure or MISMATCH_FAILURE
        count = target.failed(
            conn, model_record_id, claim.started_at, failure, mismatched=verdict.mismatched
        )
        done = count is not None
        if count is not None:
            fail_sync_after_verification(
                geo, conn, target.replicator, model_record_id, failure, count
            )
            log.warning(
                "verification failed",
                replicable=target.replicator.replicable_name,
                id=model_record_id,
                failure=failure,
                local_checksum=verdict.mismatched,
            )
    if done:
        _record(geo, conn, target, verdict)
    return done


def _record(geo: Geo, conn: Connection, target: Verifiable, verdict: Verdict) -> None:
    error_class = None
    message = None
    if verdict.outcome == "failed":
        error_class = "checksum_mismatch" if verdict.mismatched else "unknown"
        message = verdict.failure
    elif verdict.outcome == "disabled":
        message = NO_PRIMARY_CHECKSUM
    record_attempt(
        conn,
        Attempt(
            target.replicator.replicable_name,
            verdict.claim.model_record_id,
            "verification",
            verdict.claim.started_at,
            geo.clock.now(),
            verdict.outcome,
            error_class,
            message,
        ),
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
    """Verifies synced copies of every verifiable type within `verification_max_capacity`."""

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
        self.pool = ThreadPoolExecutor(threads or os.cpu_count() or 1, thread_name_prefix="verify")
        self._offset = 0
        self._last_sweep: datetime | None = None
        self._main = HeldConnection(geo.main_engine)
        self._tracking = HeldConnection(geo.tracking_engine)

    def run_once(self) -> float:
        """Claim one round of batches, verify them; sweep timeouts every 10 minutes."""
        poll = self.geo.settings.poll_interval
        with self._main.transaction() as main:
            node = self.geo.current_node(main)
            if node is None or node.primary:
                return poll
            replicators = [r for r in verifiable_replicators(self.geo) if flag_enabled(main, r)]
        targets = self._rotated([registry_verifiable(self.geo, r) for r in replicators])
        every = [registry_verifiable(self.geo, r) for r in verifiable_replicators(self.geo)]
        with self._tracking.transaction() as conn:
            lock_claims(conn, "secondary")
            batches = claim_within(
                conn, node.verification_max_capacity, every, targets, self._holder
            )
        failed = 0
        for target, claims in batches:
            counts = verify_registry_batch(
                self.geo, target, claims, self.pool, main=self._main, tracking=self._tracking
            )
            failed += counts["failed"]
        self._sweep()
        if failed and self.worker is not None:
            self.worker.notify("scheduler")  # failed syncs are work for the scheduler
        return 0.0 if batches else poll

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
        self.pool.shutdown(wait=True)
        self._main.close()
        self._tracking.close()


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
