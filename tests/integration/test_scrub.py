"""The scrub with real files and both databases: copies corrupted, truncated or deleted after
they were verified are found by the scrub alone and downloaded again; status counts a copy as
verified only within the scrub period.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from geosync.app import Geo
from geosync.attempts import recent_attempts
from geosync.clock import FrozenClock
from geosync.db.tables import geo_events
from geosync.demo.models import Upload
from geosync.demo.replicators import PackageFileReplicator, SnippetReplicator, UploadReplicator
from geosync.primary.verification import PrimaryVerificationLoop, PrimaryVerificationSweepLoop
from geosync.registry import Registry
from geosync.scrub import IDLE, Budget, ScrubLoop
from geosync.secondary.cursor_state import reported_position
from geosync.secondary.log_cursor import LogCursorLoop
from geosync.secondary.scheduler import SchedulerLoop, StuckSweepLoop
from geosync.secondary.verification import SecondaryVerificationLoop
from geosync.states import SyncState, VerificationState
from geosync.status import compute_status
from geosync.testing import DatabaseFactory, SitePair, build_site_pair
from geosync.testing.workers import checksum_on_primary, run_worker, wait_for
from geosync.worker import LoopFactory, Worker

try:
    from tests import verifyutil as vu
except ModuleNotFoundError:  # tests/ is not a package and the project root is not on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests import verifyutil as vu

PERIOD = 6.0
DEMO_REPLICATORS = [UploadReplicator, PackageFileReplicator, SnippetReplicator]
COUNT = 12


@pytest.fixture
def scrubbed_sites(tmp_path: Path, databases: DatabaseFactory) -> Iterator[SitePair]:
    """Live sites whose scrub period is a few seconds, on the real clock."""
    pair = build_site_pair(
        tmp_path / "sites",
        DEMO_REPLICATORS,
        databases,
        backoff_scale=0.01,
        poll_interval=0.2,
        scrub_period=timedelta(seconds=PERIOD),
        scrub_items_per_second=500,
    )
    yield pair
    pair.dispose()


def add_uploads(sites: SitePair, count: int) -> dict[int, bytes]:
    """`count` uploads on the primary, each with its own random content, by id."""
    storage = sites.primary.settings.blob_storage("uploads")
    contents: dict[int, bytes] = {}
    with sites.primary.session() as session:
        for index in range(count):
            data = os.urandom(4096 + index)
            (storage / f"f{index}.bin").write_bytes(data)
            upload = Upload(path=f"f{index}.bin", namespace_id=1, size=len(data))
            session.add(upload)
            session.flush()
            contents[upload.id] = data
        session.commit()
    return contents


def copy_of(sites: SitePair, upload_id: int) -> Path:
    with sites.primary.session() as session:
        upload = session.get(Upload, upload_id)
        assert upload is not None
        path = upload.path
    return sites.secondary.settings.blob_storage("uploads") / path


def all_verified(sites: SitePair, contents: dict[int, bytes]) -> bool:
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking_engine.connect() as conn:
        rows = [registry.get(conn, upload_id) for upload_id in contents]
    return all(
        row is not None
        and row.sync_state == SyncState.SYNCED
        and row.verification == VerificationState.SUCCEEDED
        for row in rows
    )


def cursor_caught_up(sites: SitePair) -> bool:
    with sites.primary.main_engine.connect() as conn:
        newest = conn.execute(select(func.max(geo_events.c.id))).scalar()
    with sites.secondary.tracking_engine.connect() as conn:
        position = reported_position(conn)
    return newest is not None and position is not None and position >= newest


def identical(sites: SitePair, contents: dict[int, bytes]) -> bool:
    for upload_id, data in contents.items():
        path = copy_of(sites, upload_id)
        if not path.is_file() or path.read_bytes() != data:
            return False
    return True


def damage(sites: SitePair, ids: list[int]) -> None:
    """Flip a byte in the first half, truncate a quarter, delete the rest."""
    flipped, truncated, deleted = ids[:4], ids[4:6], ids[6:8]
    for upload_id in flipped:
        path = copy_of(sites, upload_id)
        data = bytearray(path.read_bytes())
        data[100] ^= 0xFF
        path.write_bytes(bytes(data))
    for upload_id in truncated:
        path = copy_of(sites, upload_id)
        path.write_bytes(path.read_bytes()[:1000])
    for upload_id in deleted:
        copy_of(sites, upload_id).unlink()


def test_the_scrub_finds_and_repairs_damaged_copies_by_itself(scrubbed_sites: SitePair) -> None:
    sites = scrubbed_sites
    contents = add_uploads(sites, COUNT)
    primary_loops: list[LoopFactory] = [PrimaryVerificationLoop, PrimaryVerificationSweepLoop]
    secondary_loops: list[LoopFactory] = [
        LogCursorLoop,
        SchedulerLoop,
        StuckSweepLoop,
        SecondaryVerificationLoop,
        ScrubLoop,
    ]
    with (
        sites.primary_served(),
        run_worker(Worker(sites.primary, primary_loops)),
        run_worker(Worker(sites.secondary, secondary_loops)),
    ):
        # Every event read (the primary's `checksum_succeeded` re-verifies a copy too), so
        # that from here on only the scrub looks at a verified copy again.
        wait_for(
            lambda: cursor_caught_up(sites) and all_verified(sites, contents),
            timeout=60,
            what="copies verified and every event read",
        )
        assert identical(sites, contents)
        damaged = sorted(contents)[:8]
        damage(sites, damaged)
        # Nothing but the scrub looks at a verified copy again: it must find all eight.
        wait_for(
            lambda: identical(sites, contents) and all_verified(sites, contents),
            timeout=PERIOD * 4,
            what="the scrub finding and repairing every damaged copy",
        )
        status = compute_status(sites.secondary)
    assert status["uploads_scrub_found_bad_count"] == len(damaged)
    assert status["uploads_verified_count"] == COUNT
    with sites.secondary.tracking_engine.connect() as conn:
        for upload_id in damaged:
            attempts = recent_attempts(conn, "upload", upload_id)
            failed = [a for a in attempts if a.kind == "verification" and a.outcome == "failed"]
            assert failed, f"upload {upload_id}: no failed verification recorded"
            assert [a.outcome for a in attempts if a.kind == "sync"].count("synced") == 2


def frozen_verified_copies(sites: SitePair, count: int) -> list[int]:
    """Uploads checksummed on the primary and synced and verified on the secondary, at the
    frozen clock's current time."""
    ids = [vu.add_upload(sites.primary, os.urandom(2048)) for _ in range(count)]
    checksum_on_primary(sites)
    for record_id in ids:
        vu.write(
            vu.upload_file(sites.secondary, record_id),
            vu.upload_file(sites.primary, record_id).read_bytes(),
        )
        vu.make_synced(sites.secondary, UploadReplicator, record_id, VerificationState.PENDING)
    loop = SecondaryVerificationLoop(sites.secondary, threads=1)
    try:
        while loop.run_once() == 0:
            pass
    finally:
        loop.close()
    return ids


def upload_status(sites: SitePair) -> dict[str, object]:
    values = compute_status(sites.secondary).values
    return {k.removeprefix("uploads_"): v for k, v in values.items() if k.startswith("uploads_")}


def test_verified_means_verified_within_the_period(sites: SitePair, clock: FrozenClock) -> None:
    period = sites.secondary.settings.scrub_period
    frozen_verified_copies(sites, 3)
    fresh = upload_status(sites)
    assert fresh["verified_count"] == 3
    assert fresh["verification_stale_count"] == 0
    assert fresh["scrub_due_count"] == 0
    assert fresh["oldest_verification_age_seconds"] == 0

    clock.advance(period / 2 + timedelta(seconds=1))
    due = upload_status(sites)
    assert due["verified_count"] == 3, "due for the scrub, but still within the period"
    assert due["scrub_due_count"] == 3

    clock.advance(period / 2)
    stale = upload_status(sites)
    assert stale["verified_count"] == 0, "a verification older than the period proves nothing"
    assert stale["verified_in_percentage"] == 0.0
    assert stale["verification_stale_count"] == 3
    assert stale["oldest_verification_age_seconds"] == int(
        (period + timedelta(seconds=1)).total_seconds()
    )


def test_the_scrub_takes_the_oldest_verification_first(sites: SitePair, clock: FrozenClock) -> None:
    period = sites.secondary.settings.scrub_period
    first = frozen_verified_copies(sites, 2)
    clock.advance(timedelta(hours=1))
    later = frozen_verified_copies(sites, 12)
    scrub = ScrubLoop(sites.secondary)
    try:
        assert scrub.run_once() == IDLE, "nothing is due yet"
        clock.advance(period / 2 + timedelta(seconds=1))
        scrub.run_once()
    finally:
        scrub.close()
    rows = {i: vu.registry_row(sites.secondary, UploadReplicator, i) for i in first + later}
    now = clock.now()
    rescrubbed = [i for i, row in rows.items() if row["verified_at"] == now]
    # One batch of ten: the two oldest verifications, then eight of the later ones.
    assert len(rescrubbed) == 10
    assert set(first) <= set(rescrubbed)
    assert all(row["verification_state"] == VerificationState.SUCCEEDED for row in rows.values())


def test_the_budget_keeps_both_rates() -> None:
    budget = Budget(items_per_second=10, bytes_per_second=1000)
    assert budget.pause(items=10, size=0, spent=0.2) == pytest.approx(0.8)
    assert budget.pause(items=1, size=5000, spent=1.0) == pytest.approx(4.0)
    assert budget.pause(items=1, size=0, spent=2.0) == 0.0
    assert not Budget(0, 1000).enabled
    assert Budget(50, 1000).batch == 10
    assert Budget(1, 1000).batch == 1
    assert Budget(1e9, 1000).batch == 100


def run_scrub(geo: Geo) -> None:
    scrub = ScrubLoop(geo)
    try:
        for _ in range(20):
            if scrub.run_once() == IDLE:
                return
    finally:
        scrub.close()
    raise AssertionError("the scrub never ran out of due items")


def test_on_the_primary_the_scrub_fails_a_file_changed_without_an_update(
    sites: SitePair, clock: FrozenClock
) -> None:
    period = sites.primary.settings.scrub_period
    kept, changed = (vu.add_upload(sites.primary, os.urandom(1024)) for _ in range(2))
    checksum_on_primary(sites)
    events_before = len(vu.event_names(sites.primary))
    path = vu.upload_file(sites.primary, changed)
    path.write_bytes(b"changed behind geosync's back")
    clock.advance(period / 2 + timedelta(seconds=1))

    run_scrub(sites.primary)

    good = vu.state_of(sites.primary, UploadReplicator, kept)
    bad = vu.state_of(sites.primary, UploadReplicator, changed)
    assert good is not None and bad is not None
    assert good["verification_state"] == VerificationState.SUCCEEDED
    assert good["verified_at"] == clock.now()
    assert bad["verification_state"] == VerificationState.FAILED
    assert "changed without an update" in bad["verification_failure"]
    # Re-verifying an unchanged file is no news for the secondaries.
    assert len(vu.event_names(sites.primary)) == events_before


def test_a_copy_found_bad_is_resynced_at_once_and_its_lag_counts_from_then(
    sites: SitePair, clock: FrozenClock
) -> None:
    period = sites.secondary.settings.scrub_period
    good, bad = frozen_verified_copies(sites, 2)
    clock.advance(period / 2 + timedelta(hours=1))
    copy = vu.upload_file(sites.secondary, bad)
    copy.write_bytes(copy.read_bytes()[:10])

    run_scrub(sites.secondary)

    row = vu.registry_row(sites.secondary, UploadReplicator, bad)
    assert row["state"] == SyncState.FAILED
    assert row["retry_at"] == clock.now(), "a copy found bad is downloaded again at once"
    assert row["scrub_found_bad_at"] == clock.now()
    assert vu.registry_row(sites.secondary, UploadReplicator, good)["scrub_found_bad_at"] is None
    status = upload_status(sites)
    assert status["scrub_found_bad_count"] == 1
    assert status["oldest_unsynced_age_seconds"] == 0
    assert status["failed_count"] == 1
