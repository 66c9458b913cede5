"""Blob storages: where a site keeps a named storage's blobs, on a local disk or in an object store.

A `[blob_storages]` entry is a directory (`LocalStore`) or an `s3://bucket/prefix` URL with its
options (`ObjectStore`, on fsspec + s3fs: `pip install geosync[s3]`). The blob strategy asks a
`BlobStore` for everything it does with a blob — checksum, existence, size, removal, reading to
serve it and writing a copy atomically — and never asks which kind it has, except to take a
local file's faster paths (zero-copy serving, resumable downloads into the directory).
"""

from __future__ import annotations

from geosync.storage.base import BlobStore, Listing, Written
from geosync.storage.local import LocalStore
from geosync.storage.opening import blob_store

__all__ = ["BlobStore", "Listing", "LocalStore", "Written", "blob_store"]
