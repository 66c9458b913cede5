"""The demo application's replicators pass the contract suites geosync ships to app authors.

Each class is what an application engineer writes: one fixture naming the replicator and how to
create a record plus its resource. `OnBothDatabases` only makes geosync's own run use SQLite and
PostgreSQL, like every database test here.
"""

from __future__ import annotations

import os
import secrets

import pytest

from geosync.app import Geo
from geosync.demo.models import PackageFile, Snippet, Upload
from geosync.demo.replicators import PackageFileReplicator, SnippetReplicator, UploadReplicator
from geosync.git import init_bare
from geosync.strategies.blob import BlobReplicator
from geosync.strategies.repository import RepositoryReplicator
from geosync.testing import (
    BlobReplicatorContract,
    DatabaseFactory,
    ReplicatorFactory,
    RepositoryReplicatorContract,
)
from tests import gitutil


class OnBothDatabases:
    """Runs a contract on the conftest's parametrized databases (SQLite and PostgreSQL)."""

    @pytest.fixture
    def geosync_databases(self, databases: DatabaseFactory) -> DatabaseFactory:
        return databases


def create_upload(geo: Geo, namespace_id: int) -> int:
    """An upload: the file first, then the row."""
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


def create_package_file(geo: Geo, namespace_id: int) -> int:
    """A package file: its path needs the id, so the file is written after the flush."""
    data = os.urandom(30_000)
    with geo.session() as session:
        package = PackageFile(file_name="pkg.tgz", namespace_id=namespace_id, size=len(data))
        session.add(package)
        session.flush()
        replicator = package.replicator
        assert isinstance(replicator, BlobReplicator)
        path = replicator.file_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        session.commit()
        return package.id


def create_snippet(geo: Geo, namespace_id: int) -> int:
    """A snippet whose bare repository has two branches of real commits."""
    with geo.session() as session:
        snippet = Snippet(title="contract", namespace_id=namespace_id)
        session.add(snippet)
        session.flush()
        replicator = snippet.replicator
        assert isinstance(replicator, RepositoryReplicator)
        init_bare(replicator.repository_dir())
        gitutil.seed_branches(replicator.repository_dir(), ["main", "topic"])
        session.commit()
        return snippet.id


class TestUploadReplicator(OnBothDatabases, BlobReplicatorContract):
    @pytest.fixture
    def replicator_factory(self) -> ReplicatorFactory:
        return ReplicatorFactory(UploadReplicator, create_upload)


class TestPackageFileReplicator(OnBothDatabases, BlobReplicatorContract):
    @pytest.fixture
    def replicator_factory(self) -> ReplicatorFactory:
        return ReplicatorFactory(PackageFileReplicator, create_package_file)


class TestSnippetReplicator(OnBothDatabases, RepositoryReplicatorContract):
    @pytest.fixture
    def replicator_factory(self) -> ReplicatorFactory:
        return ReplicatorFactory(SnippetReplicator, create_snippet)
