"""Every user mistake is one line on stderr and a non-zero exit, for every command.

The commands run as real `python -m geosync` processes with a config file and a clean
environment: bad database URLs, missing or broken config files, unknown settings, a replicators
module that does not exist. Also `--version` and `--config` after the subcommand.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from geosync import __version__
from geosync.demo.models import Base
from geosync.testing.servers import free_port

SECRET = "c" * 40
PASSWORD = "hunter2-not-for-logs"


@dataclass(frozen=True)
class Result:
    """A finished command."""

    code: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        """stderr's non-empty lines."""
        return [line for line in self.stderr.splitlines() if line.strip()]


def geosync(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Result:
    """Run `python -m geosync ARGS` with no GEOSYNC_* variables but `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("GEOSYNC_")}
    base.update({"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}, **(env or {}))
    done = subprocess.run(
        [sys.executable, "-m", "geosync", *args],
        cwd=cwd,
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def write_config(path: Path, **values: str) -> Path:
    """A TOML file of string `values`."""
    path.write_text("".join(f'{k} = "{v}"\n' for k, v in values.items()), encoding="utf-8")
    return path


def site_config(path: Path, **values: str) -> Path:
    """A primary's config file; `values` replace or add settings."""
    settings = {
        "node_name": "primary",
        "main_database_url": f"sqlite:///{path.parent / 'main.db'}",
        "secret_key_base": SECRET,
        "replicators": "geosync.demo.replicators",
    }
    settings.update(values)
    return write_config(path, **settings)


def ready_site(path: Path, **values: str) -> Path:
    """`site_config`, with the demo application's own tables in its SQLite main database."""
    config = site_config(path, **values)
    engine = create_engine(f"sqlite:///{path.parent / 'main.db'}")
    Base.metadata.create_all(engine)
    engine.dispose()
    return config


#: Each command as an operator types it (`serve` gets a port of its own when run).
COMMANDS = {
    "check": ["check"],
    "serve": ["serve", "--port", "0"],
    "worker": ["worker"],
    "db upgrade": ["db", "upgrade"],
    "status": ["status"],
    "node list": ["node", "list"],
    "flags list": ["flags", "list"],
    "explain": ["explain", "upload", "1"],
    "resync": ["resync", "upload", "--all"],
    "reverify": ["reverify", "upload", "--all"],
    "admin-token": ["admin-token", "create"],
}


def command(name: str) -> list[str]:
    """The arguments of command `name`, with a free port for `serve`."""
    args = list(COMMANDS[name])
    if name == "serve":
        args[-1] = str(free_port())
    return args


def assert_one_line(result: Result, name: str, expected: str) -> None:
    """`result` failed with exit code 1 and exactly one line on stderr naming `expected`;
    `check` reports the problem as its FAIL line on stdout and counts failures on stderr."""
    assert result.code == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr_lines) == 1, result.stderr
    if name == "check":
        assert result.stderr_lines == ["1 check(s) failed"]
        fail_lines = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
        assert len(fail_lines) == 1, result.stdout
        assert expected in fail_lines[0]
    else:
        assert result.stderr_lines[0].startswith("error: ")
        assert expected in result.stderr_lines[0]


BAD_URLS = [
    pytest.param(
        f"mysql://root:{PASSWORD}@127.0.0.1/app",
        "setting 'main_database_url': unsupported database 'mysql'"
        " (geosync supports sqlite and postgresql+psycopg)",
        id="mysql",
    ),
    pytest.param(
        "not a url", "setting 'main_database_url': 'not a url' is not a database URL", id="not-url"
    ),
    pytest.param(
        f"postgresql://app:{PASSWORD}@127.0.0.1:port/app",
        "setting 'main_database_url': 'postgresql://app:***@127.0.0.1:port/app'"
        " is not a database URL",
        id="bad-port",
    ),
    pytest.param(
        "postgresql+asyncpg://app@127.0.0.1/app",
        "setting 'main_database_url': unsupported driver 'postgresql+asyncpg'",
        id="driver",
    ),
]


@pytest.mark.parametrize("name", ["check", "serve", "worker", "db upgrade", "status"])
@pytest.mark.parametrize(("url", "expected"), BAD_URLS)
def test_a_database_url_geosync_cannot_use_is_one_line(
    tmp_path: Path, name: str, url: str, expected: str
) -> None:
    config = site_config(tmp_path / "geosync.toml", main_database_url=url)
    result = geosync("--config", str(config), *command(name), cwd=tmp_path)
    assert_one_line(result, name, expected)
    assert PASSWORD not in result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_missing_config_file_is_one_line(tmp_path: Path, name: str) -> None:
    result = geosync("--config", str(tmp_path / "nope.toml"), *command(name), cwd=tmp_path)
    assert_one_line(result, name, f"config file {tmp_path / 'nope.toml'} does not exist")


@pytest.mark.parametrize("name", ["check", "serve", "worker", "db upgrade", "status"])
def test_a_config_file_that_is_not_toml_is_one_line(tmp_path: Path, name: str) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text('node_name = "primary"\nmain_database_url = \n', encoding="utf-8")
    result = geosync("--config", str(broken), *command(name), cwd=tmp_path)
    assert_one_line(result, name, f"config file {broken} is not valid TOML")


@pytest.mark.parametrize("name", ["check", "serve", "worker", "db upgrade", "status"])
def test_an_unknown_setting_is_one_line_naming_it(tmp_path: Path, name: str) -> None:
    config = site_config(tmp_path / "geosync.toml", main_databse_url="sqlite:///x.db")
    result = geosync("--config", str(config), *command(name), cwd=tmp_path)
    assert_one_line(result, name, "setting 'main_databse_url': is not a known setting")


def test_an_unknown_setting_in_the_environment_is_ignored_like_any_variable(
    tmp_path: Path,
) -> None:
    """pydantic-settings reads only the variables of known settings: a misspelt GEOSYNC_*
    variable cannot be told from another program's, so it is not an error."""
    config = ready_site(tmp_path / "geosync.toml")
    result = geosync(
        "--config", str(config), "db", "upgrade", cwd=tmp_path, env={"GEOSYNC_NODE_NAM": "x"}
    )
    assert result.code == 0, result.stderr


@pytest.mark.parametrize("name", ["check", "serve", "worker", "db upgrade", "status"])
def test_a_missing_replicators_module_is_one_line(tmp_path: Path, name: str) -> None:
    config = site_config(tmp_path / "geosync.toml", replicators="myapp.nowhere")
    result = geosync("--config", str(config), *command(name), cwd=tmp_path)
    assert_one_line(result, name, "setting 'replicators': cannot import 'myapp.nowhere'")


def test_a_bad_event_log_max_age_in_the_environment_is_one_line(tmp_path: Path) -> None:
    config = site_config(tmp_path / "geosync.toml")
    env = {"GEOSYNC_EVENT_LOG_MAX_AGE": "a week"}
    result = geosync("--config", str(config), "status", cwd=tmp_path, env=env)
    assert_one_line(result, "status", "setting 'event_log_max_age': 'a week' is not a duration")


def test_version_prints_the_version(tmp_path: Path) -> None:
    result = geosync("--version", cwd=tmp_path)
    assert (result.code, result.stdout, result.stderr) == (0, f"geosync {__version__}\n", "")


def test_a_version_variable_in_the_environment_is_not_the_version_option(tmp_path: Path) -> None:
    config = site_config(tmp_path / "geosync.toml", main_database_url="mysql://127.0.0.1/x")
    result = geosync("-c", str(config), "status", cwd=tmp_path, env={"GEOSYNC_VERSION": "1"})
    assert_one_line(result, "status", "unsupported database 'mysql'")


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--config", "{config}", "node", "list"], id="before"),
        pytest.param(["node", "list", "--config", "{config}"], id="after"),
        pytest.param(["node", "list", "-c", "{config}"], id="after-short"),
        pytest.param(["-c", "{other}", "node", "list", "-c", "{config}"], id="after-wins"),
    ],
)
def test_config_is_accepted_before_and_after_the_subcommand(
    tmp_path: Path, args: list[str]
) -> None:
    config = ready_site(tmp_path / "geosync.toml")
    other = site_config(tmp_path / "other.toml", main_database_url="mysql://127.0.0.1/x")
    upgraded = geosync("db", "upgrade", "-c", str(config), cwd=tmp_path)
    assert upgraded.code == 0, upgraded.stderr
    filled = [a.format(config=config, other=other) for a in args]
    result = geosync(*filled, cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert "selective_sync_type" in result.stdout  # the (empty) node table's header


def test_the_config_environment_variable_still_works(tmp_path: Path) -> None:
    config = site_config(tmp_path / "geosync.toml", main_database_url="mysql://127.0.0.1/x")
    result = geosync("status", cwd=tmp_path, env={"GEOSYNC_CONFIG": str(config)})
    assert_one_line(result, "status", "unsupported database 'mysql'")


def test_config_after_the_subcommand_beats_the_environment_variable(tmp_path: Path) -> None:
    bad = site_config(tmp_path / "bad.toml", main_database_url="mysql://127.0.0.1/x")
    good = ready_site(tmp_path / "geosync.toml")
    result = geosync(
        "db", "upgrade", "-c", str(good), cwd=tmp_path, env={"GEOSYNC_CONFIG": str(bad)}
    )
    assert result.code == 0, result.stderr
    assert "main database:" in result.stdout


def test_serve_on_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    config = ready_site(tmp_path / "geosync.toml")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = geosync("serve", "-c", str(config), "--port", str(port), cwd=tmp_path)
    assert_one_line(result, "serve", f"cannot listen on 127.0.0.1:{port}: Address already in use")


@pytest.mark.parametrize("name", ["check", "db upgrade", "status", "node list", "admin-token"])
def test_an_unreachable_database_is_one_line(tmp_path: Path, name: str) -> None:
    url = f"postgresql+psycopg://geosync:{PASSWORD}@127.0.0.1:{free_port()}/app"
    config = site_config(tmp_path / "geosync.toml", main_database_url=url)
    result = geosync("-c", str(config), *command(name), cwd=tmp_path)
    expected = "cannot connect" if name == "check" else "error: database: connection failed"
    assert_one_line(result, name, expected)
    assert PASSWORD not in result.stdout + result.stderr
