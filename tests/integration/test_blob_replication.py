"""Blob replication in one process: real primary web server, real worker loops, real files."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from geosync.demo.models import PackageFile, Upload
from geosync.demo.replicators import PackageFileReplicator, UploadReplicator
from geosync.registry import Registry
from geosync.states import SyncState
from geosync.testing import SitePair
from geosync.testing.workers import secondary_worker, wait_for


def create_upload(sites: SitePair, name: str, content: bytes, namespace: int = 1) -> int:
    """Write a file on the primary and its Upload row (which publishes `created`)."""
    path = sites.primary.settings.blob_storage("uploads") / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    with sites.primary.session() as session:
        upload = Upload(path=name, namespace_id=namespace, size=len(content))
        session.add(upload)
        session.commit()
        return upload.id


def secondary_file(sites: SitePair, storage: str, relative: str) -> Path:
    return sites.secondary.settings.blob_storage(storage) / relative


def registry_states(sites: SitePair, replicator: type) -> dict[int, int]:
    registry = Registry(sites.secondary, replicator)
    with sites.secondary.tracking_engine.connect() as conn:
        rows = conn.execute(select(registry.key, registry.table.c.state)).all()
    return {int(k): int(s) for k, s in rows}


def all_synced(sites: SitePair, replicator: type, ids: list[int]) -> Callable[[], bool]:
    def check() -> bool:
        states = registry_states(sites, replicator)
        return all(states.get(i) == SyncState.SYNCED for i in ids)

    return check


def test_created_blobs_arrive_byte_identical_and_deletes_follow(live_sites: SitePair) -> None:
    sites = live_sites
    with sites.primary_served():
        contents = {f"a/{n}.bin": os.urandom(n * 997 % 70_000) for n in range(40)}
        ids = {create_upload(sites, name, data): name for name, data in contents.items()}
        with secondary_worker(sites):
            wait_for(all_synced(sites, UploadReplicator, list(ids)), what="uploads synced")
            for name, data in contents.items():
                assert secondary_file(sites, "uploads", name).read_bytes() == data
            doomed = list(ids)[:5]
            with sites.primary.session() as session:
                for upload_id in doomed:
                    session.delete(session.get(Upload, upload_id))
                session.commit()
            wait_for(
                lambda: not set(doomed) & set(registry_states(sites, UploadReplicator)),
                what="deleted registries removed",
            )
        for upload_id in doomed:
            assert not secondary_file(sites, "uploads", ids[upload_id]).exists()
        leftovers = [
            p.name for p in sites.secondary.settings.blob_storage("uploads").rglob("tmp_*")
        ]
        assert leftovers == []


def test_mutable_blob_rewritten_on_primary_arrives_again(live_sites: SitePair) -> None:
    sites = live_sites
    with sites.primary_served(), secondary_worker(sites):
        with sites.primary.session() as session:
            package = PackageFile(file_name="lib.tar", namespace_id=3, size=0)
            session.add(package)
            session.flush()
            replicator = package.replicator
            assert isinstance(replicator, PackageFileReplicator)
            primary_path = replicator.file_path()
            primary_path.parent.mkdir(parents=True, exist_ok=True)
            primary_path.write_bytes(b"version one")
            session.commit()
            relative = replicator.blob_path()
            package_id = package.id
        copy = secondary_file(sites, "packages", relative)
        wait_for(lambda: copy.exists() and copy.read_bytes() == b"version one", what="v1")
        primary_path.write_bytes(b"version two, longer")
        with sites.primary.session() as session:
            record = session.get(PackageFile, package_id)
            assert record is not None
            record.replicator.handle_after_update()
            session.commit()
        wait_for(lambda: copy.read_bytes() == b"version two, longer", what="v2 on secondary")


def test_file_missing_on_primary_fails_with_missing_on_primary(live_sites: SitePair) -> None:
    sites = live_sites
    with sites.primary_served():
        upload_id = create_upload(sites, "gone.bin", b"x")
        (sites.primary.settings.blob_storage("uploads") / "gone.bin").unlink()
        with secondary_worker(sites):
            registry = Registry(sites.secondary, UploadReplicator)

            def failed() -> bool:
                with sites.secondary.tracking_engine.connect() as conn:
                    row = registry.get(conn, upload_id)
                return row is not None and row.state == SyncState.FAILED

            wait_for(failed, what="row failed")
    with sites.secondary.tracking_engine.connect() as conn:
        row = registry.require(conn, upload_id)
    assert row.missing_on_primary is True
    assert "missing on the primary" in row.last_sync_failure
    assert row.retry_count >= 1


@pytest.mark.parametrize("flag_on", [False])
def test_flag_off_creates_no_registry(live_sites: SitePair, flag_on: bool) -> None:
    from geosync.flags import set_flag

    sites = live_sites
    with sites.primary.main() as conn:
        set_flag(
            conn,
            sites.primary.catalog,
            "geo_upload_replication",
            flag_on,
            sites.primary.clock.now(),
        )
    with sites.primary_served():
        create_upload(sites, "off.bin", b"nothing")
        with secondary_worker(sites):
            time.sleep(1.0)
            assert registry_states(sites, UploadReplicator) == {}
