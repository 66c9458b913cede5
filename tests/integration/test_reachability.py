"""Site reachability: a primary that does not answer is found away by one probe, seen so by
every process of the site and by its status, probed with a bounded backoff, and back at once."""

from __future__ import annotations

import time

from geosync.attempts import SITE_UNREACHABLE, recent_attempts
from geosync.demo.models import Upload
from geosync.demo.replicators import UploadReplicator
from geosync.explain import explain
from geosync.registry import Registry
from geosync.secondary.blob_client import BlobClient
from geosync.secondary.reachability import (
    MAX_PROBE,
    PRIMARY,
    Reachability,
    probe_interval,
    reachability_of,
)
from geosync.secondary.sync import SyncService
from geosync.states import SyncState
from geosync.status import compute_status
from geosync.testing import SitePair


def add_upload(sites: SitePair, name: str) -> int:
    """An Upload row and its file on the primary."""
    path = sites.primary.settings.blob_storage("uploads") / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"content")
    with sites.primary.session() as session:
        upload = Upload(path=name, namespace_id=1, size=7)
        session.add(upload)
        session.commit()
        return int(upload.id)


def test_probes_back_off_to_at_most_two_seconds() -> None:
    assert [probe_interval(n) for n in range(1, 6)] == [0.5, 1, 2, 2, 2]
    assert MAX_PROBE <= 5


def test_a_primary_that_does_not_answer_is_unreachable_for_the_whole_site(
    live_sites: SitePair,
) -> None:
    sites = live_sites
    with sites.primary_served():
        pass  # the node now points at a port nobody listens on
    view = reachability_of(sites.secondary)
    assert view.confirm_down(PRIMARY)
    other = Reachability(sites.secondary)  # another worker process of the site
    assert other.down() == [PRIMARY]
    assert 0 < other.pause([PRIMARY]) <= MAX_PROBE
    status = compute_status(sites.secondary)
    assert status["primary_reachable"] == 0 and not status.healthy
    assert "The primary is unreachable" in status["health"]
    assert status["primary_unreachable_seconds"] is not None
    with sites.primary_served():
        deadline = time.monotonic() + 3 * MAX_PROBE
        while other.pause([PRIMARY]) > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert other.down() == []
        status = compute_status(sites.secondary)
        assert status["primary_reachable"] == 1 and status["primary_unreachable_seconds"] == 0


def test_an_error_while_the_primary_answers_is_the_items_own(live_sites: SitePair) -> None:
    sites = live_sites
    with sites.primary_served():
        assert not reachability_of(sites.secondary).confirm_down(PRIMARY)
        assert compute_status(sites.secondary)["primary_reachable"] == 1


def test_a_sync_cut_by_an_unreachable_primary_is_deferred_and_explained(
    live_sites: SitePair,
) -> None:
    sites = live_sites
    record_id = add_upload(sites, "a/deferred.bin")
    with sites.primary_served():
        pass
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, [record_id])
        claim = registry.start(conn, record_id)
    service = SyncService(sites.secondary, UploadReplicator, record_id, claim, BlobClient())
    assert not service.execute()
    with sites.secondary.tracking() as conn:
        row = registry.require(conn, record_id)
        history = recent_attempts(conn, "upload", record_id)
    assert (row.sync_state, row.retry_count, row.retry_at) == (SyncState.PENDING, 0, None)
    assert [(a.outcome, a.error_class) for a in history] == [(SITE_UNREACHABLE, SITE_UNREACHABLE)]
    result = explain(sites.secondary, "upload", record_id)
    assert "was deferred: Deferred while the primary is unreachable" in result.summary
    assert "queued for sync again" in result.summary
    assert result.next_step.startswith("Nothing to fix for this item")
