"""Framework tables: the primary-side tables in the main database and the tracking tables.

Both sets are versioned with Alembic (``geosync/db/migrations``); a test keeps the migrations
and these definitions equal. Tables derived from replicators live in `geosync.db.derived`.
`geo_bulk_jobs` is in both: a site's bulk jobs live in the database that holds the state they
change (the primary's main database, a secondary's tracking database).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from geosync.db.types import BigIntKey, JSONDoc, UTCDateTime

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

main_metadata = MetaData(naming_convention=NAMING)
tracking_metadata = MetaData(naming_convention=NAMING)

geo_nodes = Table(
    "geo_nodes",
    main_metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("url", String(255), nullable=False),
    Column("internal_url", String(255)),
    Column("primary", Boolean, nullable=False, default=False),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("files_max_capacity", Integer, nullable=False, default=10),
    Column("repos_max_capacity", Integer, nullable=False, default=25),
    Column("verification_max_capacity", Integer, nullable=False, default=100),
    Column("container_repositories_max_capacity", Integer, nullable=False, default=10),
    Column("selective_sync_type", String(16)),
    Column("selective_sync_shards", JSONDoc, nullable=False, default=list),
    Column("selective_sync_namespace_ids", JSONDoc, nullable=False, default=list),
    Column("minimum_reverification_interval", Integer, nullable=False, default=7),
    Column("sync_object_storage", Boolean, nullable=False, default=False),
    Column("access_key", String(64), nullable=False, unique=True),
    Column("encrypted_secret_access_key", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)
#: At most one primary, held by the database too: two operators promoting nodes at once would
#: each pass `NodeStore`'s check, and a second primary makes every secondary follow the wrong site.
Index(
    "uq_geo_nodes_one_primary",
    geo_nodes.c.primary,
    unique=True,
    postgresql_where=geo_nodes.c.primary,
    sqlite_where=geo_nodes.c.primary,
)

geo_node_statuses = Table(
    "geo_node_statuses",
    main_metadata,
    Column("id", Integer, primary_key=True),
    Column(
        "geo_node_id",
        Integer,
        ForeignKey("geo_nodes.id", ondelete="CASCADE"),
        nullable=False,
        unique=True,
    ),
    Column("status", JSONDoc, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

#: A node's per-type counts, at most one row per node and minute, kept for
#: `status_history_hours` (`geosync.status_history`): the admin UI's activity charts.
geo_node_status_history = Table(
    "geo_node_status_history",
    main_metadata,
    Column("id", BigIntKey, primary_key=True, autoincrement=True),
    Column("geo_node_id", Integer, ForeignKey("geo_nodes.id", ondelete="CASCADE"), nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False, index=True),
    Column("counts", JSONDoc, nullable=False),
    UniqueConstraint("geo_node_id", "recorded_at"),
    sqlite_autoincrement=True,
)

geo_events = Table(
    "geo_events",
    main_metadata,
    Column("id", BigIntKey, primary_key=True, autoincrement=True),
    Column("replicable_name", String(255), nullable=False),
    Column("event_name", String(255), nullable=False),
    Column("payload", JSONDoc, nullable=False),
    Column("created_at", UTCDateTime, nullable=False, index=True),
    sqlite_autoincrement=True,
)

geo_feature_flags = Table(
    "geo_feature_flags",
    main_metadata,
    Column("name", String(255), primary_key=True),
    Column("enabled", Boolean, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

geo_admin_tokens = Table(
    "geo_admin_tokens",
    main_metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(255), nullable=False),
    Column("token_digest", String(128), nullable=False, unique=True),
    Column("admin", Boolean, nullable=False, default=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_used_at", UTCDateTime),
    Column("revoked_at", UTCDateTime),
)

geo_event_log_state = Table(
    "geo_event_log_state",
    tracking_metadata,
    Column("id", Integer, primary_key=True),
    Column("event_id", BigIntKey, nullable=False),
    Column("pruned_behind", Boolean, nullable=False, default=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

geo_leases = Table(
    "geo_leases",
    tracking_metadata,
    Column("name", String(255), primary_key=True),
    Column("holder", String(255), nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    # A worker liveness lease names its holder's process (`geosync.liveness`), so a worker on
    # the same machine can prove the holder dead without waiting for the lease to expire.
    Column("process", String(255)),
)

geo_site_reachability = Table(
    "geo_site_reachability",
    tracking_metadata,
    # `primary` (the primary's web server) or `main_database` (this site's read-only copy of
    # the primary's database); owned by `geosync.secondary.reachability`.
    Column("target", String(32), primary_key=True),
    Column("reachable", Boolean, nullable=False),
    Column("changed_at", UTCDateTime, nullable=False),
    Column("last_reachable_at", UTCDateTime),
    Column("checked_at", UTCDateTime, nullable=False),
    Column("failed_probes", Integer, nullable=False, default=0),
    Column("next_probe_at", UTCDateTime),
    Column("error", String(255)),
)

geo_event_gaps = Table(
    "geo_event_gaps",
    tracking_metadata,
    Column("event_id", BigIntKey, primary_key=True, autoincrement=False),
    Column("created_at", UTCDateTime, nullable=False, index=True),
)

geo_sync_attempts = Table(
    "geo_sync_attempts",
    tracking_metadata,
    Column("id", BigIntKey, primary_key=True, autoincrement=True),
    Column("replicable_name", String(255), nullable=False),
    Column("model_record_id", BigIntKey, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("error_class", String(32)),
    Column("message", String(255)),
    Column("bytes", BigIntKey),
    Index("ix_geo_sync_attempts_item", "replicable_name", "model_record_id", "id"),
    sqlite_autoincrement=True,
)


def bulk_jobs_table(metadata: MetaData) -> Table:
    """The bulk jobs of a site (owned by `geosync.jobs`), built into `metadata`.

    `active_key` is "<replicable>:<action>" while a job is queued or running and NULL after:
    its unique index lets one job per type and action be active at a time, and NULLs never
    collide on SQLite or PostgreSQL.
    """
    return Table(
        "geo_bulk_jobs",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("replicable_name", String(255), nullable=False),
        Column("action", String(16), nullable=False),
        Column("filters", JSONDoc, nullable=False),
        Column("created_by", String(255)),
        Column("state", String(16), nullable=False, index=True),
        Column("processed", BigInteger, nullable=False, default=0),
        Column("total", BigInteger, nullable=False, default=0),
        Column("last_key", BigInteger),
        Column("error", String(255)),
        Column("active_key", String(255), unique=True),
        Column("created_at", UTCDateTime, nullable=False),
        Column("started_at", UTCDateTime),
        Column("finished_at", UTCDateTime),
        Column("updated_at", UTCDateTime, nullable=False),
    )


main_bulk_jobs = bulk_jobs_table(main_metadata)
tracking_bulk_jobs = bulk_jobs_table(tracking_metadata)
