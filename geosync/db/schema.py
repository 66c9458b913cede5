"""`geosync db upgrade`: framework tables by Alembic, derived tables from the catalog.

The primary upgrades its main database; a secondary upgrades its tracking database only (its
main database is a read-only replica of the primary's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Connection, Engine, Index, MetaData, Table, inspect, text
from sqlalchemy.engine.reflection import Inspector
from sqlalchemy.schema import CreateColumn

from geosync.errors import ConfigurationError

if TYPE_CHECKING:
    from geosync.app import Geo

VERSION_TABLE = "geosync_alembic_version"
MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass
class UpgradeReport:
    """What `upgrade` changed: revisions applied, derived tables, columns and indexes created."""

    applied: dict[str, str | None] = field(default_factory=dict)
    created_tables: list[str] = field(default_factory=list)
    created_indexes: list[str] = field(default_factory=list)
    created_columns: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether anything was changed."""
        return (
            bool(self.created_tables)
            or bool(self.created_indexes)
            or bool(self.created_columns)
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
        report.created_columns.extend(_create_missing_columns(connection, present))
        report.created_indexes.extend(_create_missing_indexes(connection, present))


def _create_missing_columns(connection: Connection, tables: list[Table]) -> list[str]:
    """Add the columns a newer geosync declares on derived tables that already exist, as
    `table.column`; each has a server default, which fills the rows already there."""
    created = []
    for column in _missing_columns(inspect(connection), tables):
        ddl = CreateColumn(column).compile(dialect=connection.dialect)
        table = connection.dialect.identifier_preparer.format_table(column.table)
        connection.execute(text(f"ALTER TABLE {table} ADD COLUMN {ddl}"))
        created.append(f"{column.table.name}.{column.name}")
    return created


def _missing_columns(inspector: Inspector, tables: list[Table]) -> list[Column[Any]]:
    """The declared columns of `tables` (which exist) that the database lacks."""
    missing: list[Column[Any]] = []
    for table in tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        missing.extend(column for column in table.columns if column.name not in present)
    return missing


def _create_missing_indexes(connection: Connection, tables: list[Table]) -> list[str]:
    """Create the indexes a newer geosync declares on derived tables that already exist."""
    created = []
    for index in _missing_indexes(inspect(connection), tables):
        index.create(connection)
        created.append(str(index.name))
    return created


def _missing_indexes(inspector: Inspector, tables: list[Table]) -> list[Index]:
    """The declared indexes of `tables` (which exist) that the database lacks."""
    missing: list[Index] = []
    for table in tables:
        present = {index["name"] for index in inspector.get_indexes(table.name)}
        missing.extend(
            index
            for index in sorted(table.indexes, key=lambda i: str(i.name))
            if index.name not in present
        )
    return missing


@dataclass(frozen=True)
class SchemaState:
    """How far one database is from what `geosync db upgrade` would make it."""

    revision: str | None
    head: str | None
    missing_tables: list[str]
    missing_indexes: list[str]
    missing_columns: list[str] = field(default_factory=list)

    @property
    def current(self) -> bool:
        """Whether `geosync db upgrade` would change nothing."""
        return (
            self.revision == self.head
            and not self.missing_tables
            and not self.missing_indexes
            and not self.missing_columns
        )

    def describe(self) -> str:
        """One line: what is out of date (or that nothing is)."""
        if self.current:
            return f"schema current (revision {self.head})"
        parts = []
        if self.revision is None:
            parts.append("never upgraded")
        elif self.revision != self.head:
            parts.append(f"at revision {self.revision}, the current one is {self.head}")
        if self.missing_tables:
            parts.append("missing tables " + ", ".join(self.missing_tables))
        if self.missing_columns:
            parts.append("missing columns " + ", ".join(self.missing_columns))
        if self.missing_indexes:
            parts.append("missing indexes " + ", ".join(self.missing_indexes))
        return "; ".join(parts)


def schema_state(engine: Engine, database: str, derived: MetaData) -> SchemaState:
    """Compare `database` (`main` or `tracking`) with the framework head and the derived
    tables of the catalog, reading only (a secondary's main database is a read-only replica)."""
    with engine.connect() as connection:
        revision = current_revision(connection)
        inspector = inspect(connection)
        existing = set(inspector.get_table_names())
        missing = [t.name for t in derived.sorted_tables if t.name not in existing]
        present = [t for t in derived.sorted_tables if t.name in existing]
        indexes = [str(index.name) for index in _missing_indexes(inspector, present)]
        columns = [f"{c.table.name}.{c.name}" for c in _missing_columns(inspector, present)]
    return SchemaState(revision, head_revision(database), missing, indexes, columns)


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
