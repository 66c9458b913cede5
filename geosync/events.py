"""The primary's event log (`geo_events`): writing events as a transactional outbox.

An event is written only on the primary, only when at least one secondary node exists and only
when the replicator's feature flag is on; it always joins the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, bindparam, exists, false, insert, select, true

from geosync.db.statements import built_once
from geosync.db.tables import geo_events, geo_nodes
from geosync.flags import effective_flag, stored_flag
from geosync.primary.changes import keep_verification_current

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.replicator import Replicator

EventRow = tuple[type["Replicator"], str, dict[str, Any]]


def published_types(
    geo: Geo, connection: Connection, replicators: Sequence[type[Replicator]]
) -> set[type[Replicator]]:
    """Which of `replicators` this site publishes events for: it is the primary, it has a
    secondary and the type's flag is on. One query answers all of it, in the caller's
    transaction.
    """
    unique = tuple(dict.fromkeys(replicators))
    if not unique:
        return set()
    statement = _publication_statement(unique)
    publishing, *stored = connection.execute(statement, {"node_name": geo.settings.node_name}).one()
    if not publishing:
        return set()
    return {r for r, value in zip(unique, stored, strict=True) if effective_flag(r, value)}


@built_once
def _publication_statement(replicators: tuple[type[Replicator], ...]) -> Any:
    """`SELECT <primary with a secondary>, <stored flag of each replicator>`, built once."""
    nodes = geo_nodes
    primary_here = exists().where(nodes.c.name == bindparam("node_name"), nodes.c.primary == true())
    a_secondary = exists().where(nodes.c.primary == false())
    return select(and_(primary_here, a_secondary), *[stored_flag(r) for r in replicators])


def publish_events(
    geo: Geo,
    connection: Connection,
    rows: Sequence[EventRow],
    *,
    published: Collection[type[Replicator]] | None = None,
    ids: bool = True,
) -> list[int]:
    """Write `rows` to the event log in `connection`'s transaction; returns the new event ids.

    `published` is what `published_types` answered, for a caller that read it moments ago (a
    busy loop reads it once a second instead of once per batch); by default it is read here.
    Without `ids` nothing is returned and the rows go in as one plain multi-row insert: SQLite
    cannot return the ids of a multi-row insert in order, so with them it inserts row by row.
    """
    for replicator_class, event_name, _payload in rows:
        replicator_class.check_event(event_name)
    # Changed records need new checksums, in this very transaction (wherever the main
    # database is writable, whether or not events are published).
    keep_verification_current(geo, connection, rows)
    if not rows:
        return []
    if published is None:
        enabled = published_types(geo, connection, [row[0] for row in rows])
    else:
        enabled = set(published)
    now = geo.clock.now()
    values = [
        {
            "replicable_name": replicator_class.replicable_name,
            "event_name": event_name,
            "payload": payload,
            "created_at": now,
        }
        for replicator_class, event_name, payload in rows
        if replicator_class in enabled
    ]
    if not values:
        return []
    if not ids:
        connection.execute(insert(geo_events), values)
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
