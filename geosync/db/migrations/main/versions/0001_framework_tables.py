"""Framework tables of the main database: nodes, statuses, events, flags, admin tokens.

Revision ID: main_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from geosync.db.types import BigIntKey, JSONDoc, UTCDateTime

revision = "main_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "geo_nodes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("url", sa.String(255), nullable=False),
        sa.Column("internal_url", sa.String(255)),
        sa.Column("primary", sa.Boolean, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("files_max_capacity", sa.Integer, nullable=False),
        sa.Column("repos_max_capacity", sa.Integer, nullable=False),
        sa.Column("verification_max_capacity", sa.Integer, nullable=False),
        sa.Column("container_repositories_max_capacity", sa.Integer, nullable=False),
        sa.Column("selective_sync_type", sa.String(16)),
        sa.Column("selective_sync_shards", JSONDoc, nullable=False),
        sa.Column("selective_sync_namespace_ids", JSONDoc, nullable=False),
        sa.Column("minimum_reverification_interval", sa.Integer, nullable=False),
        sa.Column("sync_object_storage", sa.Boolean, nullable=False),
        sa.Column("access_key", sa.String(64), nullable=False),
        sa.Column("encrypted_secret_access_key", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_geo_nodes"),
        sa.UniqueConstraint("name", name="uq_geo_nodes_name"),
        sa.UniqueConstraint("access_key", name="uq_geo_nodes_access_key"),
    )
    op.create_table(
        "geo_node_statuses",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("geo_node_id", sa.Integer, nullable=False),
        sa.Column("status", JSONDoc, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_geo_node_statuses"),
        sa.UniqueConstraint("geo_node_id", name="uq_geo_node_statuses_geo_node_id"),
        sa.ForeignKeyConstraint(
            ["geo_node_id"],
            ["geo_nodes.id"],
            name="fk_geo_node_statuses_geo_node_id_geo_nodes",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "geo_events",
        sa.Column("id", BigIntKey, primary_key=True, autoincrement=True),
        sa.Column("replicable_name", sa.String(255), nullable=False),
        sa.Column("event_name", sa.String(255), nullable=False),
        sa.Column("payload", JSONDoc, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_geo_events"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_geo_events_created_at", "geo_events", ["created_at"])
    op.create_table(
        "geo_feature_flags",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_geo_feature_flags"),
    )
    op.create_table(
        "geo_admin_tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("token_digest", sa.String(128), nullable=False),
        sa.Column("admin", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("last_used_at", UTCDateTime),
        sa.Column("revoked_at", UTCDateTime),
        sa.PrimaryKeyConstraint("id", name="pk_geo_admin_tokens"),
        sa.UniqueConstraint("token_digest", name="uq_geo_admin_tokens_token_digest"),
    )


def downgrade() -> None:
    for table in (
        "geo_admin_tokens",
        "geo_feature_flags",
        "geo_events",
        "geo_node_statuses",
        "geo_nodes",
    ):
        op.drop_table(table)
