"""Attempt history (`geo_sync_attempts`): every finished sync or verification attempt, newest
20 per item, so an operator can see why something is not replicated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, bindparam, delete, func, insert, select, tuple_, union_all

from geosync.db.row_sets import RowSet
from geosync.db.statements import built_once
from geosync.db.tables import geo_sync_attempts
from geosync.states import cut

KEEP = 20
Kind = Literal["sync", "verification"]
#: Why an attempt failed, for operators and for `explain`.
#: `permanent`: retrying cannot fix it (an unsafe path, not a regular file, a record gone, a
#: full disk); it backs off further and `explain` names what to fix.
ERROR_CLASSES = (
    "transient",
    "permanent",
    "primary_missing",
    "checksum_mismatch",
    "auth",
    "config",
    "unknown",
    "site_unreachable",
)
PERMANENT = "permanent"
#: The outcome of an attempt whose worker stopped it or died during it: the item is due again
#: at once with its retry count kept, since an interruption is not the item's fault.
INTERRUPTED = "interrupted"
#: The outcome (and error class) of a sync that failed because its site was unreachable (the
#: primary, or this site's copy of its database: `geosync.secondary.reachability`): the item is
#: due again, with its retry count kept, as soon as the site answers.
SITE_UNREACHABLE = "site_unreachable"


@dataclass(frozen=True)
class Attempt:
    """One finished attempt."""

    replicable_name: str
    model_record_id: int
    kind: Kind
    started_at: datetime
    finished_at: datetime
    outcome: str
    error_class: str | None = None
    message: str | None = None
    bytes: int | None = None


def record_attempt(conn: Connection, attempt: Attempt) -> None:
    """Append `attempt` and keep only the newest `KEEP` of its item."""
    record_attempts(conn, [attempt])


def record_attempts(conn: Connection, attempts: Sequence[Attempt]) -> None:
    """Append `attempts` in one statement, then keep only the newest `KEEP` of each item.

    Syncs settle in groups; one insert and one prune per group keep the attempt history from
    costing more round trips than the registry updates themselves.
    """
    if not attempts:
        return
    over_the_limit, prune = _prune_statements()
    if conn.dialect.name == "postgresql":
        # Most items are far from `KEEP` attempts: the insert also finds the few that are over.
        statement, row_set = _insert_finding_over()
        rows = [list(_values(attempt).values()) for attempt in attempts]
        over = conn.execute(statement, {row_set.name: row_set.value(conn.dialect, rows)}).all()
    else:
        conn.execute(insert(geo_sync_attempts), [_values(attempt) for attempt in attempts])
        items = sorted({(a.replicable_name, a.model_record_id) for a in attempts})
        over = conn.execute(over_the_limit, {"items": items}).all()
    if over:
        conn.execute(prune, {"items": [tuple(row) for row in over]})


#: The inserted columns, in the order of `_values`.
_COLUMNS = [
    (name, geo_sync_attempts.c[name].type)
    for name in (
        "replicable_name",
        "model_record_id",
        "kind",
        "started_at",
        "finished_at",
        "outcome",
        "error_class",
        "message",
        "bytes",
    )
]


@built_once
def _insert_finding_over() -> tuple[Any, RowSet]:
    """PostgreSQL: `WITH new AS (INSERT … RETURNING item) SELECT` the items that now have more
    than `KEEP` attempts, in one round trip. The select sees the table as it was before the
    insert, so it counts the new rows from `new` beside the stored ones."""
    t = geo_sync_attempts
    row_set = RowSet("attempts", _COLUMNS)
    rows = row_set.table("postgresql")
    names = [name for name, _type in _COLUMNS]
    new = (
        insert(t)
        .from_select(names, select(*[rows.c[name] for name in names]))
        .returning(t.c.replicable_name, t.c.model_record_id)
        .cte("new")
    )
    item = tuple_(t.c.replicable_name, t.c.model_record_id)
    stored = select(t.c.replicable_name, t.c.model_record_id).where(
        item.in_(select(new.c.replicable_name, new.c.model_record_id))
    )
    both = union_all(stored, select(new.c.replicable_name, new.c.model_record_id)).subquery()
    over = (
        select(both.c.replicable_name, both.c.model_record_id)
        .group_by(both.c.replicable_name, both.c.model_record_id)
        .having(func.count() > KEEP)
    )
    return over, row_set


@built_once
def _prune_statements() -> tuple[Any, Any]:
    """The prune statements, built once: building costs more than running them."""
    t = geo_sync_attempts
    item = tuple_(t.c.replicable_name, t.c.model_record_id)
    items: Any = bindparam("items", expanding=True)
    over = (
        select(t.c.replicable_name, t.c.model_record_id)
        .where(item.in_(items))
        .group_by(t.c.replicable_name, t.c.model_record_id)
        .having(func.count() > KEEP)
    )
    ranked = (
        select(
            t.c.id,
            func.row_number()
            .over(partition_by=(t.c.replicable_name, t.c.model_record_id), order_by=t.c.id.desc())
            .label("rank"),
        )
        .where(item.in_(items))
        .subquery()
    )
    prune = delete(t).where(t.c.id.in_(select(ranked.c.id).where(ranked.c.rank > KEEP)))
    return over, prune


def _values(attempt: Attempt) -> dict[str, Any]:
    return {
        "replicable_name": attempt.replicable_name,
        "model_record_id": attempt.model_record_id,
        "kind": attempt.kind,
        "started_at": attempt.started_at,
        "finished_at": attempt.finished_at,
        "outcome": attempt.outcome,
        "error_class": attempt.error_class,
        "message": cut(attempt.message) if attempt.message else None,
        "bytes": attempt.bytes,
    }


def forget_attempts(conn: Connection, replicable_name: str, model_record_ids: list[int]) -> None:
    """Delete the history of items whose registry rows are deleted: nothing is left to explain,
    and a history nobody can reach would only grow the table."""
    if model_record_ids:
        t = geo_sync_attempts
        conn.execute(
            delete(t).where(
                t.c.replicable_name == replicable_name, t.c.model_record_id.in_(model_record_ids)
            )
        )


def recent_attempts(
    conn: Connection, replicable_name: str, model_record_id: int, limit: int = KEEP
) -> list[Attempt]:
    """The newest attempts of one item, newest first."""
    t = geo_sync_attempts
    rows = conn.execute(
        select(t)
        .where(t.c.replicable_name == replicable_name, t.c.model_record_id == model_record_id)
        .order_by(t.c.id.desc())
        .limit(limit)
    )
    return [
        Attempt(
            r.replicable_name,
            int(r.model_record_id),
            r.kind,
            r.started_at,
            r.finished_at,
            r.outcome,
            r.error_class,
            r.message,
            r.bytes,
        )
        for r in rows
    ]
