"""Operator requests to verify again (`geosync reverify`): one record, or all in keyset batches.

On the primary they re-queue the records' own verification (the stored checksum is kept, so the
new one is compared with it); on a secondary, the registry's verification of its copies.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_

from geosync.errors import GeoError, NotFound
from geosync.verification import Verifiable, primary_verifiable, registry_verifiable

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.replicator import Replicator

KEYSET_BATCH = 1000


@dataclass(frozen=True)
class ReverifyTarget:
    """What `geosync reverify` re-queues on this site: the primary's state or the registry."""

    verifiable: Verifiable
    database: str

    def connection(self) -> Any:
        """A transaction on the database holding the state."""
        geo = self.verifiable.geo
        return geo.tracking() if self.database == "tracking" else geo.main()


def reverify_target(geo: Geo, replicator: type[Replicator]) -> ReverifyTarget:
    """On a secondary the registry's verification; on the primary the records' own."""
    if not replicator.verification_enabled:
        raise GeoError(f"verification is disabled for {replicator.replicable_name_plural}")
    if geo.has_tracking_database:
        return ReverifyTarget(registry_verifiable(geo, replicator), "tracking")
    return ReverifyTarget(primary_verifiable(geo, replicator), "main")


def reverify_one(geo: Geo, replicator: type[Replicator], model_record_id: int) -> None:
    """Re-queue one record's verification, or `NotFound`."""
    target = reverify_target(geo, replicator)
    with target.connection() as conn:
        if not target.verifiable.pending(conn, model_record_id):
            raise NotFound(
                f"{replicator.replicable_name} {model_record_id} has no verification state here"
            )


def reverify_count(geo: Geo, replicator: type[Replicator], failed_only: bool) -> int:
    """How many rows `reverify_all` would re-queue (for a progress bar)."""
    target = reverify_target(geo, replicator)
    with target.connection() as conn:
        return target.verifiable.count_where(
            conn, target.verifiable.reverify_condition(failed_only)
        )


def reverify_all(geo: Geo, replicator: type[Replicator], failed_only: bool) -> Iterator[int]:
    """Re-queue every (failed) row in keyset batches of 1,000, one transaction each.

    Yields how many rows each batch re-queued; resumable by construction, never one giant UPDATE.
    """
    target = reverify_target(geo, replicator)
    verifiable = target.verifiable
    condition = verifiable.reverify_condition(failed_only)
    after = 0
    while True:
        with target.connection() as conn:
            keys = verifiable.next_keys(conn, condition, after, KEYSET_BATCH)
            if not keys:
                return
            changed = verifiable.pending_where(conn, and_(condition, verifiable.key.in_(keys)))
        after = keys[-1]
        yield changed
