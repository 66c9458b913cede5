"""`geosync registries` run as a user runs it, against a real secondary on both backends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from geosync.cli import app
from geosync.demo.replicators import UploadReplicator
from geosync.registry import Registry
from geosync.settings import Settings
from geosync.states import VerificationState
from geosync.testing import SitePair

runner = CliRunner()
LONG_FAILURE = "Download failed: " + "the primary answered 500 Internal Server Error " * 5


def write_config(settings: Settings, path: Path) -> Path:
    """A TOML config file for `settings` naming the demo replicators."""
    toml = settings.to_toml()
    path.write_text('replicators = "geosync.demo.replicators"\n' + toml, encoding="utf-8")
    return path


def invoke(config: Path, *args: str, columns: int = 200) -> Any:
    return runner.invoke(app, ["--config", str(config), *args], env={"COLUMNS": str(columns)})


@pytest.fixture
def secondary_config(sites: SitePair, tmp_path: Path) -> Path:
    """The secondary's config, with upload registries 1-6 in every sync state."""
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, [1, 2, 3, 4, 5, 6])
        checked = registry.start(conn, 1)
        registry.synced(
            conn, 1, checked, verification=VerificationState.SUCCEEDED, checksum="a" * 64
        )
        registry.synced(conn, 2, registry.start(conn, 2))
        registry.failed(conn, 3, registry.start(conn, 3), LONG_FAILURE)
        registry.start(conn, 4)
        registry.failed(conn, 5, registry.start(conn, 5), "Primary missing file")
        registry.failed(conn, 5, registry.start(conn, 5), "Primary missing file")
    return write_config(sites.secondary.settings, tmp_path / "secondary.toml")


def test_json_lists_rows_newest_first_with_states_retries_and_failures(
    secondary_config: Path,
) -> None:
    result = invoke(secondary_config, "registries", "upload", "--json")

    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [row["model_record_id"] for row in rows] == [6, 5, 4, 3, 2, 1]
    by_record = {row["model_record_id"]: row for row in rows}
    assert {r: by_record[r]["state"] for r in by_record} == {
        1: "synced",
        2: "synced",
        3: "failed",
        4: "started",
        5: "failed",
        6: "pending",
    }
    assert by_record[1]["verification_state"] == "succeeded"
    assert by_record[2]["verification_state"] == "disabled"
    assert by_record[5]["retry_count"] == 2 and by_record[5]["retry_at"] is not None
    assert by_record[5]["last_sync_failure"] == "Primary missing file"
    assert by_record[3]["last_sync_failure"] == LONG_FAILURE  # JSON has it whole
    assert by_record[1]["last_synced_at"] is not None and by_record[6]["last_synced_at"] is None
    assert set(rows[0]) == {
        "id",
        "model_record_id",
        "state",
        "verification_state",
        "retry_count",
        "retry_at",
        "last_synced_at",
        "last_sync_failure",
    }


def test_filters_by_sync_and_verification_state_and_limits(secondary_config: Path) -> None:
    failed = invoke(secondary_config, "registries", "uploads", "--state", "failed", "--json")
    verified = invoke(
        secondary_config, "registries", "upload", "--verification", "succeeded", "--json"
    )
    both = invoke(
        secondary_config,
        "registries",
        "upload",
        "--state",
        "synced",
        "--verification",
        "disabled",
        "--json",
    )
    limited = invoke(secondary_config, "registries", "upload", "--limit", "2", "--json")

    for result in (failed, verified, both, limited):
        assert result.exit_code == 0, result.output
    assert [r["model_record_id"] for r in json.loads(failed.stdout)] == [5, 3]
    assert [r["model_record_id"] for r in json.loads(verified.stdout)] == [1]
    assert [r["model_record_id"] for r in json.loads(both.stdout)] == [2]
    assert [r["model_record_id"] for r in json.loads(limited.stdout)] == [6, 5]


def test_table_fits_100_columns_and_cuts_the_failure_text(secondary_config: Path) -> None:
    result = invoke(secondary_config, "registries", "upload", columns=100)

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100, result.stdout
    assert "upload_registry: 6 row(s)" in result.stdout
    failed_row = next(line for line in lines if " 3 " in line and "failed" in line)
    assert "Download failed" in failed_row and "…" in failed_row
    assert LONG_FAILURE not in result.stdout
    pending_row = next(line for line in lines if "pending" in line)
    assert pending_row.split()[:4] == ["6", "6", "pending", "disabled"]
    assert "succeeded" in next(line for line in lines if line.split()[:1] == ["1"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["widget"], "unknown replicable 'widget' (known: upload, package_file, snippet)"),
        (["upload", "--state", "done"], "unknown sync state 'done' (use: pending, started,"),
        (["upload", "--verification", "ok"], "unknown verification state 'ok' (use: pending,"),
        (["upload", "--limit", "0"], "limit must be between 1 and 1000, got 0"),
        (["upload", "--limit", "1001"], "limit must be between 1 and 1000, got 1001"),
    ],
)
def test_bad_names_states_and_limits_are_one_line_and_exit_1(
    secondary_config: Path, args: list[str], message: str
) -> None:
    result = invoke(secondary_config, "registries", *args)

    assert result.exit_code == 1
    assert result.stdout == ""
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_on_a_primary_it_says_to_use_a_secondary(sites: SitePair, tmp_path: Path) -> None:
    config = write_config(sites.primary.settings, tmp_path / "primary.toml")

    result = invoke(config, "registries", "upload")

    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: registries runs on a secondary: this site has no tracking database"
        " (run it with a secondary's configuration)"
    )
