"""A strategy geosync does not ship, declared here alone, replicates between two real sites.

A *directory* strategy (a directory of files replicated as a unit: the primary serves it as one
tar archive, the secondary unpacks it beside the copy and swaps it in) says everything that
differs from a blob or a repository through the strategy hooks of `Replicator`. If any module of
geosync still branched on the two built-in strategies, this kind would fail to sync, verify,
resync or delete somewhere along the way.
"""

from __future__ import annotations

import hashlib
import io
import secrets
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
from sqlalchemy import Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from geosync import Replicable, Replicator
from geosync.attempts import recent_attempts
from geosync.auth import BLOB_TOKEN_TTL, node_header
from geosync.paths import resolve_inside
from geosync.registry import Registry
from geosync.resync import resync_one
from geosync.reverification import reverify_one
from geosync.secondary.settlement import Success
from geosync.secondary.transfer import download_blob
from geosync.states import SyncState, VerificationState
from geosync.testing import SitePair, build_site_pair
from geosync.testing.databases import DatabaseFactory
from geosync.testing.workers import primary_worker, secondary_worker, wait_for
from geosync.wire import retrieve_path

if TYPE_CHECKING:
    from geosync.registry import RegistryRow
    from geosync.secondary.sync import SyncService
    from geosync.settings import Settings


class Base(DeclarativeBase):
    """The models of this test's own application."""


class Bundle(Replicable, Base):
    """A directory of files that belong together."""

    __tablename__ = "bundles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    namespace_id: Mapped[int] = mapped_column(Integer, default=1)


def directory_checksum(path: Path) -> str:
    """SHA-256 over every file's relative path and SHA-256, in path order."""
    if not path.is_dir():
        raise FileNotFoundError(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path).as_posix()
        digest.update(f"{relative}\0{hashlib.sha256(file.read_bytes()).hexdigest()}\n".encode())
    return digest.hexdigest()


class DirectoryReplicator(Replicator):
    """The directory strategy: one directory per record, in a blob storage, moved whole."""

    abstract: ClassVar[bool] = True
    strategy: ClassVar[str] = "directory"
    noun: ClassVar[str] = "directory"
    capacity_setting: ClassVar[str] = "files_max_capacity"
    storage: ClassVar[str] = "bundles"

    def directory_path(self) -> str:
        """Where the directory lives inside the storage."""
        raise NotImplementedError

    def deleted_payload(self) -> dict[str, Any]:
        return {**super().deleted_payload(), "directory_path": self.directory_path()}

    @classmethod
    def storage_root(cls, settings: Settings) -> Path:
        return settings.blob_storage(cls.storage)

    @classmethod
    def path_in_payload(cls, payload: dict[str, Any]) -> str | None:
        value = payload.get("directory_path")
        return str(value) if value else None

    @classmethod
    def remove_copy(cls, settings: Settings, local_path: str) -> bool:
        root = cls.storage_root(settings)
        link = root / local_path
        if link.is_symlink():
            link.unlink()
            return True
        target = resolve_inside(root, local_path)
        if not target.is_dir():
            return False
        shutil.rmtree(target)
        return True

    def local_path(self) -> str:
        return self.directory_path()

    def copy_path(self) -> Path:
        return resolve_inside(self.storage_root(self.geo.settings), self.directory_path())

    def checksum(self) -> str:
        return directory_checksum(self.copy_path())

    def served_file(self) -> Path:
        """The directory as a tar archive, built beside it and renamed into place."""
        source = self.copy_path()
        served = self.storage_root(self.geo.settings) / ".served"
        served.mkdir(exist_ok=True)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for file in sorted(p for p in source.rglob("*") if p.is_file()):
                tar.add(file, arcname=file.relative_to(source).as_posix())
        partial = served / f"tmp_{secrets.token_hex(8)}"
        partial.write_bytes(buffer.getvalue())
        archive = served / f"{self.model_record_id}.tar"
        partial.rename(archive)
        return archive

    def can_skip_download(self, row: RegistryRow, expected: str | None) -> bool:
        return False

    def fetch(self, job: SyncService, expected: str | None) -> Success:
        """Download the archive, unpack it beside the copy, swap it in, check the checksum."""
        route = job.route()
        path = retrieve_path(self.replicable_name, self.model_record_id)
        incoming = self.storage_root(job.geo.settings) / ".incoming"
        incoming.mkdir(exist_ok=True)
        archive = incoming / f"{self.model_record_id}-{secrets.token_hex(4)}.tar"
        download = download_blob(
            job.client,
            route.primary_url.rstrip("/") + path,
            lambda: {"Authorization": node_header(job.geo, path, BLOB_TOKEN_TTL, route.node)},
            archive,
            cancel=job.cancel,
        )
        staging = archive.with_suffix(".dir")
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(staging, filter="data")
        finally:
            archive.unlink(missing_ok=True)
        dest = self.copy_path()
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
        actual = directory_checksum(dest)
        if expected is None:
            return Success(self.local_path(), bytes=download.bytes)
        if actual != expected:
            return Success(self.local_path(), VerificationState.PENDING, bytes=download.bytes)
        return Success(self.local_path(), VerificationState.SUCCEEDED, actual, bytes=download.bytes)


class BundleReplicator(DirectoryReplicator):
    """Replicates bundles: the one line on the model is its class."""

    model = Bundle

    def directory_path(self) -> str:
        return f"bundles/{self.model_record.id}"


@pytest.fixture
def bundle_sites(tmp_path: Path, databases: DatabaseFactory) -> Iterator[SitePair]:
    """Two sites that replicate bundles, on the real clock, quick to retry."""
    pair = build_site_pair(
        tmp_path / "sites", [BundleReplicator], databases, backoff_scale=0.01, poll_interval=0.2
    )
    yield pair
    pair.dispose()


def create_bundle(sites: SitePair, files: dict[str, bytes]) -> int:
    """A bundle's directory on the primary, then its row (which publishes `created`)."""
    with sites.primary.session() as session:
        bundle = Bundle(name="b")
        session.add(bundle)
        session.flush()
        root = sites.primary.settings.blob_storage("bundles") / "bundles" / str(bundle.id)
        for relative, data in files.items():
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_bytes(data)
        session.commit()
        return bundle.id


def copy_of(sites: SitePair, bundle_id: int) -> Path:
    return sites.secondary.settings.blob_storage("bundles") / "bundles" / str(bundle_id)


def row(sites: SitePair, bundle_id: int) -> tuple[SyncState, VerificationState] | None:
    registry = Registry(sites.secondary, BundleReplicator)
    with sites.secondary.tracking_engine.connect() as conn:
        found = registry.get(conn, bundle_id)
    return None if found is None else (found.sync_state, found.verification)


def verified(sites: SitePair, *ids: int) -> bool:
    return all(row(sites, i) == (SyncState.SYNCED, VerificationState.SUCCEEDED) for i in ids)


def sync_count(sites: SitePair, bundle_id: int) -> int:
    with sites.secondary.tracking_engine.connect() as conn:
        attempts = recent_attempts(conn, "bundle", bundle_id)
    return [a.outcome for a in attempts if a.kind == "sync"].count("synced")


def test_a_strategy_of_its_own_replicates_verifies_resyncs_and_deletes(
    bundle_sites: SitePair,
) -> None:
    sites = bundle_sites
    contents = {
        n: {"index.txt": f"bundle {n}".encode(), "parts/a.bin": secrets.token_bytes(3000 + n)}
        for n in range(3)
    }
    with sites.primary_served(), primary_worker(sites), secondary_worker(sites, verification=True):
        ids = [create_bundle(sites, files) for files in contents.values()]
        wait_for(lambda: verified(sites, *ids), timeout=60, what="bundles synced and verified")
        for bundle_id, files in zip(ids, contents.values(), strict=True):
            for relative, data in files.items():
                assert (copy_of(sites, bundle_id) / relative).read_bytes() == data

        # Re-verification finds a damaged copy and the strategy's transfer repairs it.
        damaged = copy_of(sites, ids[0]) / "parts" / "a.bin"
        damaged.write_bytes(b"bit rot")
        reverify_one(sites.secondary, BundleReplicator, ids[0])
        wait_for(
            lambda: damaged.read_bytes() == contents[0]["parts/a.bin"] and verified(sites, ids[0]),
            timeout=60,
            what="the damaged bundle found and fetched again",
        )
        assert sync_count(sites, ids[0]) == 2

        # An operator's resync transfers it once more.
        resync_one(sites.secondary, BundleReplicator, ids[1])
        wait_for(
            lambda: sync_count(sites, ids[1]) == 2 and verified(sites, ids[1]),
            timeout=60,
            what="the resynced bundle synced and verified again",
        )

        # A delete on the primary removes the secondary's copy and its registry row.
        with sites.primary.session() as session:
            session.delete(session.get(Bundle, ids[2]))
            session.commit()
        wait_for(lambda: row(sites, ids[2]) is None, timeout=60, what="the deleted bundle gone")
    assert not copy_of(sites, ids[2]).exists()
    assert copy_of(sites, ids[1]).is_dir()
