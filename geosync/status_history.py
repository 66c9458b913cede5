"""Status history on the primary (`geo_node_status_history`): each node's per-type counts over
the last `status_history_hours`, for the admin UI's activity charts.

A row is appended whenever the primary stores a node's status (`status.store_status`), at most
one per node and minute: the minute is part of the row's unique key, so a chatty node, or two
deliveries racing, cannot grow the table. Only the counts a chart draws are kept (not the whole
status with its health text), which keeps a row to a few hundred bytes. Old rows are deleted in
bounded batches by `StatusHistoryPruningLoop`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, insert, select
from sqlalchemy.dialects import postgresql, sqlite

from geosync.db.batched_delete import delete_first
from geosync.db.tables import geo_node_status_history
from geosync.log import get_logger

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.worker import Worker

log = get_logger("status_history")

#: The per-type status fields kept, after the type's `<plural>_` prefix.
HISTORY_FIELDS = (
    "count",
    "synced_count",
    "failed_count",
    "verified_count",
    "verification_failed_count",
)
#: Every type has this field in a status; its prefix names the type.
_TYPE_MARKER = "synced_count"
#: Seconds between two pruning runs (one row a minute per node: there is never much to delete).
PRUNE_INTERVAL = 300.0
#: The most rows one pruning run deletes (one bounded transaction).
MAX_ROWS_PER_RUN = 10_000


@dataclass(frozen=True)
class HistoryPoint:
    """One node's counts as recorded in one minute."""

    geo_node_id: int
    recorded_at: datetime
    counts: dict[str, int]

    def value(self, field: str) -> int | None:
        """The count `field` (a full status field name), None when the status lacked it."""
        return self.counts.get(field)


def minute_of(moment: datetime) -> datetime:
    """The minute `moment` falls in: the key that keeps one row per node and minute."""
    return moment.replace(second=0, microsecond=0)


def history_counts(values: Mapping[str, Any]) -> dict[str, int]:
    """The counts of `values` (a status) that the history keeps: integers only."""
    marker = "_" + _TYPE_MARKER
    prefixes = {key[: -len(_TYPE_MARKER)] for key in values if key.endswith(marker)}
    counts = {}
    for prefix in sorted(prefixes):
        for field in HISTORY_FIELDS:
            value = values.get(prefix + field)
            if isinstance(value, int) and not isinstance(value, bool):
                counts[prefix + field] = value
    return counts


def record(conn: Connection, geo_node_id: int, values: Mapping[str, Any], at: datetime) -> None:
    """Append a node's counts for the minute of `at`, unless that minute already has a row.

    Called by `status.store_status`, in the transaction that stores the status.
    """
    row = {
        "geo_node_id": geo_node_id,
        "recorded_at": minute_of(at),
        "counts": history_counts(values),
    }
    conn.execute(_insert_unless_present(conn).values(**row))


def _insert_unless_present(conn: Connection) -> Any:
    # The unique (geo_node_id, recorded_at) key decides: a second status in the same minute,
    # even one delivered concurrently, is dropped by the database rather than by a read first.
    table = geo_node_status_history
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    return insert(table)


def history_since(
    conn: Connection, since: datetime, node_ids: Iterable[int] | None = None
) -> dict[int, list[HistoryPoint]]:
    """Each node's points recorded at or after `since`, oldest first, by node id."""
    h = geo_node_status_history.c
    query = (
        select(h.geo_node_id, h.recorded_at, h.counts)
        .where(h.recorded_at >= since)
        .order_by(h.geo_node_id, h.recorded_at)
    )
    if node_ids is not None:
        query = query.where(h.geo_node_id.in_(list(node_ids)))
    found: dict[int, list[HistoryPoint]] = {}
    for node_id, recorded_at, counts in conn.execute(query):
        point = HistoryPoint(int(node_id), recorded_at, dict(counts))
        found.setdefault(point.geo_node_id, []).append(point)
    return found


def prune_history(conn: Connection, older_than: datetime, limit: int = MAX_ROWS_PER_RUN) -> int:
    """Delete at most `limit` rows recorded before `older_than`, oldest first; how many went."""
    h = geo_node_status_history.c
    older = h.recorded_at < older_than
    return delete_first(conn, geo_node_status_history, older, (h.recorded_at, h.id), limit)


def retention(geo: Geo) -> timedelta:
    """How long the primary keeps status history (`status_history_hours`)."""
    return timedelta(hours=geo.settings.status_history_hours)


class StatusHistoryPruningLoop:
    """Background loop (primary): delete status history past its retention, in batches."""

    name = "status_history_pruning"

    def __init__(self, geo: Geo, worker: Worker | None = None, limit: int = MAX_ROWS_PER_RUN):
        self.geo = geo
        self.limit = limit

    def run_once(self) -> float:
        """One bounded batch; again right away while a batch comes back full."""
        if not self.geo.is_primary():
            return PRUNE_INTERVAL
        older_than = self.geo.clock.now() - retention(self.geo)
        with self.geo.main() as conn:
            deleted = prune_history(conn, older_than, self.limit)
        if deleted:
            log.info("status history pruned", deleted=deleted, older_than=older_than.isoformat())
        return 0.0 if deleted >= self.limit else PRUNE_INTERVAL
