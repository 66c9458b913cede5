"""The demo application's replicators pass the contract suites geosync ships to app authors.

Each class is what an application engineer writes: one fixture returning a `ReplicatorFactory`
(the replicator and how to create a record plus its resource). `OnBothDatabases` only makes
geosync's own run use SQLite and PostgreSQL, like every database test here.
"""

from __future__ import annotations

import os
import secrets

import pytest

from geosync.app import Geo
from geosync.demo.models import PackageFile, Snippet, Upload
from geosync.demo.replicators import PackageFileReplicator, SnippetReplicator, UploadReplicator
from geosync.testing import (
    BlobReplicatorContract,
    DatabaseFactory,
    ReplicatorFactory,
    RepositoryReplicatorContract,
    VerifiableRegistryContract,
    create_bare_repository,
)


class OnBothDatabases:
    """Runs a contract on the conftest's parametrized databases (SQLite and PostgreSQL)."""

    @pytest.fixture
    def geosync_databases(self, databases: DatabaseFactory) -> DatabaseFactory:
        return databases


class UploadFactory:
    """Uploads: the file first, then the row."""

    replicator = UploadReplicator

    def create(self, geo: Geo, namespace_id: int) -> int:
        name = f"{namespace_id}/{secrets.token_hex(8)}.bin"
        data = os.urandom(70_000)
        path = geo.settings.blob_storage("uploads") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        with geo.session() as session:
            upload = Upload(path=name, namespace_id=namespace_id, size=len(data))
            session.add(upload)
            session.commit()
            return upload.id


class PackageFileFactory:
    """Package files: the path needs the id, so the file is written after the flush."""

    replicator = PackageFileReplicator

    def create(self, geo: Geo, namespace_id: int) -> int:
        data = os.urandom(30_000)
        with geo.session() as session:
            package = PackageFile(file_name="pkg.tgz", namespace_id=namespace_id, size=len(data))
            session.add(package)
            session.flush()
            path = PackageFileReplicator(package, geo=geo).file_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            session.commit()
            return package.id


class SnippetFactory:
    """Snippets whose bare repository has two branches of real commits."""

    replicator = SnippetReplicator

    def create(self, geo: Geo, namespace_id: int) -> int:
        with geo.session() as session:
            snippet = Snippet(title="contract", namespace_id=namespace_id)
            session.add(snippet)
            session.flush()
            repository = SnippetReplicator(snippet, geo=geo).repository_dir()
            create_bare_repository(repository, branches=["main", "topic"])
            session.commit()
            return snippet.id


class TestUploadReplicator(OnBothDatabases, BlobReplicatorContract):
    @pytest.fixture
    def replicator_factory(self) -> ReplicatorFactory:
        return UploadFactory()


class TestPackageFileReplicator(OnBothDatabases, BlobReplicatorContract):
    @pytest.fixture
    def replicator_factory(self) -> ReplicatorFactory:
        return PackageFileFactory()


class TestSnippetReplicator(OnBothDatabases, RepositoryReplicatorContract):
    @pytest.fixture
    def replicator_factory(self) -> ReplicatorFactory:
        return SnippetFactory()


class TestUploadRegistry(OnBothDatabases, VerifiableRegistryContract):
    @pytest.fixture
    def replicator_factory(self) -> ReplicatorFactory:
        return UploadFactory()


class TestSnippetRegistry(OnBothDatabases, VerifiableRegistryContract):
    @pytest.fixture
    def replicator_factory(self) -> ReplicatorFactory:
        return SnippetFactory()
