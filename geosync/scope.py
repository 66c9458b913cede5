"""Scope: which replicables a secondary should hold (selective sync and the feature flag)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Select

if TYPE_CHECKING:
    from geosync.nodes import Node
    from geosync.replicator import Replicator


def scoped_query(replicator: type[Replicator], node: Node) -> Select[Any]:
    """Ids of every model row `node` should hold for `replicator`."""
    return replicator.replicables_for_current_secondary(replicator.available_replicables(), node)


def ids_in_scope(
    conn: Connection, replicator: type[Replicator], node: Node, ids: Iterable[int]
) -> set[int]:
    """The subset of `ids` that exist on the primary and are in `node`'s scope."""
    wanted = list(ids)
    if not wanted:
        return set()
    id_column = replicator.model.__table__.c.id
    query = scoped_query(replicator, node).where(id_column.in_(wanted))
    return {int(value) for value in conn.execute(query).scalars()}


def ids_in_range(
    conn: Connection, replicator: type[Replicator], node: Node, low: int, high: int
) -> set[int]:
    """In-scope model ids with `low <= id < high` (one sweep range)."""
    id_column = replicator.model.__table__.c.id
    query = scoped_query(replicator, node).where(id_column >= low, id_column < high)
    return {int(value) for value in conn.execute(query).scalars()}


def describe_scope(node: Node) -> str:
    """A sentence describing `node`'s selective sync, for `explain` and status."""
    if node.selective_sync_type == "namespaces":
        ids = ", ".join(str(i) for i in node.selective_sync_namespace_ids) or "none"
        return f"selective sync by namespaces ({ids})"
    if node.selective_sync_type == "shards":
        shards = ", ".join(node.selective_sync_shards) or "none"
        return f"selective sync by shards ({shards})"
    return "everything (no selective sync)"
