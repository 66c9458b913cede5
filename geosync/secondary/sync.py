"""One sync of one replicable: download or fetch, check, and settle the registry row.

A sync always leaves its row synced or failed, whatever happens; it records one attempt and
writes one structured log line. Its final `synced` step is conditional, so a newer event that
arrived meanwhile wins and the row stays pending.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from geosync.attempts import INTERRUPTED, PERMANENT, SITE_UNREACHABLE
from geosync.db.engines import error_line
from geosync.errors import (
    AuthenticationError,
    ChecksumMismatch,
    ConfigurationError,
    GeoError,
    Interrupted,
    PrimaryMissing,
    PrimaryRefused,
    RecordGone,
    StorageError,
    StorageFull,
    TransferError,
    UnsafePath,
)
from geosync.file_locks import mirror_lock as mirror_lock  # its home; kept importable here
from geosync.log import get_logger
from geosync.registry import Registry, SyncClaim
from geosync.secondary.blob_client import BlobClient
from geosync.secondary.reachability import DESCRIPTIONS, is_site_level, reachability_of
from geosync.secondary.settlement import (
    DATABASE_AWAY,
    Failure,
    Finished,
    Settled,
    Settler,
    Success,
    failure_of,
    settle_group,
)
from geosync.states import VerificationState

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.nodes import Node
    from geosync.replicator import Replicator

log = get_logger("sync")


@dataclass(frozen=True)
class Route:
    """Where the primary is and who this site is: looked up once per scheduler round."""

    primary_url: str
    node: Node | None = None

    @classmethod
    def lookup(cls, geo: Geo) -> Route:
        """The current route, from the database."""
        return cls(geo.primary_internal_url(), geo.current_node())


@dataclass(frozen=True)
class Plan:
    """The first step of every sync, alone or in a batch: the record bound to its replicator,
    the primary's checksum, and `skip`, the outcome when no transfer is needed."""

    replicator: Replicator
    expected: str | None
    skip: Success | None = None


#: A claimed row's model record (None if gone) and the primary's checksum of it (None if none).
Prefetched = tuple[Any, str | None]


def prefetch(geo: Geo, replicator: type[Replicator], ids: list[int]) -> dict[int, Prefetched]:
    """The records and primary checksums of `ids`, in two queries on one connection.

    Syncs get them in groups (`prefetch_missing`); a sync given none reads its own.
    """
    from geosync.records import load_records
    from geosync.verification import primary_checksums

    with geo.main_reads() as main:
        records = load_records(main, replicator.model, ids)
        checksums = primary_checksums(geo, main, replicator, records) if records else {}
    return {i: (records.get(i), checksums.get(i)) for i in ids}


def prefetch_missing(services: Sequence[SyncService]) -> None:
    """Give the syncs that lack them their records and primary checksums, a query or two per
    replicator; where that fails, each sync reads its own later (and reports what fails)."""
    by_replicator: dict[type[Replicator], list[SyncService]] = {}
    for service in services:
        if service.prefetched is None:
            by_replicator.setdefault(service.replicator, []).append(service)
    for replicator, group in by_replicator.items():
        try:
            found = prefetch(group[0].geo, replicator, [s.model_record_id for s in group])
        except DATABASE_AWAY as exc:  # each sync then fails with the reason, once
            log.warning(
                "cannot prefetch records",
                replicable=replicator.replicable_name,
                error=error_line(exc),
            )
            continue
        except Exception:
            log.exception("cannot prefetch records", replicable=replicator.replicable_name)
            continue
        for service in group:
            service.prefetched = found.get(service.model_record_id)


def error_class(exc: BaseException) -> str:
    """The attempt-history class of a failure; `INTERRUPTED` for a sync its worker stopped."""
    if isinstance(exc, Interrupted):
        return INTERRUPTED
    if isinstance(exc, PrimaryRefused | StorageFull | UnsafePath | RecordGone):
        return PERMANENT
    if isinstance(exc, StorageError):  # this site's object store
        return PERMANENT if exc.permanent else "transient"
    if isinstance(exc, PrimaryMissing):
        return "primary_missing"
    if isinstance(exc, ChecksumMismatch):
        return "checksum_mismatch"
    if isinstance(exc, AuthenticationError):
        return "auth"
    if isinstance(exc, ConfigurationError):
        return "config"
    if isinstance(exc, (TransferError, *DATABASE_AWAY)):
        return "transient"
    return "unknown"


class SyncService:
    """Syncs one claimed registry row (already `started` by `claim`)."""

    def __init__(
        self,
        geo: Geo,
        replicator: type[Replicator],
        model_record_id: int,
        claim: SyncClaim,
        client: BlobClient,
        cancel: threading.Event | None = None,
        route: Route | None = None,
        settler: Settler | None = None,
        prefetched: Prefetched | None = None,
    ) -> None:
        self.geo = geo
        self.replicator = replicator
        self.model_record_id = model_record_id
        self.claim = claim
        self.started_at = claim.at
        self.client = client
        self.cancel = cancel
        self.registry = Registry(geo, replicator)
        self._route = route
        self.settler = settler
        self.prefetched = prefetched

    def execute(self) -> bool:
        """Run the sync; True when the row ended synced by this sync."""
        clock_start = time.monotonic()
        try:
            outcome = self.transfer()
        except BaseException as exc:
            self._settle(self.failure(exc))
            if not isinstance(exc, Exception):
                raise
            return False
        return self.conclude(outcome, self._settle(outcome), clock_start)

    def conclude(self, outcome: Success, settled: Settled, clock_start: float) -> bool:
        """After a successful sync was written: tidy up, measure, log; True if it counted."""
        if settled.gone:
            self._drop_orphan(outcome)
        if settled.done:
            self._observe_lag(settled.pending_since, self.geo.clock.now(), outcome)
        log.info(
            "sync finished" if settled.done else "sync superseded by a newer change",
            replicable=self.replicator.replicable_name,
            id=self.model_record_id,
            bytes=outcome.bytes,
            seconds=round(time.monotonic() - clock_start, 3),
            verified=outcome.verification == VerificationState.SUCCEEDED,
            skipped_download=outcome.skipped_download,
        )
        return settled.done

    def finished(self, result: Success | Failure) -> Finished:
        """`result` as the settler takes it."""
        return Finished(self.registry, self.model_record_id, self.claim, result)

    # -- the work ------------------------------------------------------------------------------

    def route(self) -> Route:
        """The route given by the scheduler, else looked up now."""
        if self._route is None:
            self._route = Route.lookup(self.geo)
        return self._route

    def record(self) -> tuple[Any, str | None]:
        """The model record and the primary's checksum; `RecordGone` if the record is."""
        record, expected = self.prefetched or prefetch(
            self.geo, self.replicator, [self.model_record_id]
        ).get(self.model_record_id, (None, None))
        if record is None:
            raise RecordGone(
                f"{self.replicator.model.__name__} {self.model_record_id} no longer exists"
            )
        return record, expected

    def plan(self) -> Plan:
        """What this sync must do: the record bound to its replicator, the primary's checksum,
        and the outcome already known when the copy in place can be taken (skip-download)."""
        record, expected = self.record()
        bound = self.replicator(record, geo=self.geo)
        skip = None
        if expected is not None and self._may_skip(bound, expected):
            skip = Success.skipped(bound.local_path(), expected)
        return Plan(bound, expected, skip)

    def _may_skip(self, bound: Replicator, expected: str) -> bool:
        with self.geo.tracking_engine.connect() as conn:
            row = self.registry.get(conn, self.model_record_id)
        return row is not None and bound.can_skip_download(row, expected)

    def transfer(self) -> Success:
        """Plan, then transfer the item the strategy's way; its outcome, not yet written."""
        plan = self.plan()
        if plan.skip is not None:
            return plan.skip
        return plan.replicator.fetch(self, plan.expected)

    # -- settling the row ----------------------------------------------------------------------

    def _settle(self, result: Success | Failure) -> Settled:
        item = self.finished(result)
        if self.settler is not None:
            return self.settler.settle(item)
        with self.geo.tracking() as conn:
            return settle_group(conn, [item], self.geo.clock.now())[0]

    def _drop_orphan(self, outcome: Success) -> None:
        """The row was deleted while this sync ran (a `deleted` event, or the record left this
        secondary's scope): the copy this sync just put in place must not outlive it.
        """
        try:
            self.replicator.remove_copy(self.geo.settings, outcome.local_path)
        except (GeoError, OSError):
            log.exception(
                "cannot remove the copy of a deleted item",
                replicable=self.replicator.replicable_name,
                id=self.model_record_id,
            )

    def failure(self, exc: BaseException) -> Failure:
        """Log why this sync failed and return it as the row will record it: as
        `site_unreachable` when the error was a site-level one and the site is found away."""
        failure = failure_of(exc, error_class(exc))
        target = is_site_level(exc)
        if target is not None and reachability_of(self.geo).confirm_down(target, self._route):
            log.info(
                "sync deferred: its site is unreachable",
                replicable=self.replicator.replicable_name,
                id=self.model_record_id,
                target=target,
                error=failure.message,
            )
            message = f"Deferred while {DESCRIPTIONS[target]} is unreachable: {failure.message}"
            return replace(failure, message=message, error_class=SITE_UNREACHABLE)
        if not isinstance(exc, (GeoError, *DATABASE_AWAY)):
            log.error(
                "sync crashed",
                replicable=self.replicator.replicable_name,
                id=self.model_record_id,
                exc_info=exc,
            )
        else:
            log.warning(
                "sync failed",
                replicable=self.replicator.replicable_name,
                id=self.model_record_id,
                error=failure.message,
                error_class=failure.error_class,
            )
        return failure

    def _observe_lag(self, since: datetime | None, finished: datetime, outcome: Success) -> None:
        if since is None:
            return
        try:
            from geosync.metrics import observe_replication_lag
        except ImportError:
            return
        seconds = max(0.0, (finished - since).total_seconds())
        observe_replication_lag(self.replicator.replicable_name, "synced", seconds, geo=self.geo)
        if outcome.verification == VerificationState.SUCCEEDED:
            observe_replication_lag(
                self.replicator.replicable_name, "verified", seconds, geo=self.geo
            )
