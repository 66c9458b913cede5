"""The primary's event log (`geo_events`): writing events as a transactional outbox.

An event is written only on the primary, only when at least one secondary node exists and only
when the replicator's feature flag is on; it always joins the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, insert, select

from geosync.db.tables import geo_events, geo_nodes
from geosync.flags import flag_enabled

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.replicator import Replicator

EventRow = tuple[type["Replicator"], str, dict[str, Any]]

#: Called after events were written, inside the same transaction (verification uses it).
published_hooks: list[Callable[[Geo, Connection, Sequence[EventRow]], None]] = []


def publishing_site(geo: Geo, connection: Connection) -> bool:
    """Whether this site publishes events: it is the primary and has a secondary."""
    # Nodes are few: one query answers both questions.
    nodes = connection.execute(select(geo_nodes.c.name, geo_nodes.c.primary)).all()
    is_primary = any(n.primary and n.name == geo.settings.node_name for n in nodes)
    return is_primary and any(not n.primary for n in nodes)


def publish_events(geo: Geo, connection: Connection, rows: Sequence[EventRow]) -> list[int]:
    """Write `rows` to the event log in `connection`'s transaction; returns the new event ids."""
    for replicator_class, event_name, _payload in rows:
        replicator_class.check_event(event_name)
    for hook in published_hooks:
        hook(geo, connection, rows)
    if not publishing_site(geo, connection):
        return []
    enabled: dict[type[Replicator], bool] = {}
    values = []
    now = geo.clock.now()
    for replicator_class, event_name, payload in rows:
        if replicator_class not in enabled:
            enabled[replicator_class] = flag_enabled(connection, replicator_class)
        if enabled[replicator_class]:
            values.append(
                {
                    "replicable_name": replicator_class.replicable_name,
                    "event_name": event_name,
                    "payload": payload,
                    "created_at": now,
                }
            )
    if not values:
        return []
    # One multi-row INSERT ... RETURNING for the whole flush, ids in parameter order.
    statement = insert(geo_events).returning(geo_events.c.id, sort_by_parameter_order=True)
    return [int(i) for i in connection.execute(statement, values).scalars()]


def publish_event(
    geo: Geo,
    connection: Connection,
    replicator_class: type[Replicator],
    event_name: str,
    payload: dict[str, Any],
) -> int | None:
    """Write one event; returns its id, or None when this site publishes nothing for it."""
    ids = publish_events(geo, connection, [(replicator_class, event_name, payload)])
    return ids[0] if ids else None
