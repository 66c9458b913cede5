"""`sync_object_storage` off: a secondary leaves the blobs the primary keeps in an object store
(a real moto S3 server on loopback) to the store's own replication, and says so."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from geosync.cli import app as cli_app
from geosync.demo.models import PackageFile, Upload
from geosync.demo.replicators import PackageFileReplicator, SnippetReplicator, UploadReplicator
from geosync.explain import explain
from geosync.nodes import NodeStore
from geosync.object_sync import primary_object_storages
from geosync.registry import Registry
from geosync.replicator import Replicator
from geosync.secondary.consistency import ConsistencySweep
from geosync.secondary.log_cursor import LogCursor
from geosync.status import compute_status
from geosync.status_reporting import store_own_status
from geosync.testing import DatabaseFactory, SitePair, build_site_pair
from geosync.testing.object_storage import moto_endpoint, new_bucket

#: The demo's replicators: the CLI runs with the demo's catalog.
TYPES: list[type[Replicator]] = [UploadReplicator, PackageFileReplicator, SnippetReplicator]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_endpoint() as url:
        yield url


@pytest.fixture
def s3_sites(tmp_path: Path, databases: DatabaseFactory, s3_endpoint: str) -> Iterator[SitePair]:
    """Uploads in a bucket on the primary, packages on its disk; the secondary all on disk;
    the secondary's node as registered by default (`sync_object_storage` off)."""
    pair = build_site_pair(
        tmp_path / "sites",
        TYPES,
        databases,
        primary_storages={"uploads": new_bucket(s3_endpoint)},
    )
    yield pair
    pair.dispose()


def create_records(sites: SitePair) -> tuple[list[int], list[int]]:
    """Three uploads written into the primary's bucket and two packages on its disk."""
    with sites.primary.session() as session:
        uploads = [Upload(path=f"u/{n}.bin", namespace_id=1) for n in range(3)]
        packages = [PackageFile(file_name="p.tgz", namespace_id=1) for _ in range(2)]
        session.add_all([*uploads, *packages])
        session.flush()
        for upload in uploads:
            UploadReplicator(upload, geo=sites.primary).store_blob([os.urandom(1000)])
        for package in packages:
            path = PackageFileReplicator(package, geo=sites.primary).file_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"package")
        session.commit()
        return [int(u.id) for u in uploads], [int(p.id) for p in packages]


def registry_ids(sites: SitePair, replicator: type[Replicator]) -> set[int]:
    registry = Registry(sites.secondary, replicator)
    with sites.secondary.tracking_engine.connect() as conn:
        return {int(i) for i in conn.execute(select(registry.key)).scalars()}


def report_primary_status(sites: SitePair) -> None:
    store_own_status(sites.primary, compute_status(sites.primary))


def set_sync_object_storage(sites: SitePair, value: bool) -> None:
    with sites.primary.main() as conn:
        NodeStore(sites.primary, conn).update(sites.secondary_node.id, sync_object_storage=value)


def test_off_leaves_the_primarys_object_stored_blobs_to_the_store(s3_sites: SitePair) -> None:
    sites = s3_sites
    report_primary_status(sites)
    with sites.secondary.main_engine.connect() as main:
        assert primary_object_storages(main) == frozenset({"uploads"})
    uploads, packages = create_records(sites)

    LogCursor(sites.secondary).process_batch()
    ConsistencySweep(sites.secondary).run_pass(sites.secondary.current_node())  # type: ignore[arg-type]

    assert registry_ids(sites, UploadReplicator) == set()  # neither synced nor failed
    assert registry_ids(sites, PackageFileReplicator) == set(packages)
    status = compute_status(sites.secondary)
    assert status["uploads_left_to_object_storage_count"] == len(uploads)
    assert status["uploads_failed_count"] == 0
    assert status["package_files_left_to_object_storage_count"] == 0
    assert status["object_storages"] == ""  # the secondary's own storages are directories

    facts = explain(sites.secondary, "uploads", uploads[0])
    assert facts.left_to_object_storage
    assert "sync_object_storage is off" in facts.summary
    assert "--sync-object-storage" in facts.next_step


def test_on_the_same_blobs_are_synced_by_the_secondary(s3_sites: SitePair) -> None:
    sites = s3_sites
    report_primary_status(sites)
    set_sync_object_storage(sites, True)
    uploads, _ = create_records(sites)

    LogCursor(sites.secondary).process_batch()

    assert registry_ids(sites, UploadReplicator) == set(uploads)
    assert compute_status(sites.secondary)["uploads_left_to_object_storage_count"] == 0
    assert not explain(sites.secondary, "uploads", uploads[0]).left_to_object_storage


def test_turning_it_off_keeps_existing_rows_and_copies(s3_sites: SitePair) -> None:
    sites = s3_sites
    report_primary_status(sites)
    set_sync_object_storage(sites, True)
    uploads, _ = create_records(sites)
    LogCursor(sites.secondary).process_batch()
    set_sync_object_storage(sites, False)

    ConsistencySweep(sites.secondary).run_pass(sites.secondary.current_node())  # type: ignore[arg-type]

    assert registry_ids(sites, UploadReplicator) == set(uploads)  # the sweep removes nothing


def test_unknown_primary_storages_are_synced(s3_sites: SitePair) -> None:
    sites = s3_sites  # the primary has stored no status yet
    with sites.secondary.main_engine.connect() as main:
        assert primary_object_storages(main) is None
    uploads, _ = create_records(sites)

    LogCursor(sites.secondary).process_batch()

    assert registry_ids(sites, UploadReplicator) == set(uploads)


def test_cli_status_and_explain_report_them_as_left_to_the_store(
    s3_sites: SitePair, tmp_path: Path
) -> None:
    sites = s3_sites
    report_primary_status(sites)
    uploads, _ = create_records(sites)
    LogCursor(sites.secondary).process_batch()
    toml = sites.secondary.settings.to_toml()
    config = tmp_path / "secondary.toml"
    config.write_text('replicators = "geosync.demo.replicators"\n' + toml, encoding="utf-8")
    runner = CliRunner()

    def invoke(*args: str) -> str:
        result = runner.invoke(cli_app, ["--config", str(config), *args], env={"COLUMNS": "250"})
        assert result.exit_code == 0, result.output
        return result.stdout

    assert "3 left to object storage" in invoke("status")
    statuses = json.loads(invoke("status", "--json"))
    mine = next(s for s in statuses if s["node"]["name"] == "secondary")
    assert mine["status"]["uploads_left_to_object_storage_count"] == 3
    explained = invoke("explain", "uploads", str(uploads[0]))
    assert "sync_object_storage is off" in explained
