"""The web application connects to its databases before it takes its first request."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.pool import QueuePool
from structlog.testing import capture_logs

from geosync import Geo
from geosync.testing import SitePair
from geosync.testing.servers import free_port, serve_in_thread
from geosync.testing.sites import site_settings
from geosync.web.app import create_app, warm_up
from tests.conftest import DEMO_REPLICATORS


def checked_in(engine: Engine) -> int:
    """Connections idle in `engine`'s pool (geosync gives every engine a `QueuePool`)."""
    pool = engine.pool
    assert isinstance(pool, QueuePool), pool
    return pool.checkedin()


def test_a_served_site_holds_a_connection_to_each_database_before_its_first_request(
    sites: SitePair,
) -> None:
    geo = sites.secondary
    geo.dispose()  # no connection left from building the sites
    assert checked_in(geo.main_engine) == 0
    assert checked_in(geo.tracking_engine) == 0
    with serve_in_thread(create_app(geo)):
        assert checked_in(geo.main_engine) == 1
        assert checked_in(geo.tracking_engine) == 1


def test_a_database_not_reachable_at_start_is_logged_and_the_site_still_serves(
    tmp_path: Path,
) -> None:
    unreachable = f"postgresql+psycopg://geosync:hunter2@127.0.0.1:{free_port()}/nowhere"
    settings = site_settings("primary", tmp_path, DEMO_REPLICATORS, unreachable, None, "s" * 32)
    geo = Geo(settings, DEMO_REPLICATORS)
    with capture_logs() as logs:
        warm_up(geo)
    (entry,) = [e for e in logs if e["event"] == "database not reachable at start"]
    assert entry["database"] == "main" and entry["log_level"] == "warning"
    assert "hunter2" not in repr(logs)
    with serve_in_thread(create_app(geo)) as url:  # it starts all the same
        assert url.startswith("http://127.0.0.1:")
