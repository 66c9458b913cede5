"""What one site's card on the overview shows, read from its node and its latest status.

A card never claims more than its status checked: a node that has not reported has no counts,
and a count the status left empty (replication off, or the count failed) reads "not counted".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from geosync.status import STALE_AFTER, NodeStatus, format_percentage, percentage

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.nodes import Node
    from geosync.replicator import Replicator


@dataclass(frozen=True)
class Bar:
    """`done` of `total` with the failures among them and the list that shows those."""

    label: str
    done: int
    total: int
    failed: int
    failed_href: str | None

    @property
    def percent(self) -> str:
        """ "97.56%", as the REST API writes it."""
        return format_percentage(percentage(self.done, self.total))


@dataclass(frozen=True)
class TypeRow:
    """One data type on a card; a bar is None when it was not counted or does not apply."""

    plural: str
    count: int | None
    sync: Bar | None
    verification: Bar | None
    verification_enabled: bool
    oldest_unsynced: datetime | None


@dataclass(frozen=True)
class EventLog:
    """The newest event a site sees and, on a secondary, how far its cursor has come."""

    newest_id: int | None
    newest_at: datetime | None
    cursor_id: int | None
    cursor_at: datetime | None

    @property
    def backlog(self) -> int | None:
        """Events not yet processed by the cursor, when both ends are known."""
        if self.newest_id is None or self.cursor_id is None:
            return None
        return max(0, self.newest_id - self.cursor_id)


@dataclass(frozen=True)
class Card:
    """One node's card."""

    node: Node
    current: bool
    status: NodeStatus | None
    stale: bool
    rows: list[TypeRow]
    events: EventLog | None
    oldest_unsynced: datetime | None
    selective_sync: str
    edit_href: str

    @property
    def role(self) -> str:
        """ "primary" or "secondary"."""
        return "primary" if self.node.primary else "secondary"


def cards(geo: Geo, statuses: list[tuple[Node, NodeStatus | None]], now: datetime) -> list[Card]:
    """A card per node, in the order given (the primary first)."""
    return [card(geo, node, status, now) for node, status in statuses]


def card(geo: Geo, node: Node, status: NodeStatus | None, now: datetime) -> Card:
    """The card of `node` with its latest `status` (None: it has not reported)."""
    current = node.name == geo.settings.node_name
    rows = [] if status is None else [_row(node, current, status, r, now) for r in geo.catalog]
    waiting = [row.oldest_unsynced for row in rows if row.oldest_unsynced is not None]
    return Card(
        node=node,
        current=current,
        status=status,
        stale=status is not None and now - status.reported_at > STALE_AFTER,
        rows=rows,
        events=None if status is None else _events(status),
        oldest_unsynced=min(waiting) if waiting else None,
        selective_sync=selective_sync(node),
        edit_href=f"/admin/geo/sites/{node.id}/edit",
    )


def selective_sync(node: Node) -> str:
    """What a node replicates, in words."""
    if node.selective_sync_type == "namespaces":
        ids = ", ".join(str(i) for i in node.selective_sync_namespace_ids) or "none"
        return f"namespaces {ids}"
    if node.selective_sync_type == "shards":
        return f"shards {', '.join(node.selective_sync_shards) or 'none'}"
    return "everything"


def _row(
    node: Node, current: bool, status: NodeStatus, replicator: type[Replicator], now: datetime
) -> TypeRow:
    plural = replicator.replicable_name_plural
    values = _Fields(status.values, replicator.status_field_prefix)
    href = _list_href(node, current, replicator)
    if node.primary:
        sync = None
        verification = values.bar("checksummed", "checksum_total", "checksum_failed", None)
    else:
        sync = values.bar("synced", "registry", "failed", f"{href}?replication_state=failed")
        verification = values.bar(
            "verified",
            "verification_total",
            "verification_failed",
            f"{href}?verification_state=failed",
        )
    age = values.number("oldest_unsynced_age_seconds")
    return TypeRow(
        plural=plural,
        count=values.number("count"),
        sync=sync,
        verification=verification if replicator.verification_enabled else None,
        verification_enabled=replicator.verification_enabled,
        oldest_unsynced=None if age is None else _seconds_before(now, age),
    )


def _list_href(node: Node, current: bool, replicator: type[Replicator]) -> str:
    # A secondary's registries are listed by the secondary itself (GraphQL answers a secondary
    # only for itself), so another site's card links into that site's own admin UI.
    path = replicator.names.admin_path(node.id)
    return path if current else node.url.rstrip("/") + path


class _Fields:
    """One replicator's status fields, read without trusting their shape."""

    def __init__(self, values: dict[str, Any], prefix: str) -> None:
        self.values = values
        self.prefix = prefix

    def number(self, field: str) -> int | None:
        value = self.values.get(self.prefix + field)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return int(value)

    def bar(self, done: str, total: str, failed: str, failed_href: str | None) -> Bar | None:
        counts = [self.number(f"{done}_count"), self.number(f"{total}_count")]
        if counts[0] is None or counts[1] is None:
            return None
        failures = self.number(f"{failed}_count") or 0
        return Bar(done, counts[0], counts[1], failures, failed_href if failures else None)


def _events(status: NodeStatus) -> EventLog:
    def number(field: str) -> int | None:
        value = status.get(field)
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else None

    def moment(field: str) -> datetime | None:
        seconds = number(field)
        return None if seconds is None else datetime.fromtimestamp(seconds, UTC)

    return EventLog(
        newest_id=number("last_event_id"),
        newest_at=moment("last_event_timestamp"),
        cursor_id=number("cursor_last_event_id"),
        cursor_at=moment("cursor_last_event_timestamp"),
    )


def _seconds_before(now: datetime, seconds: int) -> datetime:
    return datetime.fromtimestamp(now.timestamp() - seconds, UTC)
