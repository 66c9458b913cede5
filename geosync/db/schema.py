"""`geosync db upgrade`: framework tables by Alembic, derived tables from the catalog.

The primary upgrades its main database; a secondary upgrades its tracking database only (its
main database is a read-only replica of the primary's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, MetaData, Table, inspect

from geosync.errors import ConfigurationError

if TYPE_CHECKING:
    from geosync.app import Geo

VERSION_TABLE = "geosync_alembic_version"
MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass
class UpgradeReport:
    """What `upgrade` changed: revisions applied, derived tables and indexes created."""

    applied: dict[str, str | None] = field(default_factory=dict)
    created_tables: list[str] = field(default_factory=list)
    created_indexes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether anything was changed."""
        return (
            bool(self.created_tables)
            or bool(self.created_indexes)
            or any(v is not None for v in self.applied.values())
        )


def _config(database: str, connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS / database))
    config.attributes["connection"] = connection
    return config


def current_revision(connection: Connection) -> str | None:
    """The framework revision a database is at, or None if never upgraded."""
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def head_revision(database: str) -> str | None:
    """The newest framework revision of `database` (`main` or `tracking`)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS / database))
    return ScriptDirectory.from_config(config).get_current_head()


def _upgrade_one(engine: Engine, database: str, derived: MetaData, report: UpgradeReport) -> None:
    with engine.begin() as connection:
        before = current_revision(connection)
        command.upgrade(_config(database, connection), "head")
        after = current_revision(connection)
        report.applied[database] = after if after != before else None
        existing = set(inspect(connection).get_table_names())
        _require_model_tables(derived, existing)
        missing = [t for t in derived.sorted_tables if t.name not in existing]
        derived.create_all(connection, tables=missing)
        report.created_tables.extend(t.name for t in missing)
        present = [t for t in derived.sorted_tables if t.name in existing]
        report.created_indexes.extend(_create_missing_indexes(connection, present))


def _create_missing_indexes(connection: Connection, tables: list[Table]) -> list[str]:
    """Create the indexes a newer geosync declares on derived tables that already exist."""
    inspector = inspect(connection)
    created = []
    for table in tables:
        present = {index["name"] for index in inspector.get_indexes(table.name)}
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            if index.name not in present:
                index.create(connection)
                created.append(str(index.name))
    return created


def _require_model_tables(derived: MetaData, existing: set[str]) -> None:
    for table in derived.sorted_tables:
        for key in table.foreign_keys:
            target = key.column.table.name
            if target not in existing:
                raise ConfigurationError(
                    f"table {target!r} does not exist yet: {table.name!r} refers to it;"
                    " run the application's own migrations before `geosync db upgrade`"
                )


def upgrade(geo: Geo) -> UpgradeReport:
    """Bring this site's databases to the current schema; running it twice changes nothing."""
    report = UpgradeReport()
    if not geo.main_readonly:
        _upgrade_one(geo.main_engine, "main", geo.tables.main, report)
    if geo.has_tracking_database:
        _upgrade_one(geo.tracking_engine, "tracking", geo.tables.tracking, report)
    return report
