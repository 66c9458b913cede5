"""`geosync registries`: one type's registry rows on a secondary, as a table or JSON.

An operator finds what is failing (and when it is retried) without a token or SQL; the rows
come from `Registry.newest`, newest first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from geosync.registry import Registry, RegistryRow
from geosync.states import SyncState, VerificationState, cut, state_named

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.replicator import Replicator

#: Characters of `last_sync_failure` a table shows (JSON has it whole).
FAILURE_SHOWN = 60


@dataclass(frozen=True)
class RegistryListing:
    """The rows `geosync registries` found, with what was asked for."""

    replicator: type[Replicator]
    rows: list[RegistryRow]
    state: SyncState | None
    verification: VerificationState | None
    limit: int


def list_registries(
    geo: Geo, name: str, state: str | None, verification: str | None, limit: int
) -> RegistryListing:
    """The newest `limit` registry rows of replicable `name` (singular or plural) on this
    secondary, filtered by state names; bad names and a primary raise geosync errors."""
    replicator = geo.catalog.get(name)
    sync_state = state_named(SyncState, state) if state is not None else None
    verification_state = (
        state_named(VerificationState, verification) if verification is not None else None
    )
    registry = Registry.of_secondary(geo, replicator, "registries")
    with geo.tracking_engine.connect() as conn:
        rows = registry.newest(conn, limit, sync_state, verification_state)
    return RegistryListing(replicator, rows, sync_state, verification_state, limit)


def row_fields(listing: RegistryListing, row: RegistryRow) -> dict[str, Any]:
    """One row's listed fields, states as lower-case names."""
    return {
        "id": row.id,
        "model_record_id": row.values[listing.replicator.registry_foreign_key],
        "state": row.sync_state.name.lower(),
        "verification_state": row.verification.name.lower(),
        "retry_count": row.retry_count,
        "retry_at": row.retry_at,
        "last_synced_at": row.last_synced_at,
        "last_sync_failure": row.last_sync_failure,
    }


def listing_json(listing: RegistryListing) -> list[dict[str, Any]]:
    """The rows as JSON-ready dicts (timestamps as ISO 8601 strings)."""
    return [
        {key: _iso(value) for key, value in row_fields(listing, row).items()}
        for row in listing.rows
    ]


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def listing_table(listing: RegistryListing) -> Table:
    """The rows as a table that fits 100 columns: only the failure column gives way, cut
    with an ellipsis (JSON has the whole text)."""
    table = Table(
        title=_title(listing),
        title_justify="left",
        caption="newest first; times in UTC" if listing.rows else None,
        caption_justify="left",
        box=None,
        pad_edge=False,
    )
    for header in ("id", "record", "state", "verification", "retries"):
        table.add_column(header, no_wrap=True)
    table.add_column("next retry", no_wrap=True)
    table.add_column("last synced", no_wrap=True)
    table.add_column("last failure", min_width=12)  # the one column that shrinks
    for row in listing.rows:
        fields = row_fields(listing, row)
        table.add_row(
            str(fields["id"]),
            str(fields["model_record_id"]),
            fields["state"],
            fields["verification_state"],
            str(fields["retry_count"]),
            _when(fields["retry_at"]),
            _when(fields["last_synced_at"]),
            Text(_short(fields["last_sync_failure"]), no_wrap=True, overflow="ellipsis"),
        )
    return table


def _title(listing: RegistryListing) -> str:
    parts = [f"{listing.replicator.registry_table_name}: {len(listing.rows)} row(s)"]
    if listing.state is not None:
        parts.append(f"state {listing.state.name.lower()}")
    if listing.verification is not None:
        parts.append(f"verification {listing.verification.name.lower()}")
    if len(listing.rows) == listing.limit:
        parts.append(f"limit {listing.limit}")
    return ", ".join(parts)


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%m-%d %H:%M")


def _short(text: str | None) -> str:
    if not text:
        return "-"
    return cut(" ".join(text.split()), FAILURE_SHOWN)
