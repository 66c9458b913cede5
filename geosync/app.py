"""`Geo`: the central object of a site — settings, engines, catalog, clock.

An application creates one `Geo` per site it runs; workers, the web app and the CLI all take it.
"""

from __future__ import annotations

import random
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, select
from sqlalchemy.orm import Session

from geosync.binding import bind_engines, geo_for_engine
from geosync.catalog import Catalog
from geosync.clock import Clock, SystemClock
from geosync.db.derived import DerivedTables
from geosync.db.engines import WRITE_OPTION, is_sqlite, make_engine, write_transaction
from geosync.errors import ConfigurationError, ReadOnlyViolation
from geosync.records import load_record
from geosync.replicator import Replicator
from geosync.settings import Settings

if TYPE_CHECKING:
    from geosync.nodes import Node

__all__ = ["Geo", "current_geo", "geo_for_engine"]

_current: list[weakref.ref[Geo]] = []
_lock = threading.Lock()


def current_geo() -> Geo:
    """The most recently created `Geo` of this process (apps usually have exactly one)."""
    with _lock:
        geo = _current[-1]() if _current else None
    if geo is None:
        raise ConfigurationError("no geosync site is set up in this process: create Geo(...)")
    return geo


class Geo:
    """A site: its settings, its databases, its catalog of replicators and its clock."""

    def __init__(
        self,
        settings: Settings,
        replicators: Sequence[type[Replicator]] | str | None = None,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        main_engine: Engine | None = None,
    ) -> None:
        self.settings = settings
        source = replicators if replicators is not None else settings.replicators
        if source is None:
            raise ConfigurationError(
                "setting 'replicators': name the module that defines the replicators"
            )
        self.catalog = Catalog.from_module(source) if isinstance(source, str) else Catalog(source)
        self.clock: Clock = clock or SystemClock()
        self.random = rng or random.Random()
        self.tables = DerivedTables(self.catalog)
        self._main_engine = main_engine
        with _lock:
            _current.append(weakref.ref(self))
        if main_engine is not None:
            bind_engines(self, [main_engine])

    # -- databases ---------------------------------------------------------------------------

    @property
    def main_readonly(self) -> bool:
        """Whether this site opens its main database read-only (a secondary always does)."""
        return self.settings.tracking_database_url is not None

    @property
    def main_engine(self) -> Engine:
        """Engine of the main database (read-only on a secondary)."""
        if self._main_engine is None:
            self._main_engine = make_engine(
                self.settings.main_database_url,
                readonly=self.main_readonly,
                setting="main_database_url",
            )
            bind_engines(self, [self._main_engine])
        return self._main_engine

    def bind(self, engine: Engine, *more: Engine) -> None:
        """Bind the application's own engines to this site, once at start-up: every ORM session
        on them (`Session(engine)`, a `sessionmaker`, a `scoped_session`, a session on one of
        their connections) then publishes `created`/`deleted` events in its flush and keeps the
        primary's verification state current, exactly as `Geo.session()` does.

        The engines must reach this site's main database. Binding again is harmless; an engine
        already bound to another site raises `ConfigurationError`. A secondary accepts the
        binding, so every site runs the same start-up code; it publishes nothing there.
        """
        bind_engines(self, [engine, *more])

    @cached_property
    def tracking_engine(self) -> Engine:
        """Engine of the tracking database; only secondaries have one."""
        url = self.settings.tracking_database_url
        if url is None:
            raise ConfigurationError(
                "setting 'tracking_database_url': a secondary site needs a tracking database"
            )
        # Reads outnumber writes here; every write goes through `tracking()`. The registry
        # follows the primary, so a commit need not wait for the disk (see `make_engine`).
        return make_engine(
            url, setting="tracking_database_url", writes_by_default=False, rebuildable=True
        )

    @property
    def has_tracking_database(self) -> bool:
        """Whether this site is configured as a secondary (it has a tracking database)."""
        return self.settings.tracking_database_url is not None

    def session(self) -> Session:
        """An ORM session on the main database; replicable changes in it publish events."""
        return Session(self.main_engine)

    @contextmanager
    def main(self) -> Iterator[Connection]:
        """A transaction on the main database; `ReadOnlyViolation` on a secondary, whose main
        database is the primary's (or a standby of it) and must never be written to."""
        if self.main_readonly:
            raise ReadOnlyViolation(
                f"site {self.settings.node_name!r} is a secondary: its main database is"
                " read-only (make this change on the primary)"
            )
        with self.main_engine.begin() as connection:
            yield connection

    @contextmanager
    def main_reads(self) -> Iterator[Connection]:
        """A main-database connection that only reads, each statement on its own: on SQLite it
        never takes the write lock, so concurrent readers (the primary serving blobs) do not
        queue behind each other; on PostgreSQL it saves a transaction's round trips.
        """
        with self.main_engine.connect() as connection:
            if is_sqlite(self.main_engine):
                connection.execution_options(**{WRITE_OPTION: False})
            else:  # no BEGIN and ROLLBACK round trips around a lookup or two
                connection.execution_options(isolation_level="AUTOCOMMIT")
            yield connection

    @contextmanager
    def tracking(self) -> Iterator[Connection]:
        """A transaction on the tracking database."""
        with write_transaction(self.tracking_engine) as connection:
            yield connection

    def load_record(
        self, model: type[Any], record_id: int, connection: Connection | None = None
    ) -> Any | None:
        """Load one model record from the main database (or `connection`), detached, or None."""
        bind = connection if connection is not None else self.main_engine
        return load_record(bind, model, record_id)

    # -- nodes -------------------------------------------------------------------------------

    def current_node(self, connection: Connection | None = None) -> Node | None:
        """This site's node (the one named like `node_name`), or None if not registered."""
        from geosync.nodes import NodeStore

        if connection is not None:
            return NodeStore(self, connection).find(self.settings.node_name)
        with self.main_engine.connect() as conn:
            return NodeStore(self, conn).find(self.settings.node_name)

    def is_primary(self) -> bool:
        """Whether this site's node is the primary."""
        node = self.current_node()
        return node is not None and node.primary

    def primary_node(self) -> Node | None:
        """The primary's node, or None when no primary is registered."""
        from geosync.db.tables import geo_nodes
        from geosync.nodes import Node

        with self.main_engine.connect() as conn:
            row = conn.execute(select(geo_nodes).where(geo_nodes.c.primary.is_(True))).first()
        return Node.from_row(row._mapping) if row else None

    def primary_internal_url(self) -> str:
        """The URL secondaries use to reach the primary."""
        node = self.primary_node()
        if node is None:
            raise ConfigurationError("no primary node is registered")
        return node.effective_internal_url

    def dispose(self) -> None:
        """Close every pooled connection (before forking, at exit, between tests)."""
        if self._main_engine is not None:
            self._main_engine.dispose()
        if "tracking_engine" in self.__dict__:
            self.tracking_engine.dispose()
