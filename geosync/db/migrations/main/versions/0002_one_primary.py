"""At most one primary node, enforced by a partial unique index.

Revision ID: main_0002
Revises: main_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "main_0002"
down_revision = "main_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    primary = sa.column("primary", sa.Boolean)
    op.create_index(
        "uq_geo_nodes_one_primary",
        "geo_nodes",
        ["primary"],
        unique=True,
        postgresql_where=primary,
        sqlite_where=primary,
    )


def downgrade() -> None:
    op.drop_index("uq_geo_nodes_one_primary", table_name="geo_nodes")
