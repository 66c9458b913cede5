"""Worker liveness leases name their holder's process (`geo_leases.process`).

Revision ID: tracking_0003
Revises: tracking_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "tracking_0003"
down_revision = "tracking_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("geo_leases") as batch:
        batch.add_column(sa.Column("process", sa.String(255)))


def downgrade() -> None:
    with op.batch_alter_table("geo_leases") as batch:
        batch.drop_column("process")
