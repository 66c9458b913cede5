"""Feature flags: one per replicator, `geo_<replicable_name>_replication`, in the main database.

A flag without a row takes the replicator's `replication_enabled_by_default`. Flags live on the
primary and reach secondaries through database replication.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, ScalarSelect, select

from geosync.db.tables import geo_feature_flags
from geosync.errors import NotFound

if TYPE_CHECKING:
    from datetime import datetime

    from geosync.catalog import Catalog
    from geosync.replicator import Replicator


@dataclass(frozen=True)
class Flag:
    """A flag's name, its effective value and whether that value is the default."""

    name: str
    enabled: bool
    default: bool
    replicable_name: str

    @property
    def is_default(self) -> bool:
        """Whether no one has set the flag (it takes the replicator's default)."""
        return self.enabled == self.default


def flag_enabled(connection: Connection, replicator: type[Replicator]) -> bool:
    """Whether replication of `replicator`'s type is on."""
    stored = connection.execute(select(stored_flag(replicator))).scalar_one_or_none()
    return effective_flag(replicator, stored)


def stored_flag(replicator: type[Replicator]) -> ScalarSelect[Any]:
    """The stored value of `replicator`'s flag as a SQL expression (NULL without a row), so a
    caller can read it within a larger query.
    """
    table = geo_feature_flags
    return (
        select(table.c.enabled)
        .where(table.c.name == replicator.replication_flag_name)
        .scalar_subquery()
    )


def effective_flag(replicator: type[Replicator], stored: object) -> bool:
    """The flag's value from what `stored_flag` read: the replicator's default without a row."""
    return replicator.replication_enabled_by_default if stored is None else bool(stored)


def list_flags(connection: Connection, catalog: Catalog) -> list[Flag]:
    """Every replicator's flag with its effective value."""
    stored = dict(
        connection.execute(select(geo_feature_flags.c.name, geo_feature_flags.c.enabled)).all()
    )
    flags = []
    for replicator in catalog:
        default = replicator.replication_enabled_by_default
        value = stored.get(replicator.replication_flag_name, default)
        flags.append(
            Flag(replicator.replication_flag_name, bool(value), default, replicator.replicable_name)
        )
    return flags


def set_flag(
    connection: Connection, catalog: Catalog, name: str, enabled: bool, now: datetime
) -> Flag:
    """Turn flag `name` on or off; an unknown name is an error listing the known ones."""
    replicator = _replicator_for_flag(catalog, name)
    table = geo_feature_flags
    updated = connection.execute(
        table.update().where(table.c.name == name).values(enabled=enabled, updated_at=now)
    )
    if updated.rowcount == 0:
        connection.execute(table.insert().values(name=name, enabled=enabled, updated_at=now))
    return Flag(
        name, enabled, replicator.replication_enabled_by_default, replicator.replicable_name
    )


def _replicator_for_flag(catalog: Catalog, name: str) -> type[Replicator]:
    for replicator in catalog:
        if replicator.replication_flag_name == name:
            return replicator
    known = ", ".join(sorted(r.replication_flag_name for r in catalog)) or "none"
    raise NotFound(f"unknown flag {name!r} (known flags: {known})")
