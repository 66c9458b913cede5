"""Settling finished syncs: their registry rows and attempt history, in group commits.

Every finished sync must write its outcome to the tracking database. One transaction per sync
caps a secondary at the rate its database commits (and on SQLite, every sync thread queues for
the one write lock). Instead, a thread that finishes a sync hands its outcome to the `Settler`:
the first thread to arrive writes everything queued in one transaction while the others wait
for their answer. A group that fails is retried one sync at a time, so one bad outcome cannot
sink the others.

An outcome that cannot be written because the tracking database is away (a restart, a cut
connection) is kept, and written when the scheduler's next round finds the database back
(`settle_kept`): its row is still `started` by this live worker, so nobody else would ever
settle it. The write is as conditional as the first one was: a row a newer event re-queued
meanwhile is not marked synced.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Connection
from sqlalchemy.exc import InterfaceError, OperationalError

from geosync.attempts import INTERRUPTED, PERMANENT, SITE_UNREACHABLE, Attempt, record_attempts
from geosync.db.engines import error_line
from geosync.errors import GeoError, PrimaryMissing
from geosync.log import get_logger
from geosync.registry import Registry, RegistryRow, SyncClaim, SyncedRow
from geosync.states import SyncState, VerificationState

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.secondary.transfer import Download

log = get_logger("settlement")

#: At most this many syncs share one transaction.
MAX_GROUP = 100
#: Errors that mean the tracking database is away, not that an outcome is wrong: such an
#: outcome is kept and written later.
DATABASE_AWAY = (OperationalError, InterfaceError)
#: Failures that are not the item's: its worker stopped (`interrupted`), or its site was away
#: (`site_unreachable`). The row goes back to where its claim found it, due, its count kept.
_NOT_THE_ITEMS_FAULT = (INTERRUPTED, SITE_UNREACHABLE)


@dataclass(frozen=True)
class Success:
    """What a successful sync established for its row."""

    local_path: str
    verification: VerificationState = VerificationState.DISABLED
    checksum: str | None = None
    missing_on_primary: bool = False
    bytes: int | None = None
    skipped_download: bool = False

    @classmethod
    def downloaded(cls, local_path: str, expected: str | None, download: Download) -> Success:
        """A blob written whole: verified when the primary had a checksum (the download
        refused to finish unless the bytes matched it)."""
        if expected is None:
            return cls(local_path, bytes=download.bytes)
        return cls(local_path, VerificationState.SUCCEEDED, download.sha256, bytes=download.bytes)

    @classmethod
    def skipped(cls, local_path: str, expected: str) -> Success:
        """The copy in place was taken as it is (§6's skip-download)."""
        return cls(local_path, VerificationState.SUCCEEDED, expected, skipped_download=True)


@dataclass(frozen=True)
class Failure:
    """Why a sync failed, as the row and the attempt history record it."""

    message: str
    detail: str | None
    error_class: str
    missing_on_primary: bool


@dataclass(frozen=True)
class Finished:
    """One finished sync, waiting to be written: `claim` is the claim that started it."""

    registry: Registry
    model_record_id: int
    claim: SyncClaim
    result: Success | Failure

    @property
    def started_at(self) -> datetime:
        """When the sync was claimed (its attempt's start)."""
        return self.claim.at


@dataclass(frozen=True)
class Settled:
    """What writing a finished sync found.

    `done`: the row is now synced by this sync. `gone`: the row was deleted while the sync ran.
    `pending_since`: when the row's pending change was published (for the lag histogram).
    """

    done: bool
    gone: bool = False
    pending_since: datetime | None = None


def failure_of(exc: BaseException, error_class: str) -> Failure:
    """The recorded form of a failed sync's exception."""
    from geosync.errors import RecordGone

    missing = isinstance(exc, PrimaryMissing | RecordGone)
    if isinstance(exc, GeoError):
        return Failure(str(exc), None, error_class, missing)
    if isinstance(exc, DATABASE_AWAY):
        return Failure(
            "A database of this site is not reachable", error_line(exc), error_class, False
        )
    return Failure("Sync failed unexpectedly", f"{type(exc).__name__}: {exc}", error_class, missing)


def settle_group(conn: Connection, group: Sequence[Finished], now: datetime) -> list[Settled]:
    """Write every finished sync of `group` in `conn`'s transaction; one answer per sync."""
    answers: dict[int, tuple[Settled, str | None]] = {}
    by_registry: dict[tuple[type[Registry], str], list[tuple[int, Finished]]] = {}
    for index, item in enumerate(group):
        if isinstance(item.result, Success):
            key = (type(item.registry), item.registry.table.name)
            by_registry.setdefault(key, []).append((index, item))
        else:
            answers[index] = _settle_failure(conn, item, item.result)
    for successes in by_registry.values():
        answers.update(_settle_successes(conn, successes))
    attempts = []
    for index, item in enumerate(group):
        outcome = answers[index][1]
        if outcome is not None:
            attempts.append(_attempt(item, now, outcome))
    record_attempts(conn, attempts)
    return [answers[index][0] for index in range(len(group))]


def _settle_successes(
    conn: Connection, successes: list[tuple[int, Finished]]
) -> dict[int, tuple[Settled, str | None]]:
    registry = successes[0][1].registry
    syncs = []
    for _, item in successes:
        success = item.result
        assert isinstance(success, Success)
        syncs.append(
            SyncedRow(
                item.model_record_id,
                item.claim,
                success.verification,
                success.checksum,
                success.missing_on_primary,
                success.local_path,
            )
        )
    done = registry.synced_rows(conn, syncs)
    answers: dict[int, tuple[Settled, str | None]] = {}
    for index, item in successes:
        row = done.get(item.model_record_id)
        if row is not None:
            answers[index] = Settled(True, pending_since=row.pending_since), "synced"
        else:  # read after the UPDATE: on PostgreSQL it waited for a deletion in flight
            found = registry.get(conn, item.model_record_id)
            if found is not None and _already_written(found, item):
                # This very outcome was committed before, the commit's answer lost (the
                # tracking database went away as it acknowledged): done, its attempt kept.
                answers[index] = Settled(True, pending_since=found.pending_since), None
                continue
            gone = found is None
            # A deleted row's history went with it; a superseded one keeps the attempt.
            answers[index] = Settled(False, gone=gone), None if gone else "superseded"
    return answers


def _already_written(row: RegistryRow, item: Finished) -> bool:
    """Whether `row` is synced by `item`'s own claim (no claim since: same generation)."""
    return row.sync_state == SyncState.SYNCED and int(row.claim_generation) == (
        item.claim.generation
    )


def _settle_failure(
    conn: Connection, item: Finished, failure: Failure
) -> tuple[Settled, str | None]:
    registry = item.registry
    if failure.error_class in _NOT_THE_ITEMS_FAULT:  # due again (when the site is), count kept
        if registry.interrupted(conn, item.model_record_id, item.claim, failure.message):
            return Settled(False), failure.error_class
    elif (
        registry.failed(
            conn,
            item.model_record_id,
            item.claim,
            failure.message,
            failure.detail,
            missing_on_primary=failure.missing_on_primary,
            permanent=failure.error_class == PERMANENT,
        )
        is not None
    ):
        return Settled(False), "failed"
    # Deleted or superseded meanwhile (read after the UPDATE, as for successes).
    gone = registry.get(conn, item.model_record_id) is None
    return Settled(False, gone=gone), None


def _attempt(item: Finished, now: datetime, outcome: str) -> Attempt:
    name = item.registry.replicator.replicable_name
    result = item.result
    if isinstance(result, Failure):
        return Attempt(
            name,
            item.model_record_id,
            "sync",
            item.started_at,
            now,
            outcome,
            None if outcome == INTERRUPTED else result.error_class,
            result.message,
        )
    return Attempt(
        name, item.model_record_id, "sync", item.started_at, now, outcome, bytes=result.bytes
    )


class Settler:
    """Group commit of finished syncs across the threads that ran them."""

    def __init__(self, geo: Geo, max_group: int = MAX_GROUP) -> None:
        self.geo = geo
        self.max_group = max_group
        self._lock = threading.Lock()
        self._queue: list[tuple[Finished, Future[Settled]]] = []
        self._leading = False
        #: Outcomes not written because the tracking database was away (`settle_kept`).
        self._kept: list[Finished] = []

    @property
    def kept(self) -> int:
        """How many outcomes wait for the tracking database to come back."""
        with self._lock:
            return len(self._kept)

    def settle_kept(self) -> int:
        """Write the outcomes kept while the tracking database was away; returns how many.

        Called by the scheduler before each round. While the database is still away this
        raises (the outcomes stay kept) and the round fails as it would anyway.
        """
        with self._lock:
            items, self._kept = self._kept, []
        if not items:
            return 0
        try:
            self._transaction(items)
        except DATABASE_AWAY:
            with self._lock:
                self._kept[:0] = items
            raise
        log.info("syncs settled after a tracking database outage", syncs=len(items))
        return len(items)

    def settle(self, item: Finished) -> Settled:
        """Write `item` (with whatever else is waiting) and return what was found."""
        return self.settle_all([item])[0]

    def settle_all(self, items: Sequence[Finished]) -> list[Settled]:
        """Write `items` (and whatever else is waiting); one answer per item, in order."""
        futures = [self._enqueue(item) for item in items]
        with self._lock:
            lead = not self._leading
            self._leading = True
        if lead:
            self._drain()
        return [future.result() for future in futures]

    def _enqueue(self, item: Finished) -> Future[Settled]:
        future: Future[Settled] = Future()
        with self._lock:
            self._queue.append((item, future))
        return future

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch, self._queue = (
                    self._queue[: self.max_group],
                    self._queue[self.max_group :],
                )
                if not batch:
                    self._leading = False
                    return
            self._write(batch)

    def _write(self, batch: list[tuple[Finished, Future[Settled]]]) -> None:
        try:
            answers = self._transaction([item for item, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                if isinstance(exc, DATABASE_AWAY):
                    self._keep(batch[0][0], exc)
                batch[0][1].set_exception(exc)
                return
            for one in batch:  # one at a time: only the bad one fails
                self._write([one])
            return
        except BaseException as exc:  # interrupted: nobody may wait forever
            for _, future in batch:
                future.set_exception(exc)
            raise
        for (_, future), answer in zip(batch, answers, strict=True):
            future.set_result(answer)

    def _keep(self, item: Finished, exc: Exception) -> None:
        with self._lock:
            self._kept.append(item)
        log.warning(
            "sync outcome kept until the tracking database is back",
            replicable=item.registry.replicator.replicable_name,
            id=item.model_record_id,
            error=error_line(exc),
        )

    def _transaction(self, items: list[Finished]) -> list[Settled]:
        with self.geo.tracking() as conn:
            return settle_group(conn, items, self.geo.clock.now())
