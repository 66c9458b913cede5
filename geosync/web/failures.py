"""Sync and verification failures on this secondary, for `GET /geo_nodes/current/failures`.

Failures of every replicator form one list, in catalog order and then by registry id; each page
is read with state-indexed queries, table by table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Connection, Table, and_, func, select

from geosync.states import SyncState, VerificationState
from geosync.status import iso

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.replicator import Replicator
    from geosync.web.pagination import Page

FAILURE_TYPES = ("sync", "checksum_mismatch", "verification")


def failure_condition(table: Table, failure_type: str) -> ColumnElement[bool]:
    """Registry rows with a failure of `failure_type`."""
    c = table.c
    synced_or_failed = c.state.in_([int(SyncState.SYNCED), int(SyncState.FAILED)])
    if failure_type == "sync":
        return c.state == SyncState.FAILED
    if failure_type == "verification":
        return and_(synced_or_failed, c.verification_state == VerificationState.FAILED)
    return and_(synced_or_failed, c.checksum_mismatch.is_(True))


def list_failures(
    geo: Geo, replicators: list[type[Replicator]], failure_type: str, page: Page
) -> tuple[int, list[dict[str, Any]]]:
    """The total number of failures and the rows of the requested page."""
    with geo.tracking_engine.connect() as conn:
        tables = [(r, geo.tables.registry(r)) for r in replicators]
        counts = [_count(conn, table, failure_type) for _, table in tables]
        skip, wanted = page.offset, page.per_page
        items: list[dict[str, Any]] = []
        for (replicator, table), count in zip(tables, counts, strict=True):
            if wanted == 0:
                break
            if skip >= count:
                skip -= count
                continue
            rows = conn.execute(
                select(table)
                .where(failure_condition(table, failure_type))
                .order_by(table.c.id)
                .offset(skip)
                .limit(wanted)
            )
            found = [failure_json(replicator, dict(row._mapping)) for row in rows]
            items.extend(found)
            wanted -= len(found)
            skip = 0
    return sum(counts), items


def _count(conn: Connection, table: Table, failure_type: str) -> int:
    query = select(func.count()).select_from(table).where(failure_condition(table, failure_type))
    return int(conn.execute(query).scalar_one())


def failure_json(replicator: type[Replicator], row: dict[str, Any]) -> dict[str, Any]:
    """One failed registry as the API shows it."""
    model_record_id = int(row[replicator.registry_foreign_key])
    return {
        "replicable_name": replicator.replicable_name,
        "registry_id": int(row["id"]),
        "model_record_id": model_record_id,
        replicator.registry_foreign_key: model_record_id,
        "state": SyncState(row["state"]).name.lower(),
        "retry_count": row["retry_count"],
        "retry_at": _iso(row["retry_at"]),
        "last_synced_at": _iso(row["last_synced_at"]),
        "last_sync_failure": row["last_sync_failure"],
        "missing_on_primary": bool(row["missing_on_primary"]),
        "verification_state": VerificationState(row["verification_state"]).name.lower(),
        "verification_retry_count": row["verification_retry_count"],
        "verification_failure": row["verification_failure"],
        "checksum_mismatch": bool(row["checksum_mismatch"]),
        "verification_checksum_mismatched": row["verification_checksum_mismatched"],
    }


def _iso(value: Any) -> str | None:
    return None if value is None else iso(value)
