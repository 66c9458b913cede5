"""Operator requests to sync again (`geosync resync`): one registry, or all in keyset batches.

Only synced and failed rows move (to pending); rows being synced right now are left alone, so
a resync never races a transfer. Runs on a secondary: the primary has no copies to sync.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from geosync.registry import Registry

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.replicator import Replicator

KEYSET_BATCH = 1000


def _registry(geo: Geo, replicator: type[Replicator]) -> Registry:
    return Registry.of_secondary(geo, replicator, "resync")


def resync_one(geo: Geo, replicator: type[Replicator], model_record_id: int) -> None:
    """Move one synced or failed registry back to pending (`NotFound`, `InvalidTransition`)."""
    registry = _registry(geo, replicator)
    with geo.tracking() as conn:
        registry.resync(conn, model_record_id)
    _wake_schedulers(geo)


def _wake_schedulers(geo: Geo) -> None:
    """The site's schedulers, in every worker process, look for the rows moved to pending."""
    from geosync.worker import notify_local_workers

    notify_local_workers(geo, "scheduler")


def resync_count(geo: Geo, replicator: type[Replicator], failed_only: bool) -> int:
    """How many rows `resync_all` would move (for a progress bar)."""
    registry = _registry(geo, replicator)
    with geo.tracking_engine.connect() as conn:
        return registry.resyncable_count(conn, failed_only)


def resync_all(geo: Geo, replicator: type[Replicator], failed_only: bool) -> Iterator[int]:
    """Move every synced (or only failed) row to pending, 1,000 per transaction; yields counts."""
    registry = _registry(geo, replicator)
    after = 0
    while True:
        with geo.tracking() as conn:
            keys = registry.next_keys(conn, registry.resyncable(failed_only), after, KEYSET_BATCH)
            if not keys:
                return
            moved = registry.resync_many(conn, keys, failed_only)
        after = keys[-1]
        if moved:
            _wake_schedulers(geo)
        yield moved
