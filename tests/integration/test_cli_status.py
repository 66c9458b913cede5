"""`geosync status` and `geosync check` run as a user runs them, against real sites."""

from __future__ import annotations

import email.utils
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from geosync.cli import app
from geosync.db.schema import VERSION_TABLE, head_revision
from geosync.demo.replicators import UploadReplicator
from geosync.nodes import NodeStore
from geosync.registry import Registry
from geosync.settings import Settings
from geosync.testing import DatabaseFactory, SitePair

runner = CliRunner()


def write_config(settings: Settings, path: Path, **changes: Any) -> Path:
    """A TOML config file for `settings` (with `changes`) naming the demo replicators."""
    toml = settings.model_copy(update=changes).to_toml()
    path.write_text('replicators = "geosync.demo.replicators"\n' + toml, encoding="utf-8")
    return path


def invoke(config: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    return runner.invoke(
        app, ["--config", str(config), *args], env={"COLUMNS": "200", **(env or {})}
    )


def _known_registries(sites: SitePair) -> None:
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, [1, 2, 3, 4])
        registry.failed(conn, 4, registry.start(conn, 4), "Download failed")
        for record_id in (1, 2):
            started = registry.start(conn, record_id)
            registry.synced(conn, record_id, started)


def test_status_json_has_every_node_with_gitlab_shaped_status(
    sites: SitePair, tmp_path: Path
) -> None:
    _known_registries(sites)
    config = write_config(sites.secondary.settings, tmp_path / "secondary.toml")

    result = invoke(config, "status", "--json")

    assert result.exit_code == 0, result.output
    primary, secondary = json.loads(result.stdout)
    assert primary["node"]["primary"] and primary["status"] is None  # never reported
    status = secondary["status"]
    assert secondary["node"]["name"] == "secondary"
    assert status["uploads_synced_count"] == 2 and status["uploads_failed_count"] == 1
    assert status["uploads_synced_in_percentage"] == "50.00%"
    assert status["health_status"] == "Healthy"


def test_status_table_shows_synced_failed_verified_and_health_per_node(
    sites: SitePair, tmp_path: Path
) -> None:
    _known_registries(sites)
    config = write_config(sites.secondary.settings, tmp_path / "secondary.toml")

    result = invoke(config, "status")

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "secondary (secondary) — Healthy" in out
    assert "primary (primary) — never reported" in out
    upload_row = next(line for line in out.splitlines() if "uploads" in line)
    assert "2/4 (50.00%)" in upload_row and " 1 " in upload_row
    assert "0/0 (0.00%)" in upload_row  # nothing verified yet
    assert "package_files" in out and "snippets" in out


def test_check_passes_for_a_sound_secondary_and_flags_a_writable_main_database(
    sites: SitePair, tmp_path: Path, backend: str
) -> None:
    config = write_config(sites.secondary.settings, tmp_path / "secondary.toml")

    with sites.primary_served():
        result = invoke(config, "check")

    out = result.stdout
    for name in ("settings", "main database", "tracking database", "node registration", "git"):
        assert f"ok   {name}" in out, out
    assert "ok   clock skew with the primary" in out
    assert "ok   storage 'uploads'" in out
    if backend == "sqlite":  # the embedded demo reads the primary's file read-only
        assert result.exit_code == 0, out
        assert "all checks passed" in out
    else:  # the test pair shares the primary's writable PostgreSQL database
        assert result.exit_code == 1
        assert "FAIL main database role: the main database is writable" in out
        assert "fix: point main_database_url at a standby of the primary" in out


def test_check_warns_but_passes_while_the_primary_does_not_serve_yet(
    sites: SitePair, tmp_path: Path, backend: str
) -> None:
    config = write_config(sites.secondary.settings, tmp_path / "secondary.toml")
    url = sites.primary_node.url  # nothing listens there

    result = invoke(config, "check")

    out = result.stdout
    assert (
        f"warn primary reachable: primary not reachable at {url} (is `geosync serve` running"
        " there?)" in out
    ), out
    assert "fix: start `geosync serve` on the primary" in out
    assert "clock skew with the primary" not in out  # measured once the primary answers
    if backend == "sqlite":
        assert result.exit_code == 0, out
        assert "all checks passed (1 warning(s))" in out
    else:  # only the test pair's writable main database fails
        assert result.exit_code == 1
        assert out.count("FAIL") == 1 and "FAIL main database role" in out


def test_check_fails_for_a_never_upgraded_tracking_database_until_db_upgrade(
    sites: SitePair, tmp_path: Path, databases: DatabaseFactory
) -> None:
    fresh = databases.url("fresh_tracking")
    config = write_config(
        sites.secondary.settings, tmp_path / "secondary.toml", tracking_database_url=fresh
    )

    before = invoke(config, "check")
    upgraded = invoke(config, "db", "upgrade")
    after = invoke(config, "check")

    assert before.exit_code == 1
    line = next(x for x in before.stdout.splitlines() if "tracking database schema" in x)
    assert line.startswith("FAIL tracking database schema: never upgraded; missing tables ")
    assert "upload_registry" in line and "snippet_registry" in line
    assert "      fix: run `geosync db upgrade`\n" in before.stdout
    assert "ok   tracking database" in before.stdout  # it is reachable, only behind
    assert upgraded.exit_code == 0, upgraded.output
    current = f"schema current (revision {head_revision('tracking')})"
    assert f"ok   tracking database schema: {current}" in after.stdout
    assert "FAIL tracking database schema" not in after.stdout


def test_check_fails_for_a_main_database_behind_head_or_missing_a_state_table(
    sites: SitePair, tmp_path: Path
) -> None:
    with sites.primary.main() as conn:  # as if the migrations after the first had not run
        conn.execute(text("DROP TABLE geo_node_status_history"))
        conn.execute(text("DROP TABLE geo_bulk_jobs"))
        conn.execute(text("DROP INDEX uq_geo_nodes_one_primary"))
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = 'main_0001'"))
        conn.execute(text("DROP TABLE upload_states"))
    primary = write_config(sites.primary.settings, tmp_path / "primary.toml")
    secondary = write_config(sites.secondary.settings, tmp_path / "secondary.toml")
    head = head_revision("main")
    behind = f"at revision main_0001, the current one is {head}; missing tables upload_states"

    on_secondary = invoke(secondary, "check")
    on_primary = invoke(primary, "check")
    upgraded = invoke(primary, "db", "upgrade")
    after = invoke(secondary, "check")

    assert on_secondary.exit_code == on_primary.exit_code == 1
    assert f"FAIL main database schema: {behind}" in on_secondary.stdout
    assert "fix: run `geosync db upgrade` on the primary" in on_secondary.stdout
    assert f"FAIL main database schema: {behind}" in on_primary.stdout
    assert "fix: run `geosync db upgrade`\n" in on_primary.stdout
    assert upgraded.exit_code == 0, upgraded.output
    assert f"ok   main database schema: schema current (revision {head})" in after.stdout


class _SkewedDate(BaseHTTPRequestHandler):
    """A primary whose clock is a day behind (an injected fault)."""

    stale_date = ""

    def date_time_string(self, timestamp: float | None = None) -> str:
        return super().date_time_string(timestamp) if timestamp else self.stale_date

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def skewed_primary() -> Iterator[str]:
    day_before = email.utils.formatdate(time.time() - 86400, usegmt=True)
    handler = type("DayBehind", (_SkewedDate,), {"stale_date": day_before})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_check_reports_clock_skew_missing_git_and_unwritable_storage(
    sites: SitePair, tmp_path: Path, skewed_primary: str, backend: str
) -> None:
    with sites.primary.main() as conn:
        NodeStore(sites.primary, conn).update(sites.primary_node.id, url=skewed_primary)
    storages = {**sites.secondary.settings.blob_storages, "uploads": tmp_path / "missing"}
    config = write_config(sites.secondary.settings, tmp_path / "s.toml", blob_storages=storages)
    no_git = tmp_path / "empty-bin"
    no_git.mkdir()

    result = invoke(config, "check", env={"PATH": str(no_git)})

    out = result.stdout
    assert result.exit_code == 1
    assert "FAIL clock skew with the primary: clocks differ by 864" in out
    assert "fix: synchronise both machines' clocks with NTP" in out
    assert "FAIL git: git is not installed" in out
    assert f"FAIL storage 'uploads': {tmp_path / 'missing'} is not a directory" in out
    assert "ok   storage 'packages'" in out
    role_fails = backend == "postgres"  # the test pair's main database is not a standby
    assert out.count("FAIL") == out.count("fix: ") == 3 + role_fails


def test_check_reports_an_unregistered_node_and_bad_settings(
    sites: SitePair, tmp_path: Path
) -> None:
    ghost = write_config(sites.secondary.settings, tmp_path / "ghost.toml", node_name="ghost")
    broken = tmp_path / "broken.toml"
    broken.write_text('node_name = "x"\n', encoding="utf-8")

    unregistered = invoke(ghost, "check")
    unsettled = invoke(broken, "check")

    assert unregistered.exit_code == 1
    assert "FAIL node registration: no node named 'ghost'" in unregistered.stdout
    assert "fix: run `geosync node add NAME URL` on the primary" in unregistered.stdout
    assert "clock skew" not in unregistered.stdout  # needs a registered node
    assert unsettled.exit_code == 1
    assert "FAIL settings: setting 'main_database_url': missing" in unsettled.stdout
