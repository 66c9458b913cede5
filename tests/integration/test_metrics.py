"""`/metrics`: GitLab's `geo_*` gauges, the lag histogram and the counters, per site."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from geosync.demo.models import Upload
from geosync.demo.replicators import UploadReplicator
from geosync.errors import ValidationError
from geosync.metrics import (
    count_skipped_event,
    metric_name,
    metrics_for,
    observe_replication_lag,
)
from geosync.registry import Registry
from geosync.status_reporting import StatusLoop
from geosync.testing import SitePair
from geosync.testing.servers import serve_in_thread
from geosync.web.app import create_app
from geosync.worker import Worker

GITLAB_SUFFIXES = (
    "",
    "_checksum_total",
    "_checksummed",
    "_checksum_failed",
    "_synced",
    "_failed",
    "_registry",
    "_verification_total",
    "_verified",
    "_verification_failed",
    "_oldest_unsynced_age_seconds",
)


def _scrape(base: str) -> dict[str, list[Sample]]:
    response = httpx.get(base + "metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(response.text)}


def _value(samples: list[Sample], sample_name: str, **labels: str) -> float | None:
    for sample in samples:
        if sample.name == sample_name and sample.labels == labels:
            return float(sample.value)
    return None


def test_gauge_names_follow_gitlab() -> None:
    assert metric_name("package_files_synced_count") == "geo_package_files_synced"
    assert metric_name("package_files_checksum_total_count") == "geo_package_files_checksum_total"
    assert metric_name("uploads_count") == "geo_uploads"
    assert metric_name("db_replication_lag_seconds") == "geo_db_replication_lag_seconds"


def test_each_site_exports_gitlabs_gauges_for_every_demo_replicable(sites: SitePair) -> None:
    with sites.primary.session() as session:
        session.add_all([Upload(path=f"u/{i}", namespace_id=1) for i in range(2)])
        session.commit()
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, [1, 2])
        started = registry.start(conn, 1)
        registry.synced(conn, 1, started)

    with sites.primary_served() as primary_base:
        loop = StatusLoop(sites.secondary, Worker(sites.secondary, factories=[]))
        loop.run_once()
        loop.close()
        with serve_in_thread(create_app(sites.secondary)) as secondary_base:
            primary = _scrape(primary_base)
            secondary = _scrape(secondary_base)

    for plural in ("uploads", "package_files", "snippets"):
        for suffix in GITLAB_SUFFIXES:
            assert f"geo_{plural}{suffix}" in primary, f"geo_{plural}{suffix}"
            assert f"geo_{plural}{suffix}" in secondary, f"geo_{plural}{suffix}"
    for name in ("geo_last_event_id", "geo_cursor_last_event_id", "geo_db_replication_lag_seconds"):
        assert name in secondary
    own = {"name": "secondary", "url": "secondary"}
    assert _value(secondary["geo_uploads_synced"], "geo_uploads_synced", **own) == 1.0
    assert _value(secondary["geo_uploads_registry"], "geo_uploads_registry", **own) == 2.0
    assert (
        _value(secondary["geo_uploads"], "geo_uploads", **{"name": "primary", "url": "primary"})
        is None
    )
    # The primary exports its own numbers and every secondary's reported status.
    assert (
        _value(primary["geo_uploads"], "geo_uploads", **{"name": "primary", "url": "primary"})
        == 2.0
    )
    assert _value(primary["geo_uploads_synced"], "geo_uploads_synced", **own) == 1.0
    assert _value(primary["geo_last_event_id"], "geo_last_event_id", **own) == 2.0
    assert _value(primary["geo_status_failed"], "geo_status_failed_total", **own) is None
    primary_own = {"name": "primary", "url": "primary"}
    assert _value(primary["geo_status_failed"], "geo_status_failed_total", **primary_own) == 0


def test_lag_histogram_and_skip_counter_belong_to_the_site_that_counted(sites: SitePair) -> None:
    observe_replication_lag("upload", "synced", 3.0, geo=sites.secondary)
    observe_replication_lag("upload", "synced", 700.0, geo=sites.secondary)
    observe_replication_lag("upload", "verified", 4.0, geo=sites.secondary)
    observe_replication_lag("snippet", "synced", 1.0)  # the process's newest site: the secondary
    count_skipped_event("unknown_replicable", geo=sites.secondary)

    with serve_in_thread(create_app(sites.secondary)) as secondary_base:
        with serve_in_thread(create_app(sites.primary)) as primary_base:
            secondary = _scrape(secondary_base)
            primary = _scrape(primary_base)

    lag = secondary["geo_replication_lag_seconds"]
    synced = {"replicable_name": "upload", "stage": "synced"}
    assert _value(lag, "geo_replication_lag_seconds_count", **synced) == 2.0
    assert _value(lag, "geo_replication_lag_seconds_sum", **synced) == 703.0
    assert _value(lag, "geo_replication_lag_seconds_bucket", **synced, le="600.0") == 1.0
    verified = {"replicable_name": "upload", "stage": "verified"}
    assert _value(lag, "geo_replication_lag_seconds_count", **verified) == 1.0
    snippet = {"replicable_name": "snippet", "stage": "synced"}
    assert _value(lag, "geo_replication_lag_seconds_count", **snippet) == 1.0
    skipped = secondary["geo_events_skipped"]
    assert _value(skipped, "geo_events_skipped_total", reason="unknown_replicable") == 1.0
    assert primary["geo_replication_lag_seconds"] == []  # no clash between sites
    assert primary["geo_events_skipped"] == []


def test_an_unknown_lag_stage_is_refused(sites: SitePair) -> None:
    with pytest.raises(ValidationError, match="stage must be one of synced, verified"):
        observe_replication_lag("upload", "downloaded", 1.0, geo=sites.secondary)


def test_the_lag_histogram_counts_each_synced_item_once(live_sites: SitePair) -> None:
    """End to end: real primary server, the secondary's log cursor and sync workers."""
    from geosync.secondary.log_cursor import LogCursorLoop
    from geosync.secondary.scheduler import SchedulerLoop

    sites = live_sites
    with sites.primary_served():
        storage = sites.primary.settings.blob_storage("uploads")
        with sites.primary.session() as session:
            for n in range(3):
                (storage / f"f{n}").write_bytes(b"x" * (n + 1))
                session.add(Upload(path=f"f{n}", namespace_id=1))
            session.commit()
        worker = Worker(sites.secondary, [LogCursorLoop, SchedulerLoop])
        worker.start()
        try:
            registry = metrics_for(sites.secondary).registry
            synced = {"replicable_name": "upload", "stage": "synced"}
            deadline = time.monotonic() + 30
            while registry.get_sample_value("geo_replication_lag_seconds_count", synced) != 3:
                assert time.monotonic() < deadline, "the uploads were not synced"
                time.sleep(0.05)
            time.sleep(0.5)  # a second count of the same item would show up by now
        finally:
            worker.stop()
        with serve_in_thread(create_app(sites.secondary)) as base:
            lag = _scrape(base)["geo_replication_lag_seconds"]

    assert _value(lag, "geo_replication_lag_seconds_count", **synced) == 3.0
