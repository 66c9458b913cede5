"""`geosync resync`: operator re-queues on a secondary, one row or all in batches."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from geosync.cli import app
from geosync.demo.replicators import UploadReplicator
from geosync.errors import ConfigurationError, InvalidTransition
from geosync.registry import Registry
from geosync.resync import resync_all, resync_count, resync_one
from geosync.states import SyncState
from geosync.testing import SitePair


def seed_states(sites: SitePair) -> Registry:
    """Rows 1-3 synced, 4-5 failed, 6 pending, 7 started."""
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, list(range(1, 8)))
        for model_id in range(1, 6):
            started = registry.start(conn, model_id)
            if model_id <= 3:
                assert registry.synced(conn, model_id, started)
            else:
                registry.failed(conn, model_id, started, "boom")
        registry.start(conn, 7)
    return registry


def states(sites: SitePair, registry: Registry) -> dict[int, SyncState]:
    with sites.secondary.tracking_engine.connect() as conn:
        return {i: registry.require(conn, i).sync_state for i in range(1, 8)}


def test_resync_all_moves_synced_and_failed_rows_but_not_running_ones(sites: SitePair) -> None:
    registry = seed_states(sites)
    assert resync_count(sites.secondary, UploadReplicator, failed_only=False) == 5
    assert sum(resync_all(sites.secondary, UploadReplicator, failed_only=False)) == 5
    after = states(sites, registry)
    assert [after[i] for i in range(1, 7)] == [SyncState.PENDING] * 6
    assert after[7] == SyncState.STARTED


def test_resync_failed_only_leaves_synced_rows(sites: SitePair) -> None:
    registry = seed_states(sites)
    assert sum(resync_all(sites.secondary, UploadReplicator, failed_only=True)) == 2
    after = states(sites, registry)
    assert [after[i] for i in (1, 2, 3)] == [SyncState.SYNCED] * 3
    assert [after[i] for i in (4, 5)] == [SyncState.PENDING] * 2


def test_resync_one_refuses_a_running_sync_and_runs_only_on_secondaries(sites: SitePair) -> None:
    seed_states(sites)
    resync_one(sites.secondary, UploadReplicator, 1)
    with pytest.raises(InvalidTransition, match="it is started"):
        resync_one(sites.secondary, UploadReplicator, 7)
    with pytest.raises(ConfigurationError, match="secondary"):
        resync_one(sites.primary, UploadReplicator, 1)


def test_cli_resync_reports_counts_and_user_errors(sites: SitePair, tmp_path: Path) -> None:
    seed_states(sites)
    config = tmp_path / "secondary.toml"
    settings = sites.secondary.settings.model_copy(
        update={"replicators": "geosync.demo.replicators"}
    )
    config.write_text(settings.to_toml())
    runner = CliRunner()
    args = ["--config", str(config), "resync", "uploads", "--all", "--failed", "--wait"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 failed uploads queued for sync (job 1)" in result.output
    bad = runner.invoke(
        app, ["--config", str(config), "resync", "uploads", "--failed", "--id", "1"]
    )
    assert bad.exit_code == 1
    assert "--failed only goes with --all" in bad.output
