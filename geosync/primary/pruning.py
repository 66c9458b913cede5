"""Event-log pruning on the primary (ARCHITECTURE.md §4): keep `geo_events` from growing forever.

Every 30 seconds, delete the events every secondary has consumed: ids up to the lowest
`cursor_last_event_id` the secondaries reported, at most 50,000 rows a run. A secondary that has
not reported for an hour is unhealthy; pruning still waits for it (its last reported cursor, or
everything when it never reported one), but never keeps events older than `event_log_max_age`,
so one dead secondary cannot make the log grow without end. A secondary that falls behind that
bound skips the pruned events and recovers through its consistency sweep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, or_, select

from geosync.db.batched_delete import delete_first
from geosync.db.tables import geo_events, geo_node_statuses, geo_nodes
from geosync.log import get_logger

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.worker import Worker

log = get_logger("pruning")

#: Seconds between two pruning runs. Each is one indexed, bounded DELETE, cheap enough to run
#: often: a log pruned every half minute stays small however busy the primary is.
PRUNE_INTERVAL = 30.0
#: The most events one run deletes (one bounded transaction).
MAX_ROWS_PER_RUN = 50_000
#: A secondary whose status is older than this is unhealthy.
HEALTHY_WITHIN = timedelta(hours=1)


@dataclass(frozen=True)
class SecondaryCursor:
    """What the primary knows of one secondary's position in the event log."""

    node_name: str
    #: The last reported `cursor_last_event_id`; None when it never reported one.
    cursor: int | None
    reported_at: datetime | None
    healthy: bool


@dataclass(frozen=True)
class PrunePlan:
    """Which events may go: ids up to `up_to_id`, and every event created before `older_than`."""

    up_to_id: int
    older_than: datetime
    secondaries: list[SecondaryCursor] = field(default_factory=list)

    @property
    def waiting_for(self) -> list[str]:
        """Unhealthy secondaries that hold events back (until the age bound drops them)."""
        return [s.node_name for s in self.secondaries if not s.healthy]


@dataclass(frozen=True)
class PruneResult:
    """What one run deleted, and whether more could go right away (the run hit its cap)."""

    deleted: int
    plan: PrunePlan
    capped: bool


def _reported_cursor(status: Any) -> int | None:
    value = status.get("cursor_last_event_id") if isinstance(status, dict) else None
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def secondary_cursors(conn: Connection, now: datetime) -> list[SecondaryCursor]:
    """Every secondary node with its last reported cursor and whether it reported recently."""
    rows = conn.execute(
        select(geo_nodes.c.name, geo_node_statuses.c.status, geo_node_statuses.c.updated_at)
        .select_from(geo_nodes.outerjoin(geo_node_statuses))
        .where(geo_nodes.c.primary.is_(False))
        .order_by(geo_nodes.c.id)
    )
    cursors = []
    for name, status, updated_at in rows:
        healthy = updated_at is not None and now - updated_at <= HEALTHY_WITHIN
        cursors.append(SecondaryCursor(name, _reported_cursor(status), updated_at, healthy))
    return cursors


def plan_pruning(geo: Geo, conn: Connection) -> PrunePlan:
    """The bounds of this run: the lowest secondary cursor (no secondary: everything) and the
    age bound `event_log_max_age`.
    """
    now = geo.clock.now()
    older_than = now - geo.settings.event_log_max_age
    secondaries = secondary_cursors(conn, now)
    if not secondaries:
        newest = conn.execute(select(func.max(geo_events.c.id))).scalar()
        return PrunePlan(int(newest or 0), older_than)
    # An unhealthy secondary is waited for at its last reported position: its cursor only
    # moves forward, so everything after it is still owed to it. Never reported: owed all.
    up_to = min(s.cursor if s.cursor is not None else 0 for s in secondaries)
    return PrunePlan(max(up_to, 0), older_than, secondaries)


def prune_event_log(geo: Geo, limit: int = MAX_ROWS_PER_RUN) -> PruneResult:
    """Delete at most `limit` prunable events, oldest first, in one transaction."""
    with geo.main() as conn:
        plan = plan_pruning(geo, conn)
        e = geo_events.c
        prunable = or_(e.id <= plan.up_to_id, e.created_at < plan.older_than)
        deleted = delete_first(conn, geo_events, prunable, (e.id,), limit)
    if deleted:
        log.info(
            "event log pruned",
            deleted=deleted,
            up_to_id=plan.up_to_id,
            older_than=plan.older_than.isoformat(),
            waiting_for=plan.waiting_for,
        )
    elif plan.waiting_for:
        log.info("event log pruning waits for unhealthy secondaries", nodes=plan.waiting_for)
    return PruneResult(deleted, plan, capped=deleted >= limit)


class EventLogPruningLoop:
    """Background loop (primary): prune the event log every 30 seconds, sooner while behind."""

    name = "event_log_pruning"

    def __init__(self, geo: Geo, worker: Worker | None = None, limit: int = MAX_ROWS_PER_RUN):
        self.geo = geo
        self.limit = limit

    def run_once(self) -> float:
        """One pruning run; only the primary's node prunes."""
        if not self.geo.is_primary():
            return PRUNE_INTERVAL
        result = prune_event_log(self.geo, self.limit)
        return self.geo.settings.poll_interval if result.capped else PRUNE_INTERVAL
