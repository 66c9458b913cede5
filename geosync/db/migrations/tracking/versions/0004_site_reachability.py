"""Whether the primary and this site's copy of its database answer (`geo_site_reachability`).

Revision ID: tracking_0004
Revises: tracking_0003
"""

import sqlalchemy as sa
from alembic import op

from geosync.db.types import UTCDateTime

revision = "tracking_0004"
down_revision = "tracking_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "geo_site_reachability",
        sa.Column("target", sa.String(32), nullable=False),
        sa.Column("reachable", sa.Boolean, nullable=False),
        sa.Column("changed_at", UTCDateTime, nullable=False),
        sa.Column("last_reachable_at", UTCDateTime),
        sa.Column("checked_at", UTCDateTime, nullable=False),
        sa.Column("failed_probes", sa.Integer, nullable=False),
        sa.Column("next_probe_at", UTCDateTime),
        sa.Column("error", sa.String(255)),
        sa.PrimaryKeyConstraint("target", name="pk_geo_site_reachability"),
    )


def downgrade() -> None:
    op.drop_table("geo_site_reachability")
