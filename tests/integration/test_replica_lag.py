"""`db_replication_lag_seconds` against a real PostgreSQL streaming standby made in the test."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from geosync.app import Geo
from geosync.db.engines import make_engine
from geosync.db.schema import upgrade
from geosync.demo.replicators import PackageFileReplicator, SnippetReplicator, UploadReplicator
from geosync.nodes import NodeStore
from geosync.preflight import main_database_role
from geosync.status import compute_status, replication_lag_seconds
from geosync.testing.pg_standby import StandbyPair, missing_reason, streaming_standby
from geosync.testing.sites import site_settings

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPLICATORS = [UploadReplicator, PackageFileReplicator, SnippetReplicator]


@pytest.fixture(scope="module")
def standby() -> Iterator[StandbyPair]:
    """One primary + standby pair for the module (about 3 s to make)."""
    reason = missing_reason()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"the standby tests must run in CI: {reason}")
        pytest.skip(reason)
    with streaming_standby() as pair:
        pair.primary.scalar("CREATE TABLE ticks (id serial PRIMARY KEY, at timestamptz)")
        pair.wait_for_replay()
        yield pair


@dataclass
class Sites:
    """A primary site on the cluster's primary and a secondary reading the standby."""

    primary: Geo
    secondary: Geo


@pytest.fixture(scope="module")
def geo_sites(standby: StandbyPair, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:
    root = tmp_path_factory.mktemp("sites")
    for database in ("geo_main", "geo_tracking"):
        standby.primary.scalar(f"CREATE DATABASE {database}")
    secret = secrets.token_urlsafe(32)
    primary = Geo(
        site_settings("primary", root, REPLICATORS, standby.primary.url("geo_main"), None, secret),
        REPLICATORS,
    )
    for replicator in primary.catalog:
        replicator.model.__table__.create(primary.main_engine, checkfirst=True)
    upgrade(primary)
    with primary.main() as conn:
        store = NodeStore(primary, conn)
        store.add("primary", "http://127.0.0.1:1/", primary=True)
        store.add("secondary", "http://127.0.0.1:2/")
    secondary = Geo(
        site_settings(
            "secondary",
            root,
            REPLICATORS,
            standby.standby.url("geo_main"),
            standby.primary.url("geo_tracking"),
            secret,
        ),
        REPLICATORS,
    )
    upgrade(secondary)
    standby.wait_for_replay()
    yield Sites(primary, secondary)
    secondary.dispose()
    primary.dispose()


def _tick(standby: StandbyPair) -> None:
    standby.primary.scalar("INSERT INTO ticks (at) VALUES (now())")


@pytest.fixture
def standby_engine(standby: StandbyPair) -> Iterator[Engine]:
    engine = create_engine(standby.standby.url())
    yield engine
    engine.dispose()


def test_lag_is_zero_when_the_standby_replayed_everything(
    standby: StandbyPair, standby_engine: Engine
) -> None:
    _tick(standby)
    standby.wait_for_replay()

    assert replication_lag_seconds(standby_engine) == 0


def test_lag_is_the_age_of_the_last_replayed_change_while_replay_is_behind(
    standby: StandbyPair, standby_engine: Engine
) -> None:
    _tick(standby)
    standby.wait_for_replay()
    time.sleep(1.2)
    standby.pause_replay()
    try:
        _tick(standby)
        standby.wait_for_receipt()

        lag = replication_lag_seconds(standby_engine)
    finally:
        standby.resume_replay()
    standby.wait_for_replay()

    assert lag is not None and 2 <= lag < 30
    assert replication_lag_seconds(standby_engine) == 0


def test_a_primary_and_sqlite_have_no_replication_lag(standby: StandbyPair, tmp_path: Path) -> None:
    primary = create_engine(standby.primary.url())
    sqlite = make_engine(f"sqlite:///{tmp_path / 'main.db'}")
    try:
        assert replication_lag_seconds(primary) is None
        assert replication_lag_seconds(sqlite) is None
    finally:
        primary.dispose()


def test_secondary_status_reports_the_lag_of_its_standby_main_database(
    geo_sites: Sites, standby: StandbyPair
) -> None:
    _tick(standby)
    standby.wait_for_replay()

    secondary = compute_status(geo_sites.secondary)
    primary = compute_status(geo_sites.primary)

    assert secondary["db_replication_lag_seconds"] == 0
    assert secondary.healthy
    assert primary["db_replication_lag_seconds"] is None


def test_preflight_accepts_a_standby_and_refuses_writes_to_it(geo_sites: Sites) -> None:
    check = main_database_role(geo_sites.secondary)
    assert check.ok, check
    assert "standby" in check.message
    writable = create_engine(geo_sites.secondary.main_engine.url)  # without geosync's guard
    try:
        with pytest.raises(DBAPIError, match="read-only transaction"):
            with writable.begin() as conn:
                conn.execute(text("CREATE TABLE nope (id int)"))
    finally:
        writable.dispose()
