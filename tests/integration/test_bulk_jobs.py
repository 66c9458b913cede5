"""Bulk jobs: one row per bulk request, run in keyset batches of 1,000, resumable, cancellable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from geosync.app import Geo
from geosync.db.tables import tracking_bulk_jobs
from geosync.demo.replicators import PackageFileReplicator, SnippetReplicator, UploadReplicator
from geosync.errors import ConfigurationError, InvalidTransition, NotFound, ValidationError
from geosync.jobs import (
    BATCH_SIZE,
    BulkJobLoop,
    JobAction,
    JobFilters,
    JobState,
    cancel_job,
    create_job,
    get_job,
    job_counts,
    list_jobs,
    run_job_batch,
)
from geosync.metrics import metrics_for
from geosync.states import SyncState, VerificationState
from geosync.status import JOB_FIELDS, compute_status
from geosync.testing import SitePair
from geosync.verification import primary_verifiable
from geosync.worker import Worker
from tests import verifyutil as vu
from tests.jobutil import FIRST, run_to_end, seed_synced, sync_states


def test_a_job_is_created_at_once_with_its_total_and_changes_nothing_yet(
    sites: SitePair,
) -> None:
    geo = sites.secondary
    registry = seed_synced(geo, 30, failed={FIRST + 1, FIRST + 2})
    job = create_job(geo, UploadReplicator, JobAction.RESYNC, JobFilters(), "ops (token 3)")
    assert (job.state, job.total, job.processed, job.last_key) == (JobState.QUEUED, 30, 0, None)
    assert job.created_by == "ops (token 3)" and job.started_at is None
    assert set(sync_states(geo, registry).values()) == {SyncState.SYNCED, SyncState.FAILED}
    assert get_job(geo, job.id) == job
    assert list_jobs(geo) == [job]
    as_json = job.as_json()
    assert as_json["state"] == "queued" and as_json["action"] == "resync"
    assert as_json["created_at"].endswith("Z")
    assert as_json["filters"] == {
        "ids": None,
        "replication_state": None,
        "verification_state": None,
    }


def test_a_job_runs_in_keyset_batches_of_1000_until_done(sites: SitePair) -> None:
    geo = sites.secondary
    registry = seed_synced(geo, 2500)
    job = create_job(geo, UploadReplicator, JobAction.RESYNC, JobFilters(), None)
    first = run_job_batch(geo, job.id)
    assert (first.state, first.processed, first.last_key) == (
        JobState.RUNNING,
        BATCH_SIZE,
        FIRST + BATCH_SIZE - 1,
    )
    assert first.started_at is not None
    states = sync_states(geo, registry)
    assert sum(s == SyncState.PENDING for s in states.values()) == BATCH_SIZE
    assert run_to_end(geo, job.id) == [2000, 2500]
    done = get_job(geo, job.id)
    assert done.state == JobState.DONE and done.finished_at is not None
    assert set(sync_states(geo, registry).values()) == {SyncState.PENDING}
    assert run_job_batch(geo, job.id) == done  # a finished job stays as it is


def test_filters_by_registry_ids_and_states_are_honoured(sites: SitePair) -> None:
    geo = sites.secondary
    failed = {FIRST + 3, FIRST + 4, FIRST + 8}
    registry = seed_synced(geo, 10, failed=failed)
    with geo.tracking_engine.connect() as conn:
        row_ids = {r.values["upload_id"]: r.id for r in registry.newest(conn, 10)}
    chosen = (row_ids[FIRST + 3], row_ids[FIRST + 5], row_ids[FIRST + 8])
    filters = JobFilters(ids=chosen, replication_state=SyncState.FAILED)
    job = create_job(geo, UploadReplicator, JobAction.RESYNC, filters, None)
    assert job.total == 2
    assert run_to_end(geo, job.id) == [2]
    states = sync_states(geo, registry)
    assert {k for k, s in states.items() if s == SyncState.PENDING} == {FIRST + 3, FIRST + 8}
    assert states[FIRST + 4] == SyncState.FAILED and states[FIRST + 5] == SyncState.SYNCED
    assert get_job(geo, job.id).filters == filters


def test_rows_changing_state_mid_job_are_judged_as_they_are_then(sites: SitePair) -> None:
    geo = sites.secondary
    registry = seed_synced(geo, 2500)
    job = create_job(geo, UploadReplicator, JobAction.RESYNC, JobFilters(), None)
    run_job_batch(geo, job.id)
    ahead, behind = FIRST + 2400, FIRST + 10
    with geo.tracking() as conn:
        registry.start(conn, ahead)  # stops matching: a sync runs now
        claim = registry.start(conn, behind)  # matches again, behind the keyset
        assert registry.synced(conn, behind, claim)
    assert run_to_end(geo, job.id) == [2000, 2499]
    states = sync_states(geo, registry)
    assert states[ahead] == SyncState.STARTED
    assert states[behind] == SyncState.SYNCED
    assert sum(s == SyncState.PENDING for s in states.values()) == 2498


def test_a_cancelled_job_stops_within_one_batch(sites: SitePair) -> None:
    geo = sites.secondary
    registry = seed_synced(geo, 2500)
    job = create_job(geo, UploadReplicator, JobAction.RESYNC, JobFilters(), None)
    run_job_batch(geo, job.id)
    cancelled = cancel_job(geo, job.id)
    assert cancelled.state == JobState.CANCELLED and cancelled.finished_at is not None
    assert run_job_batch(geo, job.id).processed == BATCH_SIZE
    states = sync_states(geo, registry)
    assert sum(s == SyncState.PENDING for s in states.values()) == BATCH_SIZE
    with pytest.raises(InvalidTransition, match="already cancelled"):
        cancel_job(geo, job.id)
    with pytest.raises(NotFound):
        cancel_job(geo, 999)
    with pytest.raises(NotFound):
        run_job_batch(geo, 999)


def test_a_second_job_of_the_same_type_and_action_is_refused(sites: SitePair) -> None:
    geo = sites.secondary
    seed_synced(geo, 5)
    job = create_job(geo, UploadReplicator, JobAction.RESYNC, JobFilters(), None)
    with pytest.raises(InvalidTransition, match=f"already queued or running \\(job {job.id}\\)"):
        create_job(geo, UploadReplicator, JobAction.RESYNC, JobFilters(ids=(1,)), None)
    other = create_job(geo, UploadReplicator, JobAction.REVERIFY, JobFilters(), None)
    assert other.state == JobState.QUEUED
    with pytest.raises(IntegrityError), geo.tracking() as conn:  # the database holds it too
        now = geo.clock.now()
        conn.execute(
            insert(tracking_bulk_jobs).values(
                replicable_name="upload",
                action="resync",
                filters={},
                state="queued",
                processed=0,
                total=0,
                active_key="upload:resync",
                created_at=now,
                updated_at=now,
            )
        )
    run_to_end(geo, job.id)
    again = create_job(geo, UploadReplicator, JobAction.RESYNC, JobFilters(), None)
    assert again.total == 0
    counts = job_counts(geo)
    assert (counts[JobState.QUEUED], counts[JobState.DONE]) == (2, 1)
    assert [j.id for j in list_jobs(geo, states=[JobState.QUEUED])] == [again.id, other.id]


def test_resync_jobs_run_on_secondaries_only_and_filters_fit_the_site(sites: SitePair) -> None:
    with pytest.raises(ConfigurationError, match="secondary"):
        create_job(sites.primary, UploadReplicator, JobAction.RESYNC, JobFilters(), None)
    with pytest.raises(ValidationError, match="replication_state"):
        filters = JobFilters(replication_state=SyncState.FAILED)
        create_job(sites.primary, UploadReplicator, JobAction.REVERIFY, filters, None)
    assert list_jobs(sites.primary) == []


def test_a_reverify_job_requeues_a_secondarys_verification(sites: SitePair) -> None:
    geo = sites.secondary
    registry = seed_synced(geo, 3)
    job = create_job(geo, UploadReplicator, JobAction.REVERIFY, JobFilters(), None)
    assert job.total == 3
    assert run_to_end(geo, job.id) == [3]
    with geo.tracking_engine.connect() as conn:
        states = {registry.require(conn, i).verification for i in range(FIRST, FIRST + 3)}
    assert states == {VerificationState.PENDING}


def test_the_primarys_recheckum_job_requeues_its_own_verification(sites: SitePair) -> None:
    geo = sites.primary
    ids = [vu.add_upload(geo, b"x") for _ in range(4)]
    states = primary_verifiable(geo, UploadReplicator)
    with geo.main() as conn:
        claims = states.claim(conn, 4)
        for claim in claims[:3]:
            assert states.succeeded(conn, claim.model_record_id, claim.started_at, "c")
        last = claims[3]
        states.failed(conn, last.model_record_id, last.started_at, "gone")
    failed_only = JobFilters(verification_state=VerificationState.FAILED)
    job = create_job(geo, UploadReplicator, JobAction.REVERIFY, failed_only, "cli (ops)")
    assert job.total == 1
    assert run_to_end(geo, job.id) == [1]
    picked = JobFilters(ids=(ids[0], ids[2]))
    second = create_job(geo, UploadReplicator, JobAction.REVERIFY, picked, None)
    assert run_to_end(geo, second.id) == [2]
    after = [vu.state_of(geo, UploadReplicator, i) for i in ids]
    assert [s["verification_state"] if s else None for s in after] == [
        VerificationState.PENDING,
        VerificationState.SUCCEEDED,
        VerificationState.PENDING,
        VerificationState.PENDING,
    ]
    assert [j.id for j in list_jobs(geo)] == [second.id, job.id]
    assert list_jobs(sites.secondary) == []  # the primary's jobs live in its main database


def test_a_job_whose_batch_fails_is_marked_failed_once(sites: SitePair) -> None:
    seed_synced(sites.secondary, 5)
    job = create_job(sites.secondary, UploadReplicator, JobAction.RESYNC, JobFilters(), None)
    # The application dropped the type while its job waited: the batch cannot run.
    without = Geo(sites.secondary.settings, [PackageFileReplicator, SnippetReplicator])
    try:
        failed = run_job_batch(without, job.id)
        assert failed.state == JobState.FAILED and failed.processed == 0
        assert failed.error is not None and failed.error.startswith("NotFound: ")
        assert run_job_batch(without, job.id) == failed
    finally:
        without.dispose()
    again = create_job(sites.secondary, UploadReplicator, JobAction.RESYNC, JobFilters(), None)
    assert again.state == JobState.QUEUED


_RUNNER = """
import sys, time
from geosync.app import Geo
from geosync.jobs import run_job_batch
from geosync.settings import Settings

geo = Geo(Settings.load(sys.argv[1]))
while run_job_batch(geo, int(sys.argv[2])).state.active:
    time.sleep(0.05)
"""


def test_a_job_killed_mid_way_resumes_and_changes_each_row_once(
    sites: SitePair, tmp_path: Path
) -> None:
    geo = sites.secondary
    registry = seed_synced(geo, 4500, failed={FIRST + 7, FIRST + 3333})
    config = tmp_path / "secondary.toml"
    settings = geo.settings.model_copy(update={"replicators": "geosync.demo.replicators"})
    config.write_text(settings.to_toml())
    job = create_job(geo, UploadReplicator, JobAction.RESYNC, JobFilters(), None)
    runner = subprocess.Popen(
        [sys.executable, "-c", _RUNNER, str(config), str(job.id)], cwd=Path.cwd()
    )
    try:
        deadline = time.monotonic() + 30
        while get_job(geo, job.id).processed < BATCH_SIZE and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(runner.pid, signal.SIGKILL)
    finally:
        runner.wait(10)
    interrupted = get_job(geo, job.id)
    assert interrupted.state == JobState.RUNNING
    assert BATCH_SIZE <= interrupted.processed < 4500
    run_to_end(geo, job.id)
    done = get_job(geo, job.id)
    assert done.state == JobState.DONE and done.processed == 4500
    assert set(sync_states(geo, registry).values()) == {SyncState.PENDING}


def test_the_worker_loop_runs_a_job_to_its_end(live_sites: SitePair) -> None:
    geo = live_sites.secondary
    registry = seed_synced(geo, 1200)
    worker = Worker(geo, [BulkJobLoop])
    worker.start()
    try:
        job = create_job(geo, UploadReplicator, JobAction.RESYNC, JobFilters(), None)
        deadline = time.monotonic() + 10
        while get_job(geo, job.id).state.active and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
    assert get_job(geo, job.id).state == JobState.DONE
    assert set(sync_states(geo, registry).values()) == {SyncState.PENDING}


def test_job_counts_appear_in_the_status_and_its_metrics(sites: SitePair) -> None:
    geo = sites.secondary
    seed_synced(geo, 3)
    finished = create_job(geo, UploadReplicator, JobAction.RESYNC, JobFilters(), None)
    run_to_end(geo, finished.id)
    create_job(geo, UploadReplicator, JobAction.REVERIFY, JobFilters(), None)
    status = compute_status(geo)
    assert {f: status[f] for f in JOB_FIELDS} == {
        "bulk_jobs_queued_count": 1,
        "bulk_jobs_running_count": 0,
        "bulk_jobs_done_count": 1,
        "bulk_jobs_cancelled_count": 0,
        "bulk_jobs_failed_count": 0,
    }
    text = generate_latest(metrics_for(geo).registry).decode()
    samples = {
        (s.name, s.labels.get("name")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("geo_bulk_jobs_queued", "secondary")] == 1.0
    assert samples[("geo_bulk_jobs_done", "secondary")] == 1.0
    assert samples[("geo_bulk_jobs_failed", "secondary")] == 0.0
