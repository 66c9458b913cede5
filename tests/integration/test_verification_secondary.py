"""A secondary's verification with real files and both databases: copies compared with the
primary's checksum, mismatches failing the sync, `checksum_succeeded`, timeouts, skip-download.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Connection

from geosync.attempts import recent_attempts
from geosync.clock import FrozenClock
from geosync.demo.replicators import PackageFileReplicator, SnippetReplicator, UploadReplicator
from geosync.flags import set_flag
from geosync.git import init_bare
from geosync.registry import Registry, RegistryRow, SyncClaim
from geosync.replicator import CHECKSUM_SUCCEEDED
from geosync.secondary.handlers import Event, HandlerContext, handle_event
from geosync.secondary.verification import (
    SecondaryVerificationLoop,
    handle_checksum_succeeded,
    skip_download_checksum,
)
from geosync.states import SyncState, VerificationState
from geosync.testing import SitePair
from geosync.testing.workers import checksum_on_primary
from geosync.verification import primary_checksum, registry_verifiable

try:
    from tests import gitutil
    from tests import verifyutil as vu
except ModuleNotFoundError:  # tests/ is not a package and the project root is not on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests import gitutil
    from tests import verifyutil as vu

S = VerificationState
MISMATCH = "Checksum does not match the primary checksum"


@pytest.fixture
def verify(sites: SitePair) -> Iterator[SecondaryVerificationLoop]:
    loop = SecondaryVerificationLoop(sites.secondary, threads=2)
    yield loop
    loop.close()


def synced_upload(sites: SitePair, content: bytes, local: bytes | None = None) -> int:
    """An upload the primary has checksummed, synced on the secondary with `local` as its copy."""
    record_id = vu.add_upload(sites.primary, content)
    checksum_on_primary(sites)
    copy = content if local is None else local
    vu.write(vu.upload_file(sites.secondary, record_id), copy)
    vu.make_synced(sites.secondary, UploadReplicator, record_id, verification=S.PENDING)
    return record_id


def run_until_idle(loop: SecondaryVerificationLoop) -> None:
    for _ in range(100):
        if loop.run_once() > 0:
            return
    raise AssertionError("verification never ran out of work")


def upload_registry(sites: SitePair, record_id: int) -> dict[str, object]:
    return vu.registry_row(sites.secondary, UploadReplicator, record_id)


# -- comparing with the primary -------------------------------------------------------------------


def test_a_copy_equal_to_the_primary_is_verified(
    sites: SitePair, verify: SecondaryVerificationLoop
) -> None:
    record_id = synced_upload(sites, b"same bytes")
    run_until_idle(verify)
    row = upload_registry(sites, record_id)
    assert row["verification_state"] == S.SUCCEEDED
    assert row["verification_checksum"] == vu.sha256(b"same bytes")
    assert row["state"] == SyncState.SYNCED
    with sites.secondary.tracking_engine.connect() as conn:
        (attempt,) = recent_attempts(conn, "upload", record_id)
    assert (attempt.kind, attempt.outcome) == ("verification", "succeeded")


def test_an_empty_copy_of_an_empty_file_is_verified(
    sites: SitePair, verify: SecondaryVerificationLoop
) -> None:
    record_id = synced_upload(sites, b"")
    run_until_idle(verify)
    assert upload_registry(sites, record_id)["verification_checksum"] == vu.EMPTY_SHA256


def test_a_corrupted_copy_fails_verification_and_its_sync(
    sites: SitePair, verify: SecondaryVerificationLoop, clock: FrozenClock
) -> None:
    record_id = synced_upload(sites, b"the real thing", local=b"bit rot")
    run_until_idle(verify)
    row = upload_registry(sites, record_id)
    assert row["verification_state"] == S.FAILED
    assert row["checksum_mismatch"] is True
    assert row["verification_checksum_mismatched"] == vu.sha256(b"bit rot")
    assert row["verification_checksum"] is None
    assert row["verification_failure"] == MISMATCH
    assert row["verification_retry_count"] == 1
    # The sync fails too, so the scheduler downloads the file again.
    assert row["state"] == SyncState.FAILED
    assert row["retry_count"] == 1
    assert row["last_sync_failure"] == f"Verification failed with: {MISMATCH}"
    assert row["retry_at"] > clock.now()  # type: ignore[operator]
    with sites.secondary.tracking_engine.connect() as conn:
        (attempt,) = recent_attempts(conn, "upload", record_id)
    assert (attempt.outcome, attempt.error_class) == ("failed", "checksum_mismatch")


def test_repeated_mismatches_back_off_further_each_time(
    sites: SitePair, verify: SecondaryVerificationLoop
) -> None:
    geo = sites.secondary
    registry = Registry(geo, UploadReplicator)
    record_id = synced_upload(sites, b"real", local=b"bad")
    run_until_idle(verify)
    # The scheduler retries the sync; the copy it leaves still differs (the verification
    # state goes pending again without losing its count).
    with geo.tracking() as conn:
        started = registry.start(conn, record_id)
        assert registry.synced(conn, record_id, started, verification=S.PENDING)
    assert upload_registry(sites, record_id)["verification_retry_count"] == 1
    run_until_idle(verify)
    row = upload_registry(sites, record_id)
    assert (row["verification_retry_count"], row["retry_count"]) == (2, 2)


def test_a_redownloaded_copy_ends_verified(
    sites: SitePair, verify: SecondaryVerificationLoop
) -> None:
    geo = sites.secondary
    registry = Registry(geo, UploadReplicator)
    record_id = synced_upload(sites, b"real", local=b"bad")
    run_until_idle(verify)
    # What the sync service does after a download whose streamed hash matched the primary's.
    vu.write(vu.upload_file(geo, record_id), b"real")
    with geo.main_engine.connect() as main:
        expected = primary_checksum(geo, main, UploadReplicator, record_id)
    with geo.tracking() as conn:
        started = registry.start(conn, record_id)
        assert registry.synced(
            conn, record_id, started, verification=S.SUCCEEDED, checksum=expected
        )
    row = upload_registry(sites, record_id)
    assert (row["state"], row["verification_state"]) == (SyncState.SYNCED, S.SUCCEEDED)
    assert row["checksum_mismatch"] is False
    assert row["verification_retry_count"] == 0


def test_a_missing_copy_fails_and_is_synced_again(
    sites: SitePair, verify: SecondaryVerificationLoop
) -> None:
    record_id = synced_upload(sites, b"x")
    vu.upload_file(sites.secondary, record_id).unlink()
    run_until_idle(verify)
    row = upload_registry(sites, record_id)
    assert row["verification_failure"] == "File is missing"
    assert row["checksum_mismatch"] is False
    assert row["state"] == SyncState.FAILED
    assert row["last_sync_failure"] == "Verification failed with: File is missing"


def test_repository_copies_are_compared_by_their_refs(
    sites: SitePair, verify: SecondaryVerificationLoop, tmp_path: Path
) -> None:
    record_id = vu.add_snippet(sites.primary)
    relative = f"snippets/000/{record_id}.git"
    primary_root = sites.primary.settings.repository_storage_root
    secondary_root = sites.secondary.settings.repository_storage_root
    assert primary_root is not None and secondary_root is not None
    init_bare(primary_root / relative)
    worktree = gitutil.make_worktree(primary_root / relative, tmp_path / "work")
    gitutil.commit_file(worktree, "a.txt", "a")
    gitutil.push(worktree)
    checksum_on_primary(sites)
    (secondary_root / relative).parent.mkdir(parents=True)
    gitutil.git(
        "clone", "--mirror", "--quiet", str(primary_root / relative), str(secondary_root / relative)
    )
    vu.make_synced(sites.secondary, SnippetReplicator, record_id, verification=S.PENDING)
    run_until_idle(verify)
    row = vu.registry_row(sites.secondary, SnippetReplicator, record_id)
    assert row["verification_state"] == S.SUCCEEDED


# -- when there is nothing to compare with --------------------------------------------------------


def test_without_a_primary_checksum_verification_is_disabled_until_one_arrives(
    sites: SitePair, verify: SecondaryVerificationLoop
) -> None:
    record_id = vu.add_upload(sites.primary, b"x")
    vu.write(vu.upload_file(sites.secondary, record_id), b"x")
    vu.make_synced(sites.secondary, UploadReplicator, record_id, verification=S.PENDING)
    run_until_idle(verify)
    assert upload_registry(sites, record_id)["verification_state"] == S.DISABLED
    checksum_on_primary(sites)
    assert ("upload", CHECKSUM_SUCCEEDED, record_id) in vu.event_names(sites.primary)
    with sites.secondary.tracking() as conn:
        assert handle_checksum_succeeded(sites.secondary, conn, UploadReplicator, record_id)
    assert upload_registry(sites, record_id)["verification_state"] == S.PENDING
    run_until_idle(verify)
    assert upload_registry(sites, record_id)["verification_state"] == S.SUCCEEDED


def test_the_log_cursor_requeues_verification_on_checksum_succeeded(sites: SitePair) -> None:
    record_id = synced_upload(sites, b"x")
    geo = sites.secondary
    target = registry_verifiable(geo, UploadReplicator)
    with geo.tracking() as conn:
        (claim,) = target.claim(conn, 10)
        target.succeeded(conn, record_id, claim.started_at, vu.sha256(b"x"))
    event = Event(1, "upload", CHECKSUM_SUCCEEDED, {"model_record_id": record_id}, geo.clock.now())
    with geo.main_engine.connect() as main, geo.tracking() as tracking:
        node = geo.current_node(main)
        assert node is not None
        handle_event(HandlerContext(geo, node, main, tracking), event)
    assert upload_registry(sites, record_id)["verification_state"] == S.PENDING


def test_checksum_succeeded_without_a_registry_changes_nothing(sites: SitePair) -> None:
    with sites.secondary.tracking() as conn:
        assert not handle_checksum_succeeded(sites.secondary, conn, UploadReplicator, 42)


def test_checksum_succeeded_during_a_sync_is_not_lost(sites: SitePair) -> None:
    geo = sites.secondary
    registry = Registry(geo, UploadReplicator)
    with geo.tracking() as conn:
        registry.ensure_pending(conn, 5)
        started = registry.start(conn, 5)
        # The sync read no primary checksum; one arrives before it finishes.
        handle_checksum_succeeded(geo, conn, UploadReplicator, 5)
        assert registry.synced(conn, 5, started, verification=S.DISABLED)
    assert upload_registry(sites, 5)["verification_state"] == S.PENDING


def test_only_synced_copies_are_verified(
    sites: SitePair, verify: SecondaryVerificationLoop
) -> None:
    record_id = vu.add_upload(sites.primary, b"x")
    checksum_on_primary(sites)
    with sites.secondary.tracking() as conn:
        Registry(sites.secondary, UploadReplicator).ensure_pending(conn, record_id)
        handle_checksum_succeeded(sites.secondary, conn, UploadReplicator, record_id)
    run_until_idle(verify)
    row = upload_registry(sites, record_id)
    assert (row["state"], row["verification_state"]) == (SyncState.PENDING, S.PENDING)


def test_nothing_is_verified_while_the_flag_is_off(
    sites: SitePair, verify: SecondaryVerificationLoop
) -> None:
    record_id = synced_upload(sites, b"x")
    with sites.primary.main() as conn:
        set_flag(
            conn, sites.primary.catalog, "geo_upload_replication", False, sites.primary.clock.now()
        )
    run_until_idle(verify)
    assert upload_registry(sites, record_id)["verification_state"] == S.PENDING


def test_verification_running_over_eight_hours_fails_and_resyncs(
    sites: SitePair, clock: FrozenClock
) -> None:
    record_id = synced_upload(sites, b"x")
    target = registry_verifiable(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        target.claim(conn, 10)
    clock.advance(timedelta(hours=8, seconds=1))
    loop = SecondaryVerificationLoop(sites.secondary, threads=1)
    try:
        loop.run_once()
    finally:
        loop.close()
    row = upload_registry(sites, record_id)
    assert row["verification_failure"] == "Verification timed out after 8 hours"
    assert row["state"] == SyncState.FAILED
    assert (
        row["last_sync_failure"] == "Verification failed with: Verification timed out after 8 hours"
    )


def test_reverify_on_a_secondary_requeues_its_registry(
    sites: SitePair, verify: SecondaryVerificationLoop, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from geosync.cli import app as cli_app

    record_id = synced_upload(sites, b"x")
    run_until_idle(verify)
    settings = sites.secondary.settings.model_copy(
        update={"replicators": "geosync.demo.replicators"}
    )
    config = tmp_path / "secondary.toml"
    config.write_text(settings.to_toml())
    result = CliRunner().invoke(
        cli_app, ["--config", str(config), "reverify", "upload", "--id", str(record_id)]
    )
    assert result.exit_code == 0, result.output
    assert upload_registry(sites, record_id)["verification_state"] == S.PENDING
    primary_state = vu.state_of(sites.primary, UploadReplicator, record_id)
    assert primary_state is not None and primary_state["verification_state"] == S.SUCCEEDED


# -- skip-download --------------------------------------------------------------------------------


def new_registry(sites: SitePair, replicator: type, record_id: int) -> RegistryRow:
    registry = Registry(sites.secondary, replicator)
    with sites.secondary.tracking() as conn:
        registry.ensure_pending(conn, record_id)
        registry.start(conn, record_id)
        return registry.require(conn, record_id)


def skip(sites: SitePair, replicator: type, record_id: int, row: RegistryRow) -> str | None:
    with sites.secondary.main_engine.connect() as main:
        return skip_download_checksum(sites.secondary, main, replicator, record_id, row)


def test_skip_download_accepts_a_preseeded_correct_file(sites: SitePair) -> None:
    record_id = vu.add_upload(sites.primary, b"restored from backup")
    checksum_on_primary(sites)
    vu.write(vu.upload_file(sites.secondary, record_id), b"restored from backup")
    row = new_registry(sites, UploadReplicator, record_id)
    assert skip(sites, UploadReplicator, record_id, row) == vu.sha256(b"restored from backup")


def test_skip_download_refuses_a_wrong_file(sites: SitePair) -> None:
    record_id = vu.add_upload(sites.primary, b"the real thing")
    checksum_on_primary(sites)
    vu.write(vu.upload_file(sites.secondary, record_id), b"something else")
    row = new_registry(sites, UploadReplicator, record_id)
    assert skip(sites, UploadReplicator, record_id, row) is None


def test_skip_download_refuses_without_a_file_or_a_primary_checksum(sites: SitePair) -> None:
    record_id = vu.add_upload(sites.primary, b"x")
    row = new_registry(sites, UploadReplicator, record_id)
    vu.write(vu.upload_file(sites.secondary, record_id), b"x")
    assert skip(sites, UploadReplicator, record_id, row) is None  # not checksummed yet
    checksum_on_primary(sites)
    vu.upload_file(sites.secondary, record_id).unlink()
    assert skip(sites, UploadReplicator, record_id, row) is None


def test_skip_download_refuses_registries_that_are_not_brand_new(sites: SitePair) -> None:
    record_id = vu.add_upload(sites.primary, b"x")
    checksum_on_primary(sites)
    vu.write(vu.upload_file(sites.secondary, record_id), b"x")
    registry = Registry(sites.secondary, UploadReplicator)
    started = new_registry(sites, UploadReplicator, record_id)
    claim = SyncClaim(started.last_synced_at, started.claim_generation)
    with sites.secondary.tracking() as conn:
        assert registry.failed(conn, record_id, claim, "Download failed") is not None
        registry.start(conn, record_id)
        row = registry.require(conn, record_id)
    assert skip(sites, UploadReplicator, record_id, row) is None


def test_skip_download_refuses_mutable_blobs(sites: SitePair) -> None:
    record_id = vu.add_package_file(sites.primary, b"pkg")
    checksum_on_primary(sites)
    vu.write(vu.package_file_path(sites.secondary, record_id), b"pkg")
    row = new_registry(sites, PackageFileReplicator, record_id)
    assert skip(sites, PackageFileReplicator, record_id, row) is None


def test_secondary_workers_run_verification() -> None:
    from geosync.worker import ROLE_LOOPS

    assert SecondaryVerificationLoop in ROLE_LOOPS["secondary"]()


# -- the pipeline ---------------------------------------------------------------------------------


def test_a_round_verifies_batches_of_half_the_capacity_two_at_a_time(
    sites: SitePair, verify: SecondaryVerificationLoop
) -> None:
    from geosync.nodes import NodeStore

    with sites.primary.main() as conn:
        NodeStore(sites.primary, conn).update(sites.secondary_node.id, verification_max_capacity=4)
    ids = [vu.add_upload(sites.primary, f"copy {i}".encode()) for i in range(7)]
    checksum_on_primary(sites)
    for index, record_id in enumerate(ids):
        vu.write(vu.upload_file(sites.secondary, record_id), f"copy {index}".encode())
        vu.make_synced(sites.secondary, UploadReplicator, record_id, verification=S.PENDING)
    assert verify.run_once() == 0.0
    states = [upload_registry(sites, i)["verification_state"] for i in ids]
    # Batches of two (half the capacity), two in flight: one round verifies all seven.
    assert states == [S.SUCCEEDED] * 7
    for record_id in ids:
        assert upload_registry(sites, record_id)["verification_state"] == S.SUCCEEDED
        with sites.secondary.tracking_engine.connect() as conn:
            (attempt,) = recent_attempts(conn, "upload", record_id)
        assert attempt.kind == "verification" and attempt.outcome == "succeeded"


def test_a_failure_between_settling_and_the_next_claim_stores_nothing_of_either(
    sites: SitePair, monkeypatch: pytest.MonkeyPatch
) -> None:
    from geosync.verification import RoundClaims

    real_claim = RoundClaims.next
    ids = [synced_upload(sites, f"copy {i}".encode()) for i in range(6)]
    calls: list[int] = []

    def claim_that_fails_third(self: RoundClaims, conn: Connection) -> object:
        calls.append(1)
        if len(calls) == 3:  # the transaction that settles batch 1 and claims batch 3
            raise RuntimeError("the tracking database went away")
        return real_claim(self, conn)

    monkeypatch.setattr(RoundClaims, "next", claim_that_fails_third)
    with sites.primary.main() as conn:
        from geosync.nodes import NodeStore

        NodeStore(sites.primary, conn).update(sites.secondary_node.id, verification_max_capacity=4)
    loop = SecondaryVerificationLoop(sites.secondary, threads=2)
    try:
        with pytest.raises(RuntimeError, match="went away"):
            loop.run_once()
    finally:
        loop.close()
    rows = [upload_registry(sites, i) for i in ids]
    # Batches 1 and 2 (two rows each) stay claimed by the loop (taken over when it is proven
    # dead); none has a result or an attempt row: batch 1's results were rolled back with
    # the claim of batch 3 that failed in their transaction.
    assert [r["verification_state"] for r in rows].count(S.STARTED) == 4
    assert [r["verification_state"] for r in rows].count(S.PENDING) == 2
    assert all(r["verified_at"] is None for r in rows)
    with sites.secondary.tracking_engine.connect() as conn:
        assert all(recent_attempts(conn, "upload", i) == [] for i in ids)


def test_a_rounds_later_claims_keep_within_the_room_other_workers_leave(sites: SitePair) -> None:
    from geosync.verification import RoundClaims

    ids = [synced_upload(sites, f"copy {i}".encode()) for i in range(12)]
    geo = sites.secondary
    every = [registry_verifiable(geo, r) for r in (UploadReplicator, PackageFileReplicator)]
    uploads = every[0]
    round_ = RoundClaims(6, every, [uploads], holder="this worker")
    with geo.tracking() as conn:
        first = round_.next(conn)
        other = uploads.claim(conn, 2, "another worker")  # between this round's claims
        second = round_.next(conn)
        third = round_.next(conn)
    assert first is not None and [len(claims) for _target, claims in first] == [3]
    assert len(other) == 2
    assert second is not None and [len(claims) for _target, claims in second] == [1]
    assert third is None, "the capacity of 6 is taken: 3 + 2 + 1 started rows"
    with geo.tracking_engine.connect() as conn:
        started = uploads.count_by_state(conn)[S.STARTED]
    assert started == 6 and len(ids) == 12
