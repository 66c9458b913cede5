"""Batched deletes: remove old rows a bounded batch at a time, so no run holds a long transaction.

The primary's pruning loops (the event log, the status history) each delete the oldest rows past
their bound with one statement per run and run again at once while a batch comes back full.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, ColumnElement, Connection, Table, delete, select


def delete_first(
    conn: Connection,
    table: Table,
    where: ColumnElement[bool],
    order_by: tuple[ColumnElement[Any] | Column[Any], ...],
    limit: int,
) -> int:
    """Delete up to `limit` rows of `table` matching `where`, first in `order_by`; how many went."""
    key = table.c.id
    doomed = select(key).where(where).order_by(*order_by).limit(limit).scalar_subquery()
    return int(conn.execute(delete(table).where(key.in_(doomed))).rowcount)
