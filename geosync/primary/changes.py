"""Changed records need new checksums: keeping the primary's verification current.

`publish_events` calls `keep_verification_current` inside the transaction that writes the events
(or would, when nothing is published), so a record's verification state changes atomically with
it: `created`/`updated` make it pending and forget its checksum (an immutable blob that already
has one keeps it: its content cannot have changed); `deleted` removes its state row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_

from geosync.records import in_chunks
from geosync.replicator import CREATED, DELETED, UPDATED
from geosync.verification import primary_verifiable

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.events import EventRow
    from geosync.replicator import Replicator


def keep_verification_current(geo: Geo, conn: Connection, rows: Sequence[EventRow]) -> None:
    """Called by `publish_events` in the publishing transaction: changed records need checksums.

    It runs wherever the main database is writable, whether or not events are published (no
    secondary yet, flag off), so a record's state never claims a checksum its content lost.
    """
    if geo.main_readonly:
        return
    changed: dict[type[Replicator], list[int]] = {}
    deleted: dict[type[Replicator], list[int]] = {}
    for replicator, event_name, payload in rows:
        if not replicator.verification_enabled or replicator not in geo.catalog:
            continue
        model_record_id = payload.get("model_record_id") if isinstance(payload, dict) else None
        if not isinstance(model_record_id, int):
            continue
        if event_name in (CREATED, UPDATED):
            changed.setdefault(replicator, []).append(model_record_id)
        elif event_name == DELETED:
            deleted.setdefault(replicator, []).append(model_record_id)
    for replicator, ids in changed.items():
        mark_changed(geo, conn, replicator, ids)
    for replicator, ids in deleted.items():
        forget_records(geo, conn, replicator, ids)


def mark_changed(geo: Geo, conn: Connection, replicator: type[Replicator], ids: list[int]) -> None:
    """Make the records' verification pending (creating state rows); immutable blobs that
    already have a checksum keep it, since their content cannot have changed.
    """
    target = primary_verifiable(geo, replicator)
    c = target.table.c
    keep_checksum = replicator.keeps_checksum()
    for chunk in in_chunks(sorted(set(ids))):
        where: Any = target.key.in_(chunk)
        if keep_checksum:
            where = and_(where, c.verification_checksum.is_(None))
        target.pending_where(conn, where, changed=True)
        if target.table is not replicator.model.__table__:
            target.add_pending(conn, chunk)


def changes_committed(geo: Geo) -> None:
    """Called after a commit that changed replicable records of `geo` (the session hook): wake
    this process's primary verification loop, which then checksums them without waiting for
    its next poll.
    """
    if geo.main_readonly:
        return
    from geosync.primary.verification import PrimaryVerificationLoop
    from geosync.worker import notify_local_workers

    notify_local_workers(geo, PrimaryVerificationLoop.name)


def forget_records(
    geo: Geo, conn: Connection, replicator: type[Replicator], ids: list[int]
) -> None:
    """Delete the state rows of deleted records (the foreign key cascades too, where enforced)."""
    if geo.tables.state(replicator) is not None:
        primary_verifiable(geo, replicator).forget(conn, ids)
