"""Alembic environment for the main database's framework tables; run by `geosync db upgrade`."""

from alembic import context

from geosync.db.schema import VERSION_TABLE
from geosync.db.tables import main_metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=main_metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
