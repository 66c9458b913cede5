"""`geosync jobs list|show|cancel` and the bulk `--all` of `resync`/`reverify` as jobs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from geosync.cli import app
from geosync.jobs import JobState, get_job
from geosync.states import SyncState
from geosync.testing import SitePair
from tests.jobutil import FIRST, seed_synced, sync_states


@pytest.fixture
def config(sites: SitePair, tmp_path: Path) -> Path:
    settings = sites.secondary.settings.model_copy(
        update={"replicators": "geosync.demo.replicators"}
    )
    path = tmp_path / "secondary.toml"
    path.write_text(settings.to_toml())
    return path


def geosync(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["--config", str(config), *args])
    return result.exit_code, result.output


def test_resync_all_queues_a_job_and_returns_at_once(sites: SitePair, config: Path) -> None:
    registry = seed_synced(sites.secondary, 3)
    code, output = geosync(config, "resync", "uploads", "--all")
    assert code == 0, output
    assert "job 1 queued: resync of 3 uploads" in output
    assert set(sync_states(sites.secondary, registry).values()) == {SyncState.SYNCED}
    job = get_job(sites.secondary, 1)
    assert job.state == JobState.QUEUED and (job.created_by or "").startswith("cli (")
    code, output = geosync(config, "resync", "uploads", "--all", "--failed")
    assert code == 1
    assert "already queued or running (job 1)" in output and "Traceback" not in output


def test_jobs_list_show_and_cancel(sites: SitePair, config: Path) -> None:
    seed_synced(sites.secondary, 3)
    assert geosync(config, "resync", "uploads", "--all")[0] == 0
    code, output = geosync(config, "jobs", "list", "--json")
    assert code == 0, output
    (listed,) = json.loads(output)
    assert (listed["id"], listed["state"], listed["total"]) == (1, "queued", 3)
    code, output = geosync(config, "jobs", "show", "1", "--json")
    assert json.loads(output) == listed
    code, output = geosync(config, "jobs", "list")
    assert code == 0 and "queued" in output and "0/3" in output
    code, output = geosync(config, "jobs", "cancel", "1")
    assert code == 0 and "job 1 cancelled after 0 of 3 rows" in output
    assert json.loads(geosync(config, "jobs", "list", "--json", "--state", "queued")[1]) == []
    code, output = geosync(config, "jobs", "cancel", "1")
    assert code == 1 and "bulk job 1 is already cancelled" in output
    code, output = geosync(config, "jobs", "show", "99")
    assert code == 1 and "bulk job 99 not found" in output
    code, output = geosync(config, "jobs", "list", "--state", "sleeping")
    assert code == 1 and "unknown job state" in output


def test_wait_follows_the_job_to_its_end(sites: SitePair, config: Path) -> None:
    registry = seed_synced(sites.secondary, 1500, failed={FIRST, FIRST + 1})
    code, output = geosync(config, "reverify", "uploads", "--all", "--wait")
    assert code == 0, output
    assert "1498 uploads queued for verification (job 1)" in output
    code, output = geosync(config, "resync", "uploads", "--all", "--wait")
    assert code == 0, output
    assert "1500 uploads queued for sync (job 2)" in output
    assert set(sync_states(sites.secondary, registry).values()) == {SyncState.PENDING}
    assert get_job(sites.secondary, 2).state == JobState.DONE
    code, output = geosync(config, "resync", "uploads", "--id", "1", "--wait")
    assert code == 1 and "--wait only goes with --all" in output
