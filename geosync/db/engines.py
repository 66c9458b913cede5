"""Engines for the main and tracking databases, with the pragmas and modes geosync relies on.

SQLite: WAL, a busy timeout, foreign keys, and `BEGIN IMMEDIATE` for every writable transaction
(a deferred transaction that later writes can fail at once instead of waiting). A read-only
engine opens the file with ``mode=ro``. PostgreSQL (psycopg 3): a read-only engine sets
``default_transaction_read_only`` so geosync can never write to a secondary's main database.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError
from sqlalchemy.pool import QueuePool

from geosync.errors import ConfigurationError

#: Connection execution option: this transaction will write (SQLite takes the write lock at once).
WRITE_OPTION = "geosync_writes"
#: Seconds a pooled PostgreSQL connection may sit unused before it is tested on checkout.
PING_AFTER_IDLE = 2.0
_IDLE_SINCE = "geosync_idle_since"


def make_engine(
    url: str,
    *,
    readonly: bool = False,
    setting: str = "database_url",
    writes_by_default: bool = True,
    rebuildable: bool = False,
) -> Engine:
    """An engine for `url`; `setting` names the setting in error messages.

    `rebuildable`: everything written here can be found again from elsewhere (a secondary's
    tracking database: its registry follows the primary), so on PostgreSQL a commit does not
    wait for its WAL flush (`synchronous_commit = off`), as SQLite's `synchronous = NORMAL`
    does not either. A server crash can then forget the last moments' commits, never corrupt
    or half-apply one: a forgotten claim or sync is redone, a forgotten cursor step replayed.
    """
    parsed = parse_database_url(url, setting)
    try:
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(parsed, readonly, writes_by_default)
        return _postgres_engine(parsed, readonly, rebuildable)
    except (ArgumentError, ImportError) as exc:  # a driver that is missing or will not load
        raise ConfigurationError(
            f"setting '{setting}': cannot load the database driver: {error_line(exc)}"
        ) from None


#: The SQLAlchemy drivers geosync runs on, by backend (`sqlite` alone means `sqlite+pysqlite`).
SUPPORTED_DRIVERS = {
    "sqlite": ("sqlite", "sqlite+pysqlite"),
    "postgresql": ("postgresql", "postgresql+psycopg"),
}
_SUPPORTED = "geosync supports sqlite and postgresql+psycopg"
_PASSWORD = re.compile(r"(?<=://)([^:/@]*):[^@]*@")


def redact_url(url: str) -> str:
    """`url` with the password of its user part replaced by `***`, even when it does not
    parse: error messages quote what the operator wrote, never their password."""
    return _PASSWORD.sub(r"\1:***@", url)


def parse_database_url(url: str, setting: str = "database_url") -> URL:
    """`url` parsed, or a configuration error naming `setting` when geosync cannot use it."""
    problem = database_url_problem(url)
    if problem is not None:
        raise ConfigurationError(f"setting '{setting}': {problem}")
    return make_url(url)


def database_url_problem(url: str) -> str | None:
    """Why geosync cannot use `url` (not a URL, a database or driver geosync does not support,
    an in-memory SQLite database), or None when it can. Settings validation and `make_engine`
    both ask, so a bad URL is one line whichever meets it first."""
    try:
        parsed = make_url(url)
        backend = parsed.get_backend_name()
    except (ArgumentError, ValueError):  # not a URL at all, or a port that is not a number
        return (
            f"{redact_url(url)!r} is not a database URL"
            " (e.g. sqlite:///path/to/main.db or postgresql+psycopg://user@host/db)"
        )
    drivers = SUPPORTED_DRIVERS.get(backend)
    if drivers is None:
        return f"unsupported database {backend!r} ({_SUPPORTED})"
    if parsed.drivername not in drivers:
        return f"unsupported driver {parsed.drivername!r} ({_SUPPORTED})"
    if backend == "sqlite" and (parsed.database or "") in ("", ":memory:"):
        return "an in-memory SQLite database cannot be shared between sites"
    return None


def _sqlite_engine(url: URL, readonly: bool, writes_by_default: bool) -> Engine:
    database = url.database or ""
    if readonly:
        url = url.set(database=f"file:{database}?mode=ro", query={"uri": "true"})
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        # Pooled: opening a SQLite connection (with its pragmas) costs more than a small query.
        poolclass=QueuePool,
        pool_size=5,
        max_overflow=60,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # transactions are begun below, explicitly
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout = 30000")
        cursor.execute("PRAGMA foreign_keys = ON")
        if not readonly:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get(WRITE_OPTION, writes_by_default)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if mode and not readonly else "BEGIN")

    return engine


def _postgres_engine(url: URL, readonly: bool, rebuildable: bool) -> Engine:
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    options = []
    if readonly:
        options.append("-c default_transaction_read_only=on")
    if rebuildable:
        options.append("-c synchronous_commit=off")
    connect_args: dict[str, Any] = {"options": " ".join(options)} if options else {}
    engine = create_engine(url, connect_args=connect_args, pool_size=10)
    _ping_after_idle(engine)
    return engine


def _ping_after_idle(engine: Engine) -> None:
    """Test a pooled connection before use when it has sat idle for `PING_AFTER_IDLE` seconds;
    a dead one is replaced (the pool retries the checkout).

    SQLAlchemy's `pool_pre_ping` tests every checkout: a round trip each time, several per
    sync, for connections that were busy a moment ago. A connection that dies between two
    close uses fails its statement instead, and the loop or request that ran it tries again.
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError(f"a pooled connection is gone: {exc}") from exc


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that will write: on SQLite it takes the write lock up front, so it waits
    for other writers instead of failing when a read later turns into a write."""
    with engine.connect() as connection:
        connection.execution_options(**{WRITE_OPTION: True})
        with connection.begin():
            yield connection


def is_sqlite(engine: Engine) -> bool:
    """Whether `engine` talks to SQLite (some statements differ)."""
    return engine.dialect.name == "sqlite"


def error_line(exc: BaseException) -> str:
    """The first line of a database error's own message (the driver's, not SQLAlchemy's
    wrapping with the statement), short enough for a log line or a check's answer."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
