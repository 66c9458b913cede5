"""Engines: pooled PostgreSQL connections tested only after sitting idle, and commits that wait
for the disk everywhere but in the tracking database."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from geosync.db import engines
from geosync.db.engines import make_engine
from geosync.testing import DatabaseFactory, SitePair

pytestmark = pytest.mark.parametrize("backend", ["postgres"], indirect=True)


def _pooled_backend_pid(engine: Engine) -> int:
    """Use the pool's one connection and return it; the server process behind it."""
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(engine: Engine, pid: int) -> None:
    """Kill a server process from outside the pool, as a server restart would."""
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


def test_an_idle_connection_that_died_is_replaced(
    databases: DatabaseFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(databases.url("idle"))
    other = make_engine(databases.url("other"))
    try:
        old_pid = _pooled_backend_pid(engine)
        _terminate(other, old_pid)
        monkeypatch.setattr(engines, "PING_AFTER_IDLE", 0.0)
        new_pid = _pooled_backend_pid(engine)
        assert new_pid != old_pid
    finally:
        engine.dispose()
        other.dispose()


def test_a_connection_used_a_moment_ago_is_not_tested_again(
    databases: DatabaseFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(databases.url("busy"))
    other = make_engine(databases.url("other"))
    try:
        old_pid = _pooled_backend_pid(engine)
        _terminate(other, old_pid)
        monkeypatch.setattr(engines, "PING_AFTER_IDLE", 3600.0)
        # No test round trip: the statement itself meets the dead connection...
        with pytest.raises(OperationalError):
            _pooled_backend_pid(engine)
        # ...which the pool then drops, so the next use gets a live one.
        assert _pooled_backend_pid(engine) != old_pid
    finally:
        engine.dispose()
        other.dispose()


def test_only_the_tracking_database_commits_without_waiting_for_the_disk(
    sites: SitePair,
) -> None:
    def setting(engine: Engine) -> str:
        with engine.connect() as conn:
            return str(conn.execute(text("SHOW synchronous_commit")).scalar_one())

    assert setting(sites.secondary.tracking_engine) == "off"
    assert setting(sites.primary.main_engine) == "on"
    assert setting(sites.secondary.main_engine) == "on"
