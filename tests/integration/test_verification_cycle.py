"""The whole proof cycle: a copy corrupted on the secondary is caught, re-downloaded, verified."""

from __future__ import annotations

import os

from geosync.attempts import recent_attempts
from geosync.demo.models import Upload
from geosync.demo.replicators import UploadReplicator
from geosync.registry import Registry
from geosync.reverification import reverify_one
from geosync.states import SyncState, VerificationState
from geosync.testing import SitePair
from geosync.testing.workers import primary_worker, secondary_worker, wait_for


def test_corrupted_copy_is_detected_redownloaded_and_ends_verified(live_sites: SitePair) -> None:
    sites = live_sites
    data = os.urandom(50_000)
    (sites.primary.settings.blob_storage("uploads") / "c.bin").write_bytes(data)
    with sites.primary.session() as session:
        upload = Upload(path="c.bin", namespace_id=1, size=len(data))
        session.add(upload)
        session.commit()
        upload_id = upload.id
    registry = Registry(sites.secondary, UploadReplicator)
    copy = sites.secondary.settings.blob_storage("uploads") / "c.bin"

    def row_is(state: SyncState, verification: VerificationState) -> bool:
        with sites.secondary.tracking_engine.connect() as conn:
            row = registry.get(conn, upload_id)
        return row is not None and (row.sync_state, row.verification) == (state, verification)

    with sites.primary_served(), primary_worker(sites), secondary_worker(sites, verification=True):
        wait_for(
            lambda: row_is(SyncState.SYNCED, VerificationState.SUCCEEDED),
            timeout=60,
            what="first copy synced and verified",
        )
        copy.write_bytes(b"bit rot" + data[7:])
        reverify_one(sites.secondary, UploadReplicator, upload_id)
        wait_for(
            lambda: (
                copy.read_bytes() == data and row_is(SyncState.SYNCED, VerificationState.SUCCEEDED)
            ),
            timeout=60,
            what="corruption detected, copy downloaded again and verified",
        )
    with sites.secondary.tracking_engine.connect() as conn:
        row = registry.require(conn, upload_id)
        attempts = recent_attempts(conn, "upload", upload_id)
    assert row.checksum_mismatch is False
    assert any(a.kind == "verification" and a.error_class == "checksum_mismatch" for a in attempts)
    assert [a.outcome for a in attempts if a.kind == "sync"].count("synced") == 2
