"""One bad blob fails alone: the primary refuses it item by item, and the secondary records a
permanent error that backs off far and that `explain` names (an unsafe path, a full disk)."""

from __future__ import annotations

import errno
import os
from datetime import timedelta
from pathlib import Path

import pytest

from geosync.attempts import recent_attempts
from geosync.backoff import PERMANENT_STEPS
from geosync.demo.replicators import UploadReplicator
from geosync.explain import explain
from geosync.registry import Registry
from geosync.secondary import partial_file
from geosync.secondary.batch_sync import BatchSync
from geosync.secondary.blob_client import BlobClient
from geosync.secondary.settlement import Settler
from geosync.states import SyncState
from geosync.testing import SitePair
from geosync.wire import batch_path, retrieve_path
from tests.integration.test_blob_batch import add_upload, claimed_services, frames, get


def bad_uploads(sites: SitePair, tmp_path: Path) -> dict[str, int]:
    """Uploads the primary must not serve: a path out of the storage, a symlink out of it and
    a directory; a secret file lies outside the storage where the first two lead."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(b"classified content")
    storage = sites.primary.settings.blob_storage("uploads")
    (storage / "bad").mkdir(parents=True, exist_ok=True)
    (storage / "bad/link.bin").symlink_to(outside / "secret.bin")
    (storage / "bad/dir.bin").mkdir()
    escape = os.path.relpath(outside / "secret.bin", storage)
    return {
        "escape": add_upload(sites, escape, None),
        "symlink": add_upload(sites, "bad/link.bin", None),
        "directory": add_upload(sites, "bad/dir.bin", None),
    }


def test_the_primary_refuses_bad_items_alone(live_sites: SitePair, tmp_path: Path) -> None:
    sites = live_sites
    bad = bad_uploads(sites, tmp_path)
    good = add_upload(sites, "ok/1.bin", b"good")
    with sites.primary_served() as base:
        batch = get(
            sites,
            base,
            batch_path("upload", [bad["escape"], good, bad["symlink"], bad["directory"]]),
        )
        single = {kind: get(sites, base, retrieve_path("upload", i)) for kind, i in bad.items()}
    assert batch.status_code == 200
    got = frames(batch.content)
    assert [(h["status"], h.get("reason")) for h, _ in got] == [
        ("refused", "unsafe_path"),
        ("ok", None),
        ("refused", "unsafe_path"),
        ("refused", "not_a_file"),
    ]
    assert got[1][1] == b"good"
    assert b"classified content" not in batch.content
    codes = {kind: (r.status_code, r.json()["geo_code"]) for kind, r in single.items()}
    assert codes == {
        "escape": (422, "UNSAFE_PATH"),
        "symlink": (422, "UNSAFE_PATH"),
        "directory": (422, "NOT_A_FILE"),
    }
    assert all(r.json()["message"] for r in single.values())


def test_bad_items_fail_permanently_and_their_neighbours_sync_at_once(
    live_sites: SitePair, tmp_path: Path
) -> None:
    sites = live_sites
    bad = bad_uploads(sites, tmp_path)
    good = [add_upload(sites, f"ok/{n}.bin", os.urandom(500 + n)) for n in range(3)]
    every = [good[0], *bad.values(), *good[1:]]
    services = claimed_services(sites, every, Settler(sites.secondary))
    with sites.primary_served():
        done = BatchSync(services, BlobClient(), None).execute()
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        rows = {i: registry.require(conn, i) for i in every}
        attempts = {i: recent_attempts(conn, "upload", i) for i in every}
    assert done == len(good)
    assert all(rows[i].sync_state is SyncState.SYNCED for i in good)
    assert all(len(attempts[i]) == 1 for i in good)
    scale = sites.secondary.settings.backoff_scale
    for kind, record_id in bad.items():
        row, attempt = rows[record_id], attempts[record_id][0]
        assert row.sync_state is SyncState.FAILED and not row.missing_on_primary
        assert attempt.error_class == "permanent"
        # measured from the attempt's start: the clock is real and the check runs later
        assert (
            row.retry_at - attempt.started_at
            >= timedelta(seconds=(1 + PERMANENT_STEPS) ** 4) * scale
        ), kind
    assert "Unsafe path" in rows[bad["escape"]].last_sync_failure
    assert "refused to serve the file (unsafe_path)" in rows[bad["symlink"]].last_sync_failure
    assert "(not_a_file)" in rows[bad["directory"]].last_sync_failure
    storage = sites.secondary.settings.blob_storage("uploads")
    assert not (storage / "bad").exists()
    assert not (tmp_path / "outside" / "secret.bin").is_symlink()
    for record_id in (bad["escape"], bad["symlink"]):
        advice = explain(sites.secondary, "upload", record_id)
        assert "(permanent)" in advice.summary
        assert "leaves its storage" in advice.next_step
        assert "connection" not in advice.next_step
    directory = explain(sites.secondary, "upload", bad["directory"])
    assert "not a regular file" in directory.next_step


def test_a_full_disk_on_the_secondary_is_a_permanent_error(
    live_sites: SitePair, monkeypatch: pytest.MonkeyPatch
) -> None:
    sites = live_sites
    ids = [add_upload(sites, f"full/{n}.bin", os.urandom(700 + n)) for n in range(2)]

    def no_space(self: partial_file.PartialFile, chunk: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # The injected fault: every write of a copy finds the secondary's storage full.
    monkeypatch.setattr(partial_file.PartialFile, "add", no_space)
    services = claimed_services(sites, ids, Settler(sites.secondary))
    with sites.primary_served():
        assert BatchSync(services, BlobClient(), None).execute() == 0
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        rows = [registry.require(conn, i) for i in ids]
        classes = [recent_attempts(conn, "upload", i)[0].error_class for i in ids]
    assert classes == ["permanent", "permanent"]
    for row in rows:
        assert row.sync_state is SyncState.FAILED
        assert "No space left on this secondary's storage" in row.last_sync_failure
        assert "unexpectedly" not in row.last_sync_failure
    advice = explain(sites.secondary, "upload", ids[0])
    assert "free space" in advice.next_step and "connection" not in advice.next_step
    storage = sites.secondary.settings.blob_storage("uploads")
    assert list(storage.rglob("*.bin")) == []
