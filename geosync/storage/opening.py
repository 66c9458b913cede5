"""Which `BlobStore` a site's named blob storage is."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from geosync.settings import ObjectStorage
from geosync.storage.base import BlobStore
from geosync.storage.local import LocalStore

if TYPE_CHECKING:
    from geosync.settings import Settings


def blob_store(settings: Settings, name: str) -> BlobStore:
    """The store of blob storage `name` on this site (a `ConfigurationError` naming it when it
    is not configured, or is an object store and the `s3` extra is missing)."""
    entry = settings.blob_storage_entry(name)
    if isinstance(entry, ObjectStorage):
        return _object_store(entry)
    return LocalStore(entry)


@functools.lru_cache(maxsize=32)
def _object_store(config: ObjectStorage) -> BlobStore:
    """One store (and its connection pool) per configuration."""
    from geosync.storage.object_store import ObjectStore

    return ObjectStore(config)
