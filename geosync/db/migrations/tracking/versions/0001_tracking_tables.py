"""Framework tables of the tracking database: cursor, leases, gaps, attempt history.

Revision ID: tracking_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from geosync.db.types import BigIntKey, UTCDateTime

revision = "tracking_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "geo_event_log_state",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("event_id", BigIntKey, nullable=False),
        sa.Column("pruned_behind", sa.Boolean, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_geo_event_log_state"),
    )
    op.create_table(
        "geo_leases",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_geo_leases"),
    )
    op.create_table(
        "geo_event_gaps",
        sa.Column("event_id", BigIntKey, nullable=False, autoincrement=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_geo_event_gaps"),
    )
    op.create_index("ix_geo_event_gaps_created_at", "geo_event_gaps", ["created_at"])
    op.create_table(
        "geo_sync_attempts",
        sa.Column("id", BigIntKey, primary_key=True, autoincrement=True),
        sa.Column("replicable_name", sa.String(255), nullable=False),
        sa.Column("model_record_id", BigIntKey, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime, nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("error_class", sa.String(32)),
        sa.Column("message", sa.String(255)),
        sa.Column("bytes", BigIntKey),
        sa.PrimaryKeyConstraint("id", name="pk_geo_sync_attempts"),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_geo_sync_attempts_item",
        "geo_sync_attempts",
        ["replicable_name", "model_record_id", "id"],
    )


def downgrade() -> None:
    for table in ("geo_sync_attempts", "geo_event_gaps", "geo_leases", "geo_event_log_state"):
        op.drop_table(table)
