"""Tables derived from the catalog: a registry per replicator (tracking database) and a
verification state table per replicator that keeps its state apart from the model (main).

These are never written by hand: `geosync db upgrade` creates them from the catalog, and adds
to existing ones the indexes and the columns a newer geosync declares (a new column needs a
server default, so rows already there get a value).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import (
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    literal_column,
)

from geosync.db.tables import NAMING
from geosync.db.types import BigIntKey, UTCDateTime

#: Sync states of rows not (yet) synced: pending, started, failed (`geosync.states.SyncState`).
UNSYNCED_STATES = (0, 1, 3)

if TYPE_CHECKING:
    from geosync.catalog import Catalog
    from geosync.replicator import Replicator


def verification_columns() -> list[Column[object]]:
    """The verification state columns shared by registries, state tables and models."""
    return [
        Column("verification_state", Integer, nullable=False, default=0, server_default="0"),
        Column("verification_started_at", UTCDateTime),
        Column("verification_retry_at", UTCDateTime),
        Column("verification_retry_count", Integer, nullable=False, default=0, server_default="0"),
        Column("verified_at", UTCDateTime),
        Column("verification_checksum", String(64)),
        Column("verification_failure", String(255)),
    ]


def registry_table(metadata: MetaData, replicator: type[Replicator]) -> Table:
    """The `<name>_registry` table of ARCHITECTURE.md §5."""
    name = replicator.registry_table_name
    table = Table(
        name,
        metadata,
        Column("id", BigIntKey, primary_key=True, autoincrement=True),
        Column(replicator.registry_foreign_key, BigIntKey, nullable=False, unique=True),
        Column("created_at", UTCDateTime, nullable=False),
        Column("state", Integer, nullable=False, default=0, server_default="0"),
        Column("retry_count", Integer, nullable=False, default=0, server_default="0"),
        Column("retry_at", UTCDateTime),
        Column("last_synced_at", UTCDateTime),
        Column("last_sync_failure", String(255)),
        Column("missing_on_primary", Boolean, nullable=False, default=False, server_default="0"),
        *verification_columns(),
        Column("verification_checksum_mismatched", String(64)),
        Column("checksum_mismatch", Boolean, nullable=False, default=False, server_default="0"),
        # Beyond GitLab: where the copy lives (orphans are always found) and when the change
        # that made the row pending happened on the primary (end-to-end lag).
        Column("local_path", Text),
        Column("pending_since", UTCDateTime),
        # When the scrub last found this copy bad (status counts those within the period).
        Column("scrub_found_bad_at", UTCDateTime),
        # The worker process that claimed the row's sync, and its verification: a dead
        # worker's rows are taken over as soon as its death is known (`geosync.liveness`).
        Column("claimed_by", String(255)),
        Column("verification_claimed_by", String(255)),
        # Bumped by every claim: a finished sync settles only the claim that started it.
        Column("claim_generation", Integer, nullable=False, default=0, server_default="0"),
        # A newer change arrived while the row's sync ran: the row stays started (its capacity
        # slot held) and the sync's end makes it pending (`Registry.release_overtaken`).
        Column("resync_requested", Boolean, nullable=False, default=False, server_default="0"),
        sqlite_autoincrement=True,
    )
    c = table.c
    Index(f"ix_{name}_retry_at", c.retry_at)
    Index(f"ix_{name}_state", c.state)
    # The status counts rows per (state, verification state) from this index alone.
    Index(f"ix_{name}_states", c.state, c.verification_state)
    # The status's oldest unsynced item: one step along each of these, not a read of every
    # unsynced row (`Registry.oldest_unsynced_since` repeats their conditions).
    unsynced = c.state.in_([literal_column(str(s)) for s in UNSYNCED_STATES])
    Index(
        f"ix_{name}_unsynced_since",
        c.pending_since,
        postgresql_where=unsynced,
        sqlite_where=unsynced,
    )
    unsynced_unchanged = and_(unsynced, c.pending_since.is_(None))
    Index(
        f"ix_{name}_unsynced_created",
        c.created_at,
        postgresql_where=unsynced_unchanged,
        sqlite_where=unsynced_unchanged,
    )
    # The scheduler claims pending rows in id order: without this index PostgreSQL sorted
    # every pending row on each claim.
    pending = c.state == 0
    Index(f"ix_{name}_pending", c.id, postgresql_where=pending, sqlite_where=pending)
    synced = c.state == 2
    failed_where = and_(synced, c.verification_state == 3)
    needs_where = and_(synced, c.verification_state.in_([0, 3]))
    pending_where = and_(synced, c.verification_state == 0)
    Index(
        f"ix_{name}_verification_failed",
        c.verification_retry_at,
        postgresql_where=failed_where,
        sqlite_where=failed_where,
    )
    Index(
        f"ix_{name}_needs_verification",
        c.verification_state,
        postgresql_where=needs_where,
        sqlite_where=needs_where,
    )
    Index(
        f"ix_{name}_verification_pending",
        c.verified_at,
        postgresql_where=pending_where,
        sqlite_where=pending_where,
    )
    # The scrub claims verified copies oldest verification first.
    verified_where = and_(synced, c.verification_state == 2)
    Index(
        f"ix_{name}_verified",
        c.verified_at,
        postgresql_where=verified_where,
        sqlite_where=verified_where,
    )
    found_bad = c.scrub_found_bad_at.is_not(None)
    Index(
        f"ix_{name}_scrub_found_bad",
        c.scrub_found_bad_at,
        postgresql_where=found_bad,
        sqlite_where=found_bad,
    )
    # Who holds started verifications, read by every stuck sweep: only started rows.
    verifying = c.verification_state == 1
    Index(
        f"ix_{name}_verification_started",
        c.verification_claimed_by,
        postgresql_where=verifying,
        sqlite_where=verifying,
    )
    return table


def states_table(metadata: MetaData, replicator: type[Replicator]) -> Table:
    """The primary's `<name>_states` table (separate-table option), keyed by the model id."""
    model_table: Table = replicator.model.__table__
    key = replicator.registry_foreign_key
    table = Table(
        replicator.states_table_name,
        metadata,
        Column(
            key,
            BigIntKey,
            ForeignKey(model_table.c.id, ondelete="CASCADE"),
            primary_key=True,
            autoincrement=False,
        ),
        *verification_columns(),
    )
    Index(f"ix_{table.name}_verification_state", table.c.verification_state, table.c.verified_at)
    Index(f"ix_{table.name}_retry_at", table.c.verification_retry_at)
    return table


def uses_state_table(replicator: type[Replicator]) -> bool:
    """Whether the replicator keeps primary verification state in a `<name>_states` table."""
    from geosync.model import VerificationStateMixin

    return replicator.verification_enabled and not issubclass(
        replicator.model, VerificationStateMixin
    )


class DerivedTables:
    """The derived tables of one catalog: registries (tracking) and state tables (main)."""

    def __init__(self, catalog: Catalog) -> None:
        self.tracking = MetaData(naming_convention=NAMING)
        self.main = MetaData(naming_convention=NAMING)
        self.registries: dict[str, Table] = {}
        self.states: dict[str, Table] = {}
        for replicator in catalog:
            self.registries[replicator.replicable_name] = registry_table(self.tracking, replicator)
            if uses_state_table(replicator):
                self.states[replicator.replicable_name] = states_table(self.main, replicator)

    def registry(self, replicator: type[Replicator]) -> Table:
        """The registry table of `replicator`."""
        return self.registries[replicator.replicable_name]

    def state(self, replicator: type[Replicator]) -> Table | None:
        """The `<name>_states` table of `replicator`, or None when it uses model columns."""
        return self.states.get(replicator.replicable_name)
