"""Helpers of the bulk job tests: secondaries with many synced registries, and job runs."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select, update

from geosync.app import Geo
from geosync.demo.replicators import UploadReplicator
from geosync.jobs import run_job_batch
from geosync.registry import Registry
from geosync.states import SyncState

#: Model ids start here, so registry row ids (1, 2, ...) and model ids differ.
FIRST = 101


def seed_synced(geo: Geo, count: int, failed: Collection[int] = ()) -> Registry:
    """`count` registries for models FIRST.., all synced but the `failed` model ids.

    One UPDATE marks them synced (the registry's transitions have tests of their own); the
    failed ones go through `Registry.failed`.
    """
    registry = Registry(geo, UploadReplicator)
    with geo.tracking() as conn:
        registry.insert_pending(conn, list(range(FIRST, FIRST + count)))
        conn.execute(update(registry.table).values(state=SyncState.SYNCED))
        for i in failed:
            registry.failed(conn, i, registry.start(conn, i), "boom")
    return registry


def sync_states(geo: Geo, registry: Registry) -> dict[int, SyncState]:
    with geo.tracking_engine.connect() as conn:
        rows = conn.execute(select(registry.key, registry.table.c.state)).all()
    return {int(key): SyncState(state) for key, state in rows}


def run_to_end(geo: Geo, job_id: int, limit: int = 100) -> list[int]:
    """Run batches until the job ends; the job's `processed` after each batch."""
    progress = []
    for _ in range(limit):
        job = run_job_batch(geo, job_id)
        progress.append(job.processed)
        if not job.state.active:
            return progress
    raise AssertionError("the job never ended")
