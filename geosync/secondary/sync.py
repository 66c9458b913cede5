"""One sync of one replicable: download or fetch, check, and settle the registry row.

A sync always leaves its row synced or failed, whatever happens; it records one attempt and
writes one structured log line. Its final `synced` step is conditional, so a newer event that
arrived meanwhile wins and the row stays pending.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geosync.auth import BLOB_TOKEN_TTL, REPOSITORY_TOKEN_TTL, node_header
from geosync.errors import (
    AuthenticationError,
    ChecksumMismatch,
    ConfigurationError,
    GeoError,
    PrimaryMissing,
    TransferError,
)
from geosync.file_locks import mirror_lock as mirror_lock  # its home; kept importable here
from geosync.log import get_logger
from geosync.registry import Registry, SyncClaim
from geosync.secondary.blob_client import BlobClient
from geosync.secondary.settlement import (
    Failure,
    Finished,
    Settled,
    Settler,
    Success,
    failure_of,
    settle_group,
)
from geosync.secondary.transfer import download_blob
from geosync.states import VerificationState
from geosync.strategies.blob import BlobReplicator
from geosync.strategies.repository import RepositoryReplicator
from geosync.web.node_paths import repository_base_path, retrieve_path

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.nodes import Node
    from geosync.replicator import Replicator

log = get_logger("sync")
GIT_TIMEOUT = 3600.0


@dataclass(frozen=True)
class Route:
    """Where the primary is and who this site is: looked up once per scheduler round."""

    primary_url: str
    node: Node | None = None

    @classmethod
    def lookup(cls, geo: Geo) -> Route:
        """The current route, from the database."""
        return cls(geo.primary_internal_url(), geo.current_node())


#: A claimed row's model record (None if gone) and the primary's checksum of it (None if none).
Prefetched = tuple[Any, str | None]


def prefetch(geo: Geo, replicator: type[Replicator], ids: list[int]) -> dict[int, Prefetched]:
    """The records and primary checksums of `ids`, in two queries on one connection.

    Syncs get them in groups (`prefetch_missing`); a sync given none reads its own.
    """
    from geosync.model import load_records
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
        except Exception:
            log.exception("cannot prefetch records", replicable=replicator.replicable_name)
            continue
        for service in group:
            service.prefetched = found.get(service.model_record_id)


class RecordGone(GeoError):
    """The model record no longer exists on the primary."""


def error_class(exc: BaseException) -> str:
    """The attempt-history class of a failure."""
    if isinstance(exc, PrimaryMissing | RecordGone):
        return "primary_missing"
    if isinstance(exc, ChecksumMismatch):
        return "checksum_mismatch"
    if isinstance(exc, AuthenticationError):
        return "auth"
    if isinstance(exc, ConfigurationError):
        return "config"
    if isinstance(exc, TransferError):
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

    def transfer(self) -> Success:
        """Download or fetch the item; its outcome, not yet written to the registry."""
        record, expected = self.record()
        replicator = self.replicator(record, geo=self.geo)
        if isinstance(replicator, BlobReplicator):
            return self._sync_blob(replicator, expected)
        if isinstance(replicator, RepositoryReplicator):
            return self._sync_repository(replicator, expected)
        raise ConfigurationError(f"{self.replicator.__name__} has no known strategy")

    def _sync_blob(self, replicator: BlobReplicator, expected: str | None) -> Success:
        dest = replicator.file_path()
        relative = replicator.blob_path()
        if self.can_skip_download(replicator, dest, expected):
            return Success(relative, VerificationState.SUCCEEDED, expected, skipped_download=True)
        route = self.route()
        base = route.primary_url
        path = retrieve_path(self.replicator.replicable_name, self.model_record_id)

        def auth() -> dict[str, str]:
            return {"Authorization": node_header(self.geo, path, BLOB_TOKEN_TTL, route.node)}

        download = download_blob(
            self.client,
            base.rstrip("/") + path,
            auth,
            dest,
            expected_sha256=expected,
            cancel=self.cancel,
        )
        verified = expected is not None
        return Success(
            relative,
            VerificationState.SUCCEEDED if verified else VerificationState.DISABLED,
            download.sha256 if verified else None,
            bytes=download.bytes,
        )

    def can_skip_download(
        self, replicator: BlobReplicator, dest: Path, expected: str | None
    ) -> bool:
        """Whether the file already in place can be taken as the copy (§6's skip-download)."""
        from geosync.secondary.verification import skip_download_possible

        if expected is None or not dest.is_file():
            return False
        with self.geo.tracking_engine.connect() as conn:
            row = self.registry.get(conn, self.model_record_id)
        return row is not None and skip_download_possible(replicator, row, expected)

    def _sync_repository(self, replicator: RepositoryReplicator, expected: str | None) -> Success:
        from geosync.git import mirror_repository, repository_checksum

        dest = replicator.repository_dir()
        relative = replicator.repository_path()
        base = repository_base_path(self.replicator.replicable_name, self.model_record_id)
        route = self.route()
        url = route.primary_url.rstrip("/") + base
        with mirror_lock(dest):
            # Signed only now: waiting for an older sync of this mirror may take long.
            header = node_header(self.geo, base, REPOSITORY_TOKEN_TTL, route.node)
            try:
                mirror_repository(url, dest, headers={"Authorization": header}, timeout=GIT_TIMEOUT)
            except PrimaryMissing:
                return Success(relative, missing_on_primary=True)
        if expected is None:
            return Success(relative)
        actual = repository_checksum(dest)
        if actual != expected:
            # The primary may have moved on since its checksum; let verification decide later.
            return Success(relative, VerificationState.PENDING)
        return Success(relative, VerificationState.SUCCEEDED, actual)

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
        from geosync.secondary.handlers import SkipEvent, delete_local_copy

        key = "blob_path" if self.replicator.strategy == "blob" else "repository_path"
        payload = {
            "model_record_id": self.model_record_id,
            key: outcome.local_path,
            "storage": getattr(self.replicator, "storage", None),
        }
        try:
            delete_local_copy(self.geo, self.replicator, payload)
        except (SkipEvent, GeoError, OSError):
            log.exception(
                "cannot remove the copy of a deleted item",
                replicable=self.replicator.replicable_name,
                id=self.model_record_id,
            )

    def failure(self, exc: BaseException) -> Failure:
        """Log why this sync failed and return it as the row will record it."""
        failure = failure_of(exc, error_class(exc))
        if not isinstance(exc, GeoError):
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
