"""The log cursor's stored state (`geo_event_log_state`, one row): the one module that reads and
writes it, so the cursor, the pruned-log check and the status agree on what the position is.

The position is the id of the last event applied; open gaps (`geo_event_gaps`, ids the cursor
passed before they committed) lower what the secondary can claim to have read.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, func, insert, select, update

from geosync.db.tables import geo_event_gaps, geo_event_log_state

_ROW = geo_event_log_state.c.id == 1


def stored_position(tracking: Connection) -> int | None:
    """The stored position, or None before the cursor's first start."""
    value = tracking.execute(select(geo_event_log_state.c.event_id).where(_ROW)).scalar()
    return int(value) if value is not None else None


def reported_position(tracking: Connection) -> int | None:
    """What status reports as read (`cursor_last_event_id`): min(oldest open gap - 1, stored
    position); None before the first start."""
    cursor = stored_position(tracking)
    oldest_gap = tracking.execute(select(func.min(geo_event_gaps.c.event_id))).scalar()
    if cursor is None or oldest_gap is None:
        return cursor
    return min(int(oldest_gap) - 1, cursor)


def start_at(tracking: Connection, event_id: int, pruned_behind: bool, now: datetime) -> None:
    """Create the state at the cursor's first start."""
    tracking.execute(
        insert(geo_event_log_state).values(
            id=1, event_id=event_id, pruned_behind=pruned_behind, updated_at=now
        )
    )


def store_position(
    tracking: Connection, event_id: int, now: datetime, *, pruned_behind: bool | None = None
) -> None:
    """Move the stored position (and mark a jump over pruned events when `pruned_behind`)."""
    values: dict[str, object] = {"event_id": event_id, "updated_at": now}
    if pruned_behind is not None:
        values["pruned_behind"] = pruned_behind
    tracking.execute(update(geo_event_log_state).where(_ROW).values(**values))


def last_moved_at(tracking: Connection) -> datetime | None:
    """When the stored position last moved, or None before the first start."""
    return tracking.execute(select(geo_event_log_state.c.updated_at).where(_ROW)).scalar()
