"""`geosync demo --postgres` without PostgreSQL's server binaries: one line, exit 1."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from geosync.cli import app
from geosync.testing import pg_standby


def test_demo_postgres_says_in_one_line_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_standby, "POSTGRES_ROOT", tmp_path / "no-postgresql-here")
    demo = tmp_path / "demo"

    result = CliRunner().invoke(app, ["demo", "--postgres", "--dir", str(demo)])

    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "--postgres" in lines[0] and "initdb, pg_ctl, pg_basebackup" in lines[0]
    assert not demo.exists()
