"""Shared fixtures: every database test runs on SQLite and on PostgreSQL.

PostgreSQL tests read the server URL from GEOSYNC_TEST_POSTGRES_URL (`.ci/run` exports it). In CI
(CI=true) a missing or unreachable server fails the run instead of skipping.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from geosync.clock import FrozenClock
from geosync.demo.replicators import PackageFileReplicator, SnippetReplicator, UploadReplicator
from geosync.testing import DatabaseFactory, SitePair, build_site_pair

POSTGRES_URL = os.environ.get(
    "GEOSYNC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DEMO_REPLICATORS = [UploadReplicator, PackageFileReplicator, SnippetReplicator]

_KEEP = {"GEOSYNC_TEST_POSTGRES_URL", "GEOSYNC_CHROMIUM", "GEOSYNC_SCREENSHOTS"}
for _name in [n for n in os.environ if n.startswith("GEOSYNC_") and n not in _KEEP]:
    del os.environ[_name]


def _postgres_available() -> str | None:
    try:
        engine = create_engine(POSTGRES_URL)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # any failure means "not reachable"
        return f"{type(exc).__name__}: {exc}"


_PG_PROBLEM = _postgres_available()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend of this test run."""
    if request.param == "postgres" and _PG_PROBLEM is not None:
        if IN_CI:
            pytest.fail(f"PostgreSQL must be reachable in CI at {POSTGRES_URL}: {_PG_PROBLEM}")
        pytest.skip(f"PostgreSQL not reachable: {_PG_PROBLEM}")
    return str(request.param)


@pytest.fixture
def databases(backend: str, tmp_path: Path) -> Iterator[DatabaseFactory]:
    """Fresh databases of the current backend, dropped after the test."""
    factory = DatabaseFactory(backend, tmp_path / "db", POSTGRES_URL)
    yield factory
    factory.cleanup()


@pytest.fixture
def clock() -> FrozenClock:
    """An injected clock that only moves when the test says so."""
    return FrozenClock()


@pytest.fixture
def sites(tmp_path: Path, databases: DatabaseFactory, clock: FrozenClock) -> Iterator[SitePair]:
    """A registered primary and secondary with the demo replicators."""
    pair = build_site_pair(tmp_path / "sites", DEMO_REPLICATORS, databases, clock=clock)
    yield pair
    pair.dispose()


@pytest.fixture
def live_sites(tmp_path: Path, databases: DatabaseFactory) -> Iterator[SitePair]:
    """Like `sites`, on the real clock with retry delays scaled down, for worker tests."""
    pair = build_site_pair(
        tmp_path / "sites", DEMO_REPLICATORS, databases, backoff_scale=0.01, poll_interval=0.2
    )
    yield pair
    pair.dispose()
