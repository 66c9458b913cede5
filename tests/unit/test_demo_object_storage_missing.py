"""`geosync demo --object-storage` without moto's server installed: one line, exit 1."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from geosync.cli import app


def test_demo_object_storage_says_in_one_line_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "moto.server", None)  # `import moto.server` now fails
    demo = tmp_path / "demo"

    result = CliRunner().invoke(app, ["demo", "--object-storage", "--dir", str(demo)])

    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "--object-storage" in lines[0] and "pip install 'moto[server]'" in lines[0]
    assert not demo.exists()
