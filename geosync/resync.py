"""Operator requests to sync again (`geosync resync`): one registry, or all in keyset batches.

Only synced and failed rows move (to pending); rows being synced right now are left alone, so
a resync never races a transfer. Runs on a secondary: the primary has no copies to sync.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from sqlalchemy import func, select, update

from geosync.registry import Registry, pending_values
from geosync.states import SyncState

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.replicator import Replicator

KEYSET_BATCH = 1000


def _registry(geo: Geo, replicator: type[Replicator]) -> Registry:
    return Registry.of_secondary(geo, replicator, "resync")


def _states(failed_only: bool) -> list[int]:
    return [SyncState.FAILED] if failed_only else [SyncState.SYNCED, SyncState.FAILED]


def resync_one(geo: Geo, replicator: type[Replicator], model_record_id: int) -> None:
    """Move one synced or failed registry back to pending (`NotFound`, `InvalidTransition`)."""
    registry = _registry(geo, replicator)
    with geo.tracking() as conn:
        registry.resync(conn, model_record_id)


def resync_count(geo: Geo, replicator: type[Replicator], failed_only: bool) -> int:
    """How many rows `resync_all` would move (for a progress bar)."""
    registry = _registry(geo, replicator)
    with geo.tracking_engine.connect() as conn:
        query = select(func.count()).select_from(registry.table)
        return int(
            conn.execute(query.where(registry.table.c.state.in_(_states(failed_only)))).scalar_one()
        )


def resync_all(geo: Geo, replicator: type[Replicator], failed_only: bool) -> Iterator[int]:
    """Move every synced (or only failed) row to pending, 1,000 per transaction; yields counts."""
    registry = _registry(geo, replicator)
    c = registry.table.c
    after = 0
    while True:
        with geo.tracking() as conn:
            keys = list(
                conn.execute(
                    select(registry.key)
                    .where(registry.key > after, c.state.in_(_states(failed_only)))
                    .order_by(registry.key)
                    .limit(KEYSET_BATCH)
                ).scalars()
            )
            if not keys:
                return
            moved = conn.execute(
                update(registry.table)
                .where(registry.key.in_(keys), c.state.in_(_states(failed_only)))
                .values(**pending_values(geo.clock.now()))
            ).rowcount
        after = int(keys[-1])
        yield int(moved)
