"""The `geosync` command line as a real subprocess: db upgrade, nodes and flags.

Each command exits 0 on success; a user mistake is exit code 1 with one `error:` line on stderr
and no traceback. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from geosync.db.schema import head_revision
from geosync.demo.models import Base
from geosync.testing import DatabaseFactory

SECRET = "c" * 40
CONSOLE_SCRIPT = Path(sys.executable).parent / "geosync"


@dataclass(frozen=True)
class Result:
    """A finished command."""

    code: int
    stdout: str
    stderr: str


@dataclass
class Cli:
    """Runs `python -m geosync` with a config file, in a clean environment."""

    config: Path
    cwd: Path

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> Result:
        """Run one command."""
        return self.run([sys.executable, "-m", "geosync", "--config", str(self.config), *args], env)

    def run(self, command: list[str], env: dict[str, str] | None = None) -> Result:
        """Run `command` with the test environment plus `env`."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("GEOSYNC_")}
        base.update({"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}, **(env or {}))
        done = subprocess.run(
            command, cwd=self.cwd, env=base, capture_output=True, text=True, timeout=60
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str) -> str:
        """Run a command that must succeed; returns its stdout."""
        result = self(*args)
        assert result.code == 0, result.stderr
        assert result.stderr == ""
        return result.stdout

    def fails(self, *args: str, env: dict[str, str] | None = None) -> str:
        """Run a command that must fail cleanly; returns its one error line."""
        result = self(*args, env=env)
        assert result.code == 1, (result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("error: ")
        return lines[0]


def write_config(path: Path, **values: str) -> Path:
    """A TOML config file with `values` (strings)."""
    path.write_text("".join(f'{k} = "{v}"\n' for k, v in values.items()), encoding="utf-8")
    return path


@pytest.fixture
def main_url(databases: DatabaseFactory) -> str:
    """A main database holding the demo application's own tables, as its migrations made them."""
    url = databases.url("main")
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    return url


@pytest.fixture
def cli(tmp_path: Path, main_url: str) -> Cli:
    """The CLI of a primary site whose schema is upgraded."""
    config = write_config(
        tmp_path / "primary.toml",
        node_name="primary",
        main_database_url=main_url,
        secret_key_base=SECRET,
        replicators="geosync.demo.replicators",
    )
    runner = Cli(config, tmp_path)
    runner.ok("db", "upgrade")
    return runner


def test_db_upgrade_creates_the_schema_once(tmp_path: Path, main_url: str) -> None:
    config = write_config(
        tmp_path / "geosync.toml",
        node_name="primary",
        main_database_url=main_url,
        secret_key_base=SECRET,
        replicators="geosync.demo.replicators",
    )
    cli = Cli(config, tmp_path)
    first = cli.ok("db", "upgrade")
    assert f"main database: upgraded to {head_revision('main')}" in first
    assert "created table upload_states" in first
    assert "created table snippet_states" in first
    second = cli.ok("db", "upgrade")
    assert second.strip() == "main database: already current"


def test_db_upgrade_of_a_secondary_creates_its_tracking_database(
    tmp_path: Path, databases: DatabaseFactory, cli: Cli, main_url: str
) -> None:
    config = write_config(
        tmp_path / "secondary.toml",
        node_name="secondary",
        main_database_url=main_url,
        tracking_database_url=databases.url("tracking"),
        secret_key_base=SECRET,
        replicators="geosync.demo.replicators",
    )
    secondary = Cli(config, tmp_path)
    first = secondary.ok("db", "upgrade")
    assert f"tracking database: upgraded to {head_revision('tracking')}" in first
    for table in ("upload_registry", "package_file_registry", "snippet_registry"):
        assert f"created table {table}" in first
    assert "main database" not in first
    assert secondary.ok("db", "upgrade").strip() == "tracking database: already current"


def test_nodes_are_added_listed_updated_and_removed(cli: Cli) -> None:
    added = cli.ok("node", "add", "primary", "http://127.0.0.1:5000", "--primary")
    assert added.strip() == "added primary node primary (id 1) at http://127.0.0.1:5000/"
    cli.ok(
        "node", "add", "tokyo", "http://127.0.0.1:5001",
        "--selective-sync-type", "namespaces", "--selective-sync-namespace-ids", "3,1",
    )  # fmt: skip
    assert "updated node tokyo" in cli.ok("node", "update", "tokyo", "--files-max-capacity", "3")
    disabled = cli("node", "update", "2", "--disabled", "--name", "osaka")
    assert disabled.code == 0 and disabled.stdout.strip() == "updated node osaka (id 2)"
    assert disabled.stderr.strip() == (
        "warning: no enabled secondary is left: nothing replicates the primary"
    )
    nodes = json.loads(cli.ok("node", "list", "--json"))
    assert [(n["name"], n["primary"], n["url"]) for n in nodes] == [
        ("primary", True, "http://127.0.0.1:5000/"),
        ("osaka", False, "http://127.0.0.1:5001/"),
    ]
    osaka = nodes[1]
    assert (osaka["files_max_capacity"], osaka["enabled"]) == (3, False)
    assert osaka["selective_sync_namespace_ids"] == [1, 3]
    cli.ok(
        "node", "update", "osaka", "--sync-object-storage",
        "--container-repositories-max-capacity", "4", "--selective-sync-shards", "b,a",
    )  # fmt: skip
    osaka = json.loads(cli.ok("node", "list", "--json"))[1]
    assert osaka["sync_object_storage"] is True
    assert osaka["container_repositories_max_capacity"] == 4
    assert osaka["selective_sync_shards"] == ["b", "a"]
    assert all("secret" not in key for node in nodes for key in node)
    table = cli.ok("node", "list")
    assert "osaka" in table and "namespaces" in table
    assert cli.ok("node", "remove", "osaka").strip() == "removed node osaka"
    assert [n["name"] for n in json.loads(cli.ok("node", "list", "--json"))] == ["primary"]


def test_node_mistakes_are_one_line_errors(cli: Cli) -> None:
    cli.ok("node", "add", "primary", "http://127.0.0.1:5000", "--primary")
    assert cli.fails("node", "add", "primary", "http://127.0.0.1:5002") == (
        "error: a node named 'primary' already exists"
    )
    assert "already the primary" in cli.fails("node", "add", "b", "http://127.0.0.1:1", "--primary")
    assert "url must be an http:// or https:// URL" in cli.fails("node", "add", "b", "ftp://x")
    assert cli.fails("node", "update", "nope", "--files-max-capacity", "2") == (
        "error: node 'nope' not found"
    )
    assert "files_max_capacity" in cli.fails(
        "node", "update", "primary", "--files-max-capacity", "-2"
    )
    assert cli.fails("node", "remove", "nope") == "error: node 'nope' not found"
    assert len(json.loads(cli.ok("node", "list", "--json"))) == 1


def test_the_primary_is_not_removed_or_disabled_but_can_be_moved(cli: Cli) -> None:
    cli.ok("node", "add", "primary", "http://127.0.0.1:5000", "--primary")
    cli.ok("node", "add", "tokyo", "http://127.0.0.1:5001")
    before = cli.ok("node", "list", "--json")
    removed = cli.fails("node", "remove", "primary")
    assert removed.startswith("error: node 'primary' is the primary and cannot be removed")
    assert "promote another site first (`geosync node promote NAME`)" in removed
    assert "cannot be disabled" in cli.fails("node", "update", "primary", "--disabled")
    assert cli.ok("node", "list", "--json") == before

    promoted = cli.ok("node", "promote", "tokyo")
    assert promoted.strip() == "promoted node tokyo (id 2) to primary"
    gone = cli("node", "remove", "primary")
    assert (gone.code, gone.stdout.strip()) == (0, "removed node primary")
    assert gone.stderr.strip() == (
        "warning: no enabled secondary is left: nothing replicates the primary"
    )
    assert [(n["name"], n["primary"]) for n in json.loads(cli.ok("node", "list", "--json"))] == [
        ("tokyo", True)
    ]


def test_flags_are_listed_enabled_and_disabled(cli: Cli) -> None:
    flags = json.loads(cli.ok("flags", "list", "--json"))
    assert flags == [
        {"name": "geo_upload_replication", "enabled": True, "default": True},
        {"name": "geo_package_file_replication", "enabled": True, "default": True},
        {"name": "geo_snippet_replication", "enabled": True, "default": True},
    ]
    disabled = cli.ok("flags", "disable", "geo_snippet_replication")
    assert disabled.strip() == "geo_snippet_replication is now disabled"
    listed = {f["name"]: f["enabled"] for f in json.loads(cli.ok("flags", "list", "--json"))}
    assert listed["geo_snippet_replication"] is False
    assert "is now enabled" in cli.ok("flags", "enable", "geo_snippet_replication")
    assert "geo_snippet_replication" in cli.ok("flags", "list")


def test_an_unknown_flag_is_an_error_listing_the_known_flags(cli: Cli) -> None:
    assert cli.fails("flags", "enable", "geo_[bold]nope") == (
        "error: unknown flag 'geo_[bold]nope' (known flags: geo_package_file_replication,"
        " geo_snippet_replication, geo_upload_replication)"
    )


def test_a_command_before_db_upgrade_is_a_clear_error(tmp_path: Path, main_url: str) -> None:
    config = write_config(
        tmp_path / "fresh.toml",
        node_name="primary",
        main_database_url=main_url,
        secret_key_base=SECRET,
        replicators="geosync.demo.replicators",
    )
    error = Cli(config, tmp_path).fails("node", "list")
    assert error.startswith("error: database: ")
    assert "geosync db upgrade" in error


def test_a_missing_setting_is_named(tmp_path: Path) -> None:
    config = write_config(tmp_path / "partial.toml", node_name="primary", secret_key_base=SECRET)
    error = Cli(config, tmp_path).fails("flags", "list")
    assert error == (
        "error: setting 'main_database_url': missing"
        " (set it in the config file or GEOSYNC_MAIN_DATABASE_URL)"
    )


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    error = Cli(tmp_path / "nope.toml", tmp_path).fails("node", "list")
    assert error == f"error: config file {tmp_path / 'nope.toml'} does not exist"


def test_environment_variables_configure_the_console_script(cli: Cli) -> None:
    cli.ok("node", "add", "primary", "http://127.0.0.1:5000", "--primary")
    env = {"GEOSYNC_CONFIG": str(cli.config), "GEOSYNC_NODE_NAME": "someone-else"}
    result = cli.run([str(CONSOLE_SCRIPT), "node", "list", "--json"], env)
    assert result.code == 0, result.stderr
    assert [n["name"] for n in json.loads(result.stdout)] == ["primary"]
    bad = cli.run([str(CONSOLE_SCRIPT), "flags", "list"], {**env, "GEOSYNC_BACKOFF_SCALE": "x"})
    assert bad.code == 1
    assert bad.stderr.startswith("error: setting 'backoff_scale': ")
    assert "Traceback" not in bad.stderr
