"""A secondary whose cursor fell behind the primary's pruned event log (ARCHITECTURE.md §4).

The primary never keeps events older than `event_log_max_age`, even for a secondary that was
down. Such a secondary must say so in its status, and its log cursor must not wait for events
that will never come: it skips to the oldest event still in the log and marks the history
(`pruned_behind`) as owed to the consistency sweep, which restores what the events would have.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Connection, func, select

from geosync.db.tables import geo_events
from geosync.log import get_logger
from geosync.secondary.cursor_state import store_position, stored_position

if TYPE_CHECKING:
    from geosync.app import Geo

log = get_logger("log_cursor")

#: Holes younger than this may be transactions still in flight: the gap tracking of the log
#: cursor waits for them as long (and no longer), so skipping older holes loses nothing more.
IN_FLIGHT_HORIZON = timedelta(hours=1)


def oldest_event_id(main: Connection) -> int | None:
    """The id of the oldest event still in the primary's log, or None when it is empty."""
    value = main.execute(select(func.min(geo_events.c.id))).scalar()
    return int(value) if value is not None else None


def fell_behind_pruned_log(geo: Geo) -> bool:
    """Whether events after this secondary's cursor were pruned before it read them.

    True when the cursor is below the oldest remaining event minus one; the status shows it.
    """
    with geo.tracking_engine.connect() as tracking:
        cursor = stored_position(tracking)
    if cursor is None:
        return False
    with geo.main_engine.connect() as main:
        oldest = oldest_event_id(main)
    return oldest is not None and cursor < oldest - 1


def skip_pruned_events(geo: Geo, tracking: Connection, main: Connection, cursor: int) -> int:
    """Called by the log cursor before each batch: the position to read on from.

    When the events after `cursor` were pruned, moves the cursor to just before the oldest
    remaining event (not to the newest: the events still in the log are read, so their updates
    and deletions are not lost) and sets `pruned_behind`.
    """
    oldest = oldest_event_id(main)
    if oldest is None or cursor >= oldest - 1:
        return cursor
    now = geo.clock.now()
    if _created_at(main, oldest) > now - IN_FLIGHT_HORIZON:
        return cursor  # the hole may still commit; the cursor's gap tracking covers it
    position = oldest - 1
    store_position(tracking, position, now, pruned_behind=True)
    log.warning(
        "log cursor fell behind the pruned event log; the consistency sweep restores the rest",
        cursor=cursor,
        oldest_event_id=oldest,
    )
    return position


def _created_at(main: Connection, event_id: int) -> datetime:
    """When event `event_id` was written; a time that cannot be read counts as long ago (the
    row is skipped as malformed when it is read, and must not hold the cursor back)."""
    try:
        value = main.execute(
            select(geo_events.c.created_at).where(geo_events.c.id == event_id)
        ).scalar()
    except (ValueError, TypeError):
        value = None
    return value if isinstance(value, datetime) else datetime.min.replace(tzinfo=UTC)
