"""The primary's verification with real files, real git repositories and both databases:
checksumming, publishing `checksum_succeeded`, capacity, re-verification, backfill and the CLI.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy import Table, func, insert, select, text, update
from typer.testing import CliRunner

from geosync.app import Geo
from geosync.cli import app as cli_app
from geosync.clock import FrozenClock
from geosync.demo.models import PackageFile, Upload
from geosync.demo.replicators import PackageFileReplicator, SnippetReplicator, UploadReplicator
from geosync.flags import set_flag
from geosync.git import init_bare, repository_checksum
from geosync.nodes import NodeStore
from geosync.primary.backfill import backfill_all
from geosync.primary.verification import (
    PrimaryVerificationLoop,
    PrimaryVerificationSweepLoop,
    requeue_stale,
)
from geosync.states import VerificationState
from geosync.testing import SitePair

try:
    from tests import gitutil
    from tests import verifyutil as vu
except ModuleNotFoundError:  # tests/ is not a package and the project root is not on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests import gitutil
    from tests import verifyutil as vu

S = VerificationState


@pytest.fixture
def loop(sites: SitePair) -> Iterator[PrimaryVerificationLoop]:
    verification = PrimaryVerificationLoop(sites.primary, threads=2)
    yield verification
    verification.close()


def run_until_idle(loop: PrimaryVerificationLoop) -> None:
    for _ in range(100):
        if loop.run_once() > 0:
            return
    raise AssertionError("verification never ran out of work")


def upload_state(sites: SitePair, record_id: int) -> dict[str, object]:
    state = vu.state_of(sites.primary, UploadReplicator, record_id)
    assert state is not None
    return state


# -- checksums ------------------------------------------------------------------------------------


def test_uploads_are_checksummed_with_sha256_and_announced(
    sites: SitePair, loop: PrimaryVerificationLoop
) -> None:
    content = b"hello world" * 100_000
    record_id = vu.add_upload(sites.primary, content)
    run_until_idle(loop)
    state = upload_state(sites, record_id)
    assert state["verification_state"] == S.SUCCEEDED
    assert state["verification_checksum"] == vu.sha256(content)
    assert ("upload", "checksum_succeeded", record_id) in vu.event_names(sites.primary)


def test_an_empty_file_has_the_sha256_of_nothing(
    sites: SitePair, loop: PrimaryVerificationLoop
) -> None:
    record_id = vu.add_upload(sites.primary, b"")
    run_until_idle(loop)
    assert upload_state(sites, record_id)["verification_checksum"] == vu.EMPTY_SHA256


def test_a_missing_file_fails_with_a_clear_message(
    sites: SitePair, loop: PrimaryVerificationLoop
) -> None:
    record_id = vu.add_upload(sites.primary, None)
    run_until_idle(loop)
    state = upload_state(sites, record_id)
    assert state["verification_state"] == S.FAILED
    assert state["verification_failure"] == "File is missing"
    assert ("upload", "checksum_succeeded", record_id) not in vu.event_names(sites.primary)


def test_package_files_keep_their_checksum_on_their_own_row(
    sites: SitePair, loop: PrimaryVerificationLoop
) -> None:
    record_id = vu.add_package_file(sites.primary, b"package")
    run_until_idle(loop)
    state = vu.state_of(sites.primary, PackageFileReplicator, record_id)
    assert state is not None
    assert (state["verification_state"], state["verification_checksum"]) == (
        S.SUCCEEDED,
        vu.sha256(b"package"),
    )


def test_repositories_are_checksummed_from_their_refs(
    sites: SitePair, loop: PrimaryVerificationLoop, tmp_path: Path
) -> None:
    empty_id = vu.add_snippet(sites.primary)
    full_id = vu.add_snippet(sites.primary)
    root = sites.primary.settings.repository_storage_root
    assert root is not None
    init_bare(root / f"snippets/000/{empty_id}.git")
    full = root / f"snippets/000/{full_id}.git"
    init_bare(full)
    worktree = gitutil.make_worktree(full, tmp_path / "work")
    gitutil.commit_file(worktree, "a.txt", "a")
    gitutil.push(worktree)
    run_until_idle(loop)
    empty = vu.state_of(sites.primary, SnippetReplicator, empty_id)
    assert empty is not None and empty["verification_checksum"] == "0" * 40
    state = vu.state_of(sites.primary, SnippetReplicator, full_id)
    assert state is not None
    assert state["verification_checksum"] == repository_checksum(full) != "0" * 40


def test_a_missing_repository_fails_with_a_clear_message(
    sites: SitePair, loop: PrimaryVerificationLoop
) -> None:
    record_id = vu.add_snippet(sites.primary)
    run_until_idle(loop)
    state = vu.state_of(sites.primary, SnippetReplicator, record_id)
    assert state is not None
    assert state["verification_failure"] == "Repository is missing"


# -- limits and switches ------------------------------------------------------------------------


def test_claims_stay_within_the_primary_nodes_capacity(
    sites: SitePair, loop: PrimaryVerificationLoop
) -> None:
    ids = [vu.add_upload(sites.primary, b"x") for _ in range(4)]
    with sites.primary.main() as conn:
        NodeStore(sites.primary, conn).update(sites.primary_node.id, verification_max_capacity=3)
        # Two checksums "running in another worker" leave room for one more.
        target = vu.primary_states(sites.primary)
        conn.execute(
            update(target.table)
            .where(target.key.in_(ids[:2]))
            .values(verification_state=S.STARTED, verification_started_at=sites.primary.clock.now())
        )
    loop.run_once()
    states = [upload_state(sites, i)["verification_state"] for i in ids]
    assert states == [S.STARTED, S.STARTED, S.SUCCEEDED, S.PENDING]


@pytest.mark.parametrize("threads", [1, 2])
def test_a_round_verifies_several_batches_within_the_capacity(
    sites: SitePair, threads: int
) -> None:
    ids = [vu.add_upload(sites.primary, f"file {i}".encode()) for i in range(28)]
    missing = vu.add_upload(sites.primary, None)
    with sites.primary.main() as conn:
        NodeStore(sites.primary, conn).update(sites.primary_node.id, verification_max_capacity=25)
    loop = PrimaryVerificationLoop(sites.primary, threads=threads)
    try:
        assert loop.run_once() == 0.0
        first = [upload_state(sites, i)["verification_state"] for i in [*ids, missing]]
        # Batches of 12 (half the capacity), two in flight: one round verifies all 29.
        assert first.count(S.PENDING) == first.count(S.STARTED) == 0
        run_until_idle(loop)
    finally:
        loop.close()
    for index, record_id in enumerate(ids):
        state = upload_state(sites, record_id)
        assert state["verification_checksum"] == vu.sha256(f"file {index}".encode())
    assert upload_state(sites, missing)["verification_failure"] == "File is missing"
    announced = [
        i for name, event, i in vu.event_names(sites.primary) if event == "checksum_succeeded"
    ]
    assert sorted(announced) == ids


def test_checksums_are_not_announced_without_a_secondary(
    sites: SitePair, loop: PrimaryVerificationLoop
) -> None:
    with sites.primary.main() as conn:
        NodeStore(sites.primary, conn).remove(sites.secondary_node.id)
    record_id = vu.add_upload(sites.primary, b"alone")
    run_until_idle(loop)
    assert upload_state(sites, record_id)["verification_state"] == S.SUCCEEDED
    assert vu.event_names(sites.primary) == []


def test_nothing_is_checksummed_while_the_flag_is_off(
    sites: SitePair, loop: PrimaryVerificationLoop
) -> None:
    record_id = vu.add_upload(sites.primary, b"x")
    with sites.primary.main() as conn:
        set_flag(
            conn, sites.primary.catalog, "geo_upload_replication", False, sites.primary.clock.now()
        )
    run_until_idle(loop)
    assert upload_state(sites, record_id)["verification_state"] == S.PENDING


def test_a_site_that_is_not_the_primary_checksums_nothing(
    sites: SitePair, loop: PrimaryVerificationLoop
) -> None:
    record_id = vu.add_upload(sites.primary, b"x")
    with sites.primary.main() as conn:
        NodeStore(sites.primary, conn).promote(sites.secondary_node.id)
    assert loop.run_once() > 0
    assert upload_state(sites, record_id)["verification_state"] == S.PENDING


def test_a_result_for_a_record_changed_during_its_checksum_is_dropped(
    sites: SitePair, clock: FrozenClock
) -> None:
    from geosync.primary.verification import verify_batch

    record_id = vu.add_package_file(sites.primary, b"v1")
    target = vu.package_states(sites.primary)
    with sites.primary.main() as conn:
        (claim,) = target.claim(conn, 10)
    vu.write(vu.package_file_path(sites.primary, record_id), b"v2")
    PackageFileReplicator(model_record_id=record_id, geo=sites.primary).handle_after_update()
    assert verify_batch(sites.primary, target, [claim]) == 0
    state = vu.state_of(sites.primary, PackageFileReplicator, record_id)
    assert state is not None and state["verification_state"] == S.PENDING


# -- re-verification ----------------------------------------------------------------------------


def test_reverification_waits_for_the_nodes_interval(
    sites: SitePair, loop: PrimaryVerificationLoop, clock: FrozenClock
) -> None:
    record_id = vu.add_upload(sites.primary, b"x")
    run_until_idle(loop)
    clock.advance(timedelta(days=6, hours=23))
    with sites.primary.main() as conn:
        node = sites.primary.current_node(conn)
        assert node is not None and node.minimum_reverification_interval == 7
        assert requeue_stale(sites.primary, conn, node, UploadReplicator) == 0
    clock.advance(timedelta(hours=2))
    with sites.primary.main() as conn:
        assert requeue_stale(sites.primary, conn, node, UploadReplicator) == 1
    assert upload_state(sites, record_id)["verification_state"] == S.PENDING
    run_until_idle(loop)
    assert upload_state(sites, record_id)["verification_state"] == S.SUCCEEDED


def test_a_shorter_interval_on_the_node_reverifies_sooner(
    sites: SitePair, loop: PrimaryVerificationLoop, clock: FrozenClock
) -> None:
    record_id = vu.add_upload(sites.primary, b"x")
    run_until_idle(loop)
    with sites.primary.main() as conn:
        node = NodeStore(sites.primary, conn).update(
            sites.primary_node.id, minimum_reverification_interval=1
        )
    clock.advance(timedelta(days=1, seconds=1))
    with sites.primary.main() as conn:
        assert requeue_stale(sites.primary, conn, node, UploadReplicator) == 1
    assert upload_state(sites, record_id)["verification_state"] == S.PENDING


def test_a_file_changed_behind_geosyncs_back_fails_reverification(
    sites: SitePair, loop: PrimaryVerificationLoop, clock: FrozenClock
) -> None:
    record_id = vu.add_upload(sites.primary, b"original")
    run_until_idle(loop)
    vu.write(vu.upload_file(sites.primary, record_id), b"tampered")
    clock.advance(timedelta(days=8))
    PrimaryVerificationSweepLoop(sites.primary).run_once()
    run_until_idle(loop)
    state = upload_state(sites, record_id)
    assert state["verification_state"] == S.FAILED
    failure = str(state["verification_failure"])
    assert failure.startswith("Checksum does not match the last verified checksum")
    assert "file changed without an update" in failure
    assert vu.sha256(b"original") in failure and vu.sha256(b"tampered") in failure
    # The corrupted file is never accepted on retry; restoring it heals the record.
    clock.advance(timedelta(hours=2))
    run_until_idle(loop)
    assert upload_state(sites, record_id)["verification_state"] == S.FAILED
    vu.write(vu.upload_file(sites.primary, record_id), b"original")
    clock.advance(timedelta(hours=2))
    run_until_idle(loop)
    state = upload_state(sites, record_id)
    assert state["verification_state"] == S.SUCCEEDED
    assert state["verification_checksum"] == vu.sha256(b"original")


def test_a_mutable_file_changed_without_an_update_fails_once_then_takes_the_new_content(
    sites: SitePair, loop: PrimaryVerificationLoop, clock: FrozenClock
) -> None:
    record_id = vu.add_package_file(sites.primary, b"v1")
    run_until_idle(loop)
    vu.write(vu.package_file_path(sites.primary, record_id), b"v2")
    clock.advance(timedelta(days=8))
    PrimaryVerificationSweepLoop(sites.primary).run_once()
    run_until_idle(loop)
    state = vu.state_of(sites.primary, PackageFileReplicator, record_id)
    assert state is not None and state["verification_state"] == S.FAILED
    assert "the file changed without an update" in str(state["verification_failure"])
    clock.advance(timedelta(hours=2))
    run_until_idle(loop)
    state = vu.state_of(sites.primary, PackageFileReplicator, record_id)
    assert state is not None
    assert (state["verification_state"], state["verification_checksum"]) == (
        S.SUCCEEDED,
        vu.sha256(b"v2"),
    )
    # Secondaries learn of the new checksum and re-verify their copies against it.
    announced = vu.event_names(sites.primary).count(
        ("package_file", "checksum_succeeded", record_id)
    )
    assert announced == 2


def test_the_sweep_fails_checksums_running_for_over_eight_hours(
    sites: SitePair, clock: FrozenClock
) -> None:
    record_id = vu.add_upload(sites.primary, b"x")
    target = vu.primary_states(sites.primary)
    with sites.primary.main() as conn:
        target.claim(conn, 10)
    clock.advance(timedelta(hours=8, seconds=1))
    PrimaryVerificationSweepLoop(sites.primary).run_once()
    state = upload_state(sites, record_id)
    assert state["verification_state"] == S.FAILED
    assert state["verification_failure"] == "Verification timed out after 8 hours"


# -- backfill -------------------------------------------------------------------------------------


def test_backfill_adds_missing_state_rows_across_id_ranges(sites: SitePair) -> None:
    geo = sites.primary
    target = vu.primary_states(geo)
    with geo.main() as conn:  # rows written behind the ORM's back get no state row
        conn.execute(
            insert(cast(Table, Upload.__table__)),
            [{"id": i, "path": f"u/{i}", "namespace_id": 1, "size": 0} for i in (1, 2, 2500, 7001)],
        )
        conn.execute(insert(target.table), [{"upload_id": 1, "verification_state": S.SUCCEEDED}])
    assert backfill_all(geo, UploadReplicator) == (3, 0)
    with geo.main_engine.connect() as conn:
        rows = dict(conn.execute(select(target.key, target.table.c.verification_state)).all())
    assert rows == {1: S.SUCCEEDED, 2: S.PENDING, 2500: S.PENDING, 7001: S.PENDING}
    assert backfill_all(geo, UploadReplicator) == (0, 0)


def test_backfill_removes_state_rows_of_records_deleted_without_a_cascade(
    sites: SitePair, backend: str
) -> None:
    geo = sites.primary
    record_id = vu.add_upload(geo, b"x")
    # Delete the model row with foreign keys not enforced (as on SQLite without the pragma).
    raw = geo.main_engine.raw_connection()
    try:
        cursor = raw.cursor()
        if backend == "postgres":
            cursor.execute("SET session_replication_role = replica")
        else:
            cursor.execute("PRAGMA foreign_keys = OFF")
        cursor.execute(f"DELETE FROM uploads WHERE id = {record_id}")
        raw.commit()
    finally:
        raw.close()
    assert vu.state_of(geo, UploadReplicator, record_id) is not None
    assert backfill_all(geo, UploadReplicator) == (0, 1)
    assert vu.state_of(geo, UploadReplicator, record_id) is None


def idle_sweep(sites: SitePair) -> PrimaryVerificationSweepLoop:
    """A sweep loop past its first round: the range walk is done and paused for 10 minutes
    (the injected clock stands still), so only the new-record scan can add state rows.
    """
    sweep = PrimaryVerificationSweepLoop(sites.primary)
    while sweep.run_once() == 0.0:
        pass
    return sweep


def next_round(sites: SitePair, sweep: PrimaryVerificationSweepLoop, clock: FrozenClock) -> float:
    """The sweep's next round, one `poll_interval` after the last (as the worker runs it)."""
    clock.advance(sites.primary.settings.poll_interval)
    return sweep.run_once()


def core_insert_uploads(geo: Geo, ids: Sequence[int]) -> None:
    """Upload rows written by bulk SQL (no ORM, no event, no state row), with their files."""
    with geo.main() as conn:
        conn.execute(
            insert(cast(Table, Upload.__table__)),
            [{"id": i, "path": f"u/{i}.bin", "namespace_id": 1, "size": 1} for i in ids],
        )
    for i in ids:
        vu.write(vu.upload_file(geo, i), f"bulk {i}".encode())


def test_a_record_written_by_bulk_sql_is_checksummed_after_one_sweep_round(
    sites: SitePair, loop: PrimaryVerificationLoop, clock: FrozenClock
) -> None:
    sweep = idle_sweep(sites)
    core_insert_uploads(sites.primary, [41])
    assert vu.state_of(sites.primary, UploadReplicator, 41) is None
    # An idle sweep runs a round every few seconds.
    assert next_round(sites, sweep, clock) == sites.primary.settings.poll_interval
    assert upload_state(sites, 41)["verification_state"] == S.PENDING
    run_until_idle(loop)
    state = upload_state(sites, 41)
    assert state["verification_state"] == S.SUCCEEDED
    assert state["verification_checksum"] == vu.sha256(b"bulk 41")


def test_the_new_record_scan_adds_a_bounded_batch_per_round(
    sites: SitePair, clock: FrozenClock
) -> None:
    sweep = idle_sweep(sites)
    with sites.primary.main() as conn:
        conn.execute(
            insert(cast(Table, Upload.__table__)),
            [{"id": i, "path": f"u/{i}", "namespace_id": 1} for i in range(1, 2501)],
        )
    target = vu.primary_states(sites.primary)
    counts = []
    for _ in range(3):
        delay = next_round(sites, sweep, clock)
        with sites.primary.main_engine.connect() as conn:
            counts.append(conn.execute(select(func.count()).select_from(target.table)).scalar())
        if delay:
            break
    assert counts == [1000, 2000, 2500]
    assert delay == sites.primary.settings.poll_interval


def test_a_new_scan_begins_at_most_once_per_poll_interval(
    sites: SitePair, clock: FrozenClock
) -> None:
    sweep = idle_sweep(sites)
    core_insert_uploads(sites.primary, [7])
    sweep.run_once()  # the same instant as the last round: no new scan yet
    assert vu.state_of(sites.primary, UploadReplicator, 7) is None
    clock.advance(sites.primary.settings.poll_interval)
    sweep.run_once()
    assert upload_state(sites, 7)["verification_state"] == S.PENDING


def test_the_new_record_scan_reads_recent_ids_and_the_range_walk_catches_late_commits(
    sites: SitePair, clock: FrozenClock
) -> None:
    sweep = idle_sweep(sites)
    core_insert_uploads(sites.primary, [100])
    next_round(sites, sweep, clock)
    clock.advance(timedelta(seconds=61))  # the scan that saw id 100 began a grace period ago
    next_round(sites, sweep, clock)
    core_insert_uploads(sites.primary, [200])
    next_round(sites, sweep, clock)
    assert vu.state_of(sites.primary, UploadReplicator, 200) is not None
    # An id below the floor that commits only now, as a transaction that took its id long
    # before a higher one committed: no longer read by the scan, but found by the range walk.
    core_insert_uploads(sites.primary, [50])
    next_round(sites, sweep, clock)
    assert vu.state_of(sites.primary, UploadReplicator, 50) is None
    clock.advance(timedelta(minutes=10))
    sweep.run_once()
    assert upload_state(sites, 50)["verification_state"] == S.PENDING


def test_package_files_written_by_core_or_raw_sql_are_pending_and_checksummed(
    sites: SitePair, loop: PrimaryVerificationLoop
) -> None:
    geo = sites.primary
    with geo.main() as conn:
        conn.execute(
            insert(cast(Table, PackageFile.__table__)),
            [{"id": 7, "file_name": "pkg.tgz", "namespace_id": 1, "size": 2}],
        )
        conn.execute(
            text(
                "INSERT INTO package_files (id, file_name, namespace_id, size)"
                " VALUES (8, 'pkg.tgz', 1, 2)"
            )
        )
    for record_id in (7, 8):
        vu.write(vu.package_file_path(geo, record_id), f"p{record_id}".encode())
        state = vu.state_of(geo, PackageFileReplicator, record_id)
        assert state is not None and state["verification_state"] == S.PENDING
    run_until_idle(loop)
    for record_id in (7, 8):
        state = vu.state_of(geo, PackageFileReplicator, record_id)
        assert state is not None and state["verification_state"] == S.SUCCEEDED
        assert state["verification_checksum"] == vu.sha256(f"p{record_id}".encode())


# -- the command line -----------------------------------------------------------------------------


def cli_config(sites: SitePair, tmp_path: Path, secondary: bool = False) -> Path:
    geo = sites.secondary if secondary else sites.primary
    settings = geo.settings.model_copy(update={"replicators": "geosync.demo.replicators"})
    path = tmp_path / ("secondary.toml" if secondary else "primary.toml")
    path.write_text(settings.to_toml())
    return path


def test_reverify_all_failed_requeues_only_failed_records(
    sites: SitePair, loop: PrimaryVerificationLoop, tmp_path: Path
) -> None:
    good = vu.add_upload(sites.primary, b"x")
    bad = vu.add_upload(sites.primary, None)
    run_until_idle(loop)
    config = cli_config(sites, tmp_path)
    result = CliRunner().invoke(
        cli_app, ["--config", str(config), "reverify", "uploads", "--all", "--failed", "--wait"]
    )
    assert result.exit_code == 0, result.output
    assert "1 failed uploads queued for verification" in result.output
    assert upload_state(sites, good)["verification_state"] == S.SUCCEEDED
    assert upload_state(sites, bad)["verification_state"] == S.PENDING
    assert upload_state(sites, bad)["verification_retry_count"] == 1


def test_reverify_all_requeues_in_batches_and_one_id_alone(
    sites: SitePair, loop: PrimaryVerificationLoop, tmp_path: Path
) -> None:
    ids = [vu.add_upload(sites.primary, b"x") for _ in range(3)]
    run_until_idle(loop)
    config = cli_config(sites, tmp_path)
    one = CliRunner().invoke(
        cli_app, ["--config", str(config), "reverify", "upload", "--id", str(ids[1])]
    )
    assert one.exit_code == 0, one.output
    states = [upload_state(sites, i)["verification_state"] for i in ids]
    assert states == [S.SUCCEEDED, S.PENDING, S.SUCCEEDED]
    every = CliRunner().invoke(
        cli_app, ["--config", str(config), "reverify", "upload", "--all", "--wait"]
    )
    assert every.exit_code == 0, every.output
    assert {upload_state(sites, i)["verification_state"] for i in ids} == {S.PENDING}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["uploads"], "give exactly one of --id ID or --all"),
        (["uploads", "--id", "1", "--all"], "give exactly one of --id ID or --all"),
        (["uploads", "--id", "1", "--failed"], "--failed only goes with --all"),
        (["nothing", "--all"], "unknown replicable 'nothing'"),
        (["uploads", "--id", "999"], "upload 999 has no verification state here"),
    ],
)
def test_reverify_reports_mistakes_in_one_line(
    sites: SitePair, tmp_path: Path, args: list[str], message: str
) -> None:
    config = cli_config(sites, tmp_path)
    result = CliRunner().invoke(cli_app, ["--config", str(config), "reverify", *args])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


# -- the worker -----------------------------------------------------------------------------------


def test_the_primary_worker_checksums_new_uploads(live_sites: SitePair) -> None:
    import time

    from geosync.worker import Worker

    worker = Worker(live_sites.primary)
    assert {"primary_verification", "primary_verification_sweep"} <= {
        loop.name for loop in worker.loops
    }
    record_id = vu.add_upload(live_sites.primary, b"worker")
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            state = vu.state_of(live_sites.primary, UploadReplicator, record_id)
            if state is not None and state["verification_state"] == S.SUCCEEDED:
                break
            time.sleep(0.05)
    finally:
        worker.stop()
    assert state is not None
    assert state["verification_checksum"] == vu.sha256(b"worker")
