"""Bulk jobs (`geo_bulk_jobs`) in the tracking database: a secondary's resync and reverify jobs.

Revision ID: tracking_0002
Revises: tracking_0001
"""

import sqlalchemy as sa
from alembic import op

from geosync.db.types import JSONDoc, UTCDateTime

revision = "tracking_0002"
down_revision = "tracking_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "geo_bulk_jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("replicable_name", sa.String(255), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("filters", JSONDoc, nullable=False),
        sa.Column("created_by", sa.String(255)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("processed", sa.BigInteger, nullable=False),
        sa.Column("total", sa.BigInteger, nullable=False),
        sa.Column("last_key", sa.BigInteger),
        sa.Column("error", sa.String(255)),
        sa.Column("active_key", sa.String(255)),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("started_at", UTCDateTime),
        sa.Column("finished_at", UTCDateTime),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_geo_bulk_jobs"),
        sa.UniqueConstraint("active_key", name="uq_geo_bulk_jobs_active_key"),
    )
    op.create_index("ix_geo_bulk_jobs_state", "geo_bulk_jobs", ["state"])


def downgrade() -> None:
    op.drop_index("ix_geo_bulk_jobs_state", table_name="geo_bulk_jobs")
    op.drop_table("geo_bulk_jobs")
