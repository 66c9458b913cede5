"""Attempt history (`geo_sync_attempts`): every finished sync or verification attempt, newest
20 per item, so an operator can see why something is not replicated.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, delete, insert, select

from geosync.db.tables import geo_sync_attempts
from geosync.registry import cut

KEEP = 20
Kind = Literal["sync", "verification"]
#: Why an attempt failed, for operators and for `explain`.
ERROR_CLASSES = ("transient", "primary_missing", "checksum_mismatch", "auth", "config", "unknown")


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
    t = geo_sync_attempts
    values: dict[str, Any] = {
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
    conn.execute(insert(t), values)
    item = (t.c.replicable_name == attempt.replicable_name) & (
        t.c.model_record_id == attempt.model_record_id
    )
    keep = select(t.c.id).where(item).order_by(t.c.id.desc()).limit(KEEP).scalar_subquery()
    conn.execute(delete(t).where(item, t.c.id.not_in(keep)))


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
