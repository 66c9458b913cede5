"""Engines: pooled PostgreSQL connections tested only after sitting idle, and commits that wait
for the disk everywhere but in the tracking database."""

from __future__ import annotations

from collections.abc import Iterator

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


@pytest.fixture
def pooled(databases: DatabaseFactory) -> Iterator[tuple[Engine, int]]:
    """An engine whose one pooled connection was used and then killed from outside (as a
    server restart would), and that connection's server process."""
    engine = make_engine(databases.url("pooled"))
    other = make_engine(databases.url("other"))
    try:
        pid = _pooled_backend_pid(engine)
        with other.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        yield engine, pid
    finally:
        engine.dispose()
        other.dispose()


def test_an_idle_connection_that_died_is_replaced(
    pooled: tuple[Engine, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, old_pid = pooled
    monkeypatch.setattr(engines, "PING_AFTER_IDLE", 0.0)
    assert _pooled_backend_pid(engine) != old_pid


def test_a_connection_used_a_moment_ago_is_not_tested_again(
    pooled: tuple[Engine, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, old_pid = pooled
    monkeypatch.setattr(engines, "PING_AFTER_IDLE", 3600.0)
    # No test round trip: the statement itself meets the dead connection...
    with pytest.raises(OperationalError):
        _pooled_backend_pid(engine)
    # ...which the pool then drops, so the next use gets a live one.
    assert _pooled_backend_pid(engine) != old_pid


def test_only_the_tracking_database_commits_without_waiting_for_the_disk(
    sites: SitePair,
) -> None:
    def setting(engine: Engine) -> str:
        with engine.connect() as conn:
            return str(conn.execute(text("SHOW synchronous_commit")).scalar_one())

    assert setting(sites.secondary.tracking_engine) == "off"
    assert setting(sites.primary.main_engine) == "on"
    assert setting(sites.secondary.main_engine) == "on"
