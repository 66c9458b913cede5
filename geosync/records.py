"""Loading an application's model records: the one place geosync reads them.

Records come back detached (usable after their session is gone, on any thread) and keyed by id;
a missing id is simply absent. Syncs, verification and the primary's batch answers load records
many at a time, many times a second, so each model's `IN` statement is built once and the ids
go in slices every database accepts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, select
from sqlalchemy.orm import Session

from geosync.db.statements import built_once

#: Ids per `IN` list: well inside SQLite's and PostgreSQL's bound-parameter limits.
IN_CHUNK = 500


def in_chunks(ids: Sequence[int]) -> Iterator[list[int]]:
    """`ids` in slices small enough for an IN list on every database."""
    for start in range(0, len(ids), IN_CHUNK):
        yield list(ids[start : start + IN_CHUNK])


def load_records(bind: Connection | Engine, model: type[Any], ids: Sequence[int]) -> dict[int, Any]:
    """The records of `model` with `ids`, detached, by id, read on `bind`.

    Given a connection they are read in its transaction (a claim's, say), saving a connection.
    """
    mapper = model.__mapper__
    records: dict[int, Any] = {}
    with Session(bind, expire_on_commit=False) as session:
        for chunk in in_chunks(list(ids)):
            for record in session.scalars(_by_ids(model), {"ids": chunk}):
                records[int(mapper.primary_key_from_instance(record)[0])] = record
        session.expunge_all()
    return records


def load_record(bind: Connection | Engine, model: type[Any], record_id: int) -> Any | None:
    """The record of `model` with `record_id`, detached, or None."""
    with Session(bind, expire_on_commit=False) as session:
        record = session.get(model, record_id)
        if record is not None:
            session.expunge(record)
        return record


@built_once
def _by_ids(model: type[Any]) -> Any:
    """`SELECT model WHERE <primary key> IN :ids`, built once per model."""
    key = model.__mapper__.primary_key[0]
    return select(model).where(key.in_(bindparam("ids", expanding=True)))
