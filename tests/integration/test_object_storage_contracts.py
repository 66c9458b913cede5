"""The blob contract suite for a replicator whose storage is an object store (a real moto S3
server on loopback): on the primary, on the secondary, and on both."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from geosync.app import Geo
from geosync.demo.models import Upload
from geosync.demo.replicators import UploadReplicator
from geosync.settings import ObjectStorage
from geosync.testing import BlobReplicatorContract, ReplicatorFactory
from geosync.testing.object_storage import moto_endpoint, new_bucket


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_endpoint() as url:
        yield url


class StoredUploadFactory:
    """Uploads written through the replicator's store (a directory or a bucket), then the row."""

    replicator = UploadReplicator

    def create(self, geo: Geo, namespace_id: int) -> int:
        data = os.urandom(70_000)
        with geo.session() as session:
            name = f"{namespace_id}/{secrets.token_hex(8)}.bin"
            upload = Upload(path=name, namespace_id=namespace_id, size=len(data))
            UploadReplicator(upload, geo=geo).store_blob([data])
            session.add(upload)
            session.commit()
            return upload.id


class OnObjectStorage(BlobReplicatorContract):
    """The contract with the `uploads` storage in a fresh bucket on the chosen sites."""

    on_primary_site: bool = False
    on_secondary_site: bool = False

    @pytest.fixture
    def replicator_factory(self) -> ReplicatorFactory:
        return StoredUploadFactory()

    @pytest.fixture(autouse=True)
    def _buckets(self, s3_endpoint: str) -> None:
        self.buckets: dict[str, ObjectStorage] = {
            "primary": new_bucket(s3_endpoint),
            "secondary": new_bucket(s3_endpoint),
        }

    def site_options(self) -> dict[str, Any]:
        # The secondary copies object-stored blobs itself (GitLab's default, off, would leave
        # them to the store's own replication once the primary has reported its storages).
        options = {
            **super().site_options(),
            "secondary_node_settings": {"sync_object_storage": True},
        }
        if self.on_primary_site:
            options["primary_storages"] = {"uploads": self.buckets["primary"]}
        if self.on_secondary_site:
            options["secondary_storages"] = {"uploads": self.buckets["secondary"]}
        return options


class TestUploadsOnS3Primary(OnObjectStorage):
    on_primary_site = True


class TestUploadsOnS3Secondary(OnObjectStorage):
    on_secondary_site = True


class TestUploadsOnS3Both(OnObjectStorage):
    on_primary_site = True
    on_secondary_site = True
