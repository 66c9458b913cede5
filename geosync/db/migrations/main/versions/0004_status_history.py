"""Status history (`geo_node_status_history`): each node's per-type counts, one row a minute.

Revision ID: main_0004
Revises: main_0003
"""

import sqlalchemy as sa
from alembic import op

from geosync.db.types import BigIntKey, JSONDoc, UTCDateTime

revision = "main_0004"
down_revision = "main_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "geo_node_status_history",
        sa.Column("id", BigIntKey, primary_key=True, autoincrement=True),
        sa.Column("geo_node_id", sa.Integer, nullable=False),
        sa.Column("recorded_at", UTCDateTime, nullable=False),
        sa.Column("counts", JSONDoc, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_geo_node_status_history"),
        sa.UniqueConstraint(
            "geo_node_id",
            "recorded_at",
            name="uq_geo_node_status_history_geo_node_id_recorded_at",
        ),
        sa.ForeignKeyConstraint(
            ["geo_node_id"],
            ["geo_nodes.id"],
            name="fk_geo_node_status_history_geo_node_id_geo_nodes",
            ondelete="CASCADE",
        ),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_geo_node_status_history_recorded_at", "geo_node_status_history", ["recorded_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_geo_node_status_history_recorded_at", table_name="geo_node_status_history")
    op.drop_table("geo_node_status_history")
