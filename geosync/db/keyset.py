"""Keyset pages: walk a table by its key in bounded, ordered slices (never OFFSET, never all).

Operators' bulk requests and bulk jobs read the keys of the next slice of rows, change exactly
those in one short transaction, and start the next slice after the last key they saw.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, Connection, select


def next_keys(conn: Connection, key: Column[Any], where: Any, after: int, limit: int) -> list[int]:
    """Up to `limit` values of `key` above `after` of the rows matching `where`, in key order."""
    query = select(key).where(where, key > after).order_by(key).limit(limit)
    return [int(found) for found in conn.execute(query).scalars()]
