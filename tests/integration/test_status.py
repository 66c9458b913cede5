"""Node status: GitLab's fields from a known state, reporting to the primary, and health."""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlalchemy import delete, insert

from geosync.clock import FrozenClock
from geosync.db.tables import geo_event_gaps, geo_event_log_state, geo_events
from geosync.demo.models import PackageFile, Upload
from geosync.demo.replicators import SnippetReplicator, UploadReplicator
from geosync.flags import set_flag
from geosync.metrics import metrics_for
from geosync.registry import Registry
from geosync.states import VerificationState
from geosync.status import (
    STALE_AFTER,
    compute_status,
    load_status,
    replicator_fields,
    status_fields,
)
from geosync.status_reporting import STATUS_PATH, StatusLoop
from geosync.testing import SitePair
from geosync.verification import primary_verifiable, registry_verifiable
from geosync.worker import Worker


def _registry_in_known_state(sites: SitePair) -> None:
    """Five upload registries: pending, failed, synced+verified, synced+verification failed,
    synced without a primary checksum (verification disabled)."""
    geo = sites.secondary
    registry = Registry(geo, UploadReplicator)
    with geo.tracking() as conn:
        registry.insert_pending(conn, [1, 2, 3, 4, 5])
        registry.pending(conn, 5)  # new rows start with verification pending; this one is not
        registry.failed(conn, 2, registry.start(conn, 2), "Download failed", "connection refused")
        for record_id, verification in (
            (3, VerificationState.SUCCEEDED),
            (4, VerificationState.PENDING),
            (5, VerificationState.DISABLED),
        ):
            started = registry.start(conn, record_id)
            assert registry.synced(
                conn, record_id, started, verification=verification, checksum="c" * 64
            )
    target = registry_verifiable(geo, UploadReplicator)
    with geo.tracking() as conn:
        (claim,) = target.claim(conn, 10)
        assert claim.model_record_id == 4
        assert target.failed(conn, 4, claim.started_at, "Checksum does not match")


def test_secondary_counts_its_registries_by_state(sites: SitePair, clock: FrozenClock) -> None:
    _registry_in_known_state(sites)
    clock.advance(90)

    status = compute_status(sites.secondary)

    assert status["geo_node_id"] == sites.secondary_node.id
    assert {
        key.removeprefix("uploads_"): status[key] for key in replicator_fields(UploadReplicator)
    } == {
        "count": 5,
        "checksum_total_count": None,
        "checksummed_count": None,
        "checksum_failed_count": None,
        "synced_count": 3,
        "failed_count": 1,
        "registry_count": 5,
        "verification_total_count": 2,
        "verified_count": 1,
        "verification_failed_count": 1,
        "synced_in_percentage": 60.0,
        "verified_in_percentage": 50.0,
        "oldest_unsynced_age_seconds": 90,
        "oldest_verification_age_seconds": 90,
        "verification_stale_count": 0,
        "scrub_due_count": 0,
        "scrub_found_bad_count": 0,
        "left_to_object_storage_count": 0,
    }
    assert status["package_files_registry_count"] == 0
    assert status["package_files_synced_in_percentage"] == 0.0
    assert status["package_files_oldest_unsynced_age_seconds"] is None
    assert status["db_replication_lag_seconds"] is None  # SQLite, or a PostgreSQL primary
    assert status.healthy and status["health_status"] == "Healthy"


def test_primary_counts_replicables_and_checksums(sites: SitePair) -> None:
    geo = sites.primary
    with geo.session() as session:
        session.add_all([Upload(path=f"u/{i}", namespace_id=1) for i in range(3)])
        session.add_all([PackageFile(file_name=f"p{i}", namespace_id=1) for i in range(2)])
        session.commit()
    uploads = primary_verifiable(geo, UploadReplicator)
    with geo.main() as conn:
        first, second, third = uploads.claim(conn, 10)
        uploads.succeeded(conn, first.model_record_id, first.started_at, "a" * 64)
        uploads.succeeded(conn, second.model_record_id, second.started_at, "b" * 64)
        uploads.failed(conn, third.model_record_id, third.started_at, "unreadable")

    status = compute_status(geo)

    assert status["uploads_count"] == 3
    assert status["uploads_checksum_total_count"] == 3
    assert status["uploads_checksummed_count"] == 2
    assert status["uploads_checksum_failed_count"] == 1
    assert status["uploads_verified_in_percentage"] == 66.67
    assert status["package_files_count"] == 2  # verification state on the model's columns
    assert status["package_files_checksum_total_count"] == 2
    assert status["package_files_checksummed_count"] == 0
    for field in ("synced_count", "failed_count", "registry_count", "verified_count"):
        assert status[f"uploads_{field}"] is None  # a primary has no registries
    assert status["cursor_last_event_id"] is None
    assert status.healthy


def test_event_fields_follow_the_log_and_the_cursor_with_its_gaps(
    sites: SitePair, clock: FrozenClock
) -> None:
    created = clock.now()
    with sites.primary.session() as session:
        session.add_all([Upload(path=f"u/{i}", namespace_id=1) for i in range(3)])
        session.commit()
    clock.advance(30)
    with sites.secondary.tracking() as conn:
        conn.execute(insert(geo_event_log_state).values(id=1, event_id=3, updated_at=clock.now()))
        conn.execute(insert(geo_event_gaps).values(event_id=2, created_at=clock.now()))

    status = compute_status(sites.secondary)

    assert status["last_event_id"] == 3
    assert status["last_event_timestamp"] == int(created.timestamp())
    assert status["cursor_last_event_id"] == 1  # min(oldest gap - 1, cursor)
    assert status["cursor_last_event_timestamp"] == int(created.timestamp())
    assert status.healthy


def test_a_cursor_behind_the_pruned_log_is_unhealthy_and_says_why(sites: SitePair) -> None:
    with sites.primary.session() as session:
        session.add_all([Upload(path=f"u/{i}", namespace_id=1) for i in range(4)])
        session.commit()
    with sites.primary.main() as conn:
        conn.execute(delete(geo_events).where(geo_events.c.id <= 3))
    with sites.secondary.tracking() as conn:
        conn.execute(
            insert(geo_event_log_state).values(
                id=1, event_id=1, updated_at=sites.secondary.clock.now()
            )
        )

    status = compute_status(sites.secondary)

    assert not status.healthy
    assert status["health_status"] == "Unhealthy"
    assert "fell behind the pruned event log" in status["health"]


def test_a_type_whose_flag_is_off_reports_null_fields(sites: SitePair) -> None:
    with sites.primary.main() as conn:
        set_flag(
            conn,
            sites.primary.catalog,
            SnippetReplicator.replication_flag_name,
            False,
            sites.primary.clock.now(),
        )

    for geo in (sites.primary, sites.secondary):
        status = compute_status(geo)
        assert set(status_fields(geo.catalog)) == set(status.values)
        assert all(status[f] is None for f in replicator_fields(SnippetReplicator))
        assert status["uploads_count"] == 0
        assert status.for_api()["snippets_synced_in_percentage"] == "0.00%"


def test_secondary_report_is_stored_on_the_primary_and_goes_unhealthy_after_an_hour(
    sites: SitePair, clock: FrozenClock
) -> None:
    _registry_in_known_state(sites)
    with sites.primary_served():
        loop = StatusLoop(sites.secondary, Worker(sites.secondary, factories=[]))
        try:
            assert loop.run_once() == 60.0
        finally:
            loop.close()

    with sites.primary.main_engine.connect() as conn:
        stored = load_status(sites.primary, conn, sites.secondary_node.id)
    assert stored is not None
    assert stored.healthy
    assert stored["uploads_synced_count"] == 3
    assert stored.for_api()["uploads_synced_in_percentage"] == "60.00%"

    clock.advance(STALE_AFTER + timedelta(seconds=1))
    with sites.primary.main_engine.connect() as conn:
        aged = load_status(sites.primary, conn, sites.secondary_node.id)
    assert aged is not None and not aged.healthy
    assert aged["health_status"] == "Unhealthy"
    assert "not updated for 60 minutes" in aged["health"]
    assert aged["uploads_synced_count"] == 3  # the numbers stay visible


def test_primary_loop_stores_its_own_status(sites: SitePair) -> None:
    loop = StatusLoop(sites.primary, Worker(sites.primary, factories=[]))
    loop.run_once()
    loop.close()

    with sites.primary.main_engine.connect() as conn:
        stored = load_status(sites.primary, conn, sites.primary_node.id)
    assert stored is not None and stored.healthy
    assert stored["uploads_count"] == 0


def test_an_undelivered_report_is_counted(sites: SitePair) -> None:
    """The primary's registered URL (port 1) refuses connections."""
    loop = StatusLoop(sites.secondary, Worker(sites.secondary, factories=[]))
    loop.run_once()
    loop.close()

    registry = metrics_for(sites.secondary).registry
    labels = {"name": "secondary", "url": "secondary"}
    assert registry.get_sample_value("geo_status_failed_total", labels) == 1.0
    with sites.primary.main_engine.connect() as conn:
        assert load_status(sites.primary, conn, sites.secondary_node.id) is None


BAD_REPORTS = [
    (b"[1, 2]", 400),
    (b"{not json", 400),
    (b'{"uploads_count": NaN}', 400),
    (b'{"uploads_count": {"nested": 1}}', 400),
    (b'{"uploads_synced_in_percentage": "all"}', 400),
    (b'{"healthy": 1}', 400),
    (b'{"version": 2}', 400),
    (b'{"geo_node_id": 1}', 422),
]


def test_the_receiver_rejects_bad_and_unauthenticated_reports(sites: SitePair) -> None:
    from geosync.auth import node_header

    with sites.primary_served() as url:
        endpoint = url.rstrip("/") + STATUS_PATH
        answers = [
            httpx.post(
                endpoint,
                content=body,
                headers={
                    "Authorization": node_header(sites.secondary, STATUS_PATH),
                    "Content-Type": "application/json",
                },
            )
            for body, _code in BAD_REPORTS
        ]
        unauthenticated = httpx.post(endpoint, json={})
        wrong_path = httpx.post(
            endpoint, json={}, headers={"Authorization": node_header(sites.secondary, "/other")}
        )

    assert [a.status_code for a in answers] == [code for _body, code in BAD_REPORTS]
    assert all("message" in a.json() for a in answers)
    assert unauthenticated.status_code == 401
    assert wrong_path.status_code == 401
    with sites.primary.main_engine.connect() as conn:
        assert load_status(sites.primary, conn, sites.secondary_node.id) is None
