"""The blob strategy: a file in a named storage, replicated over HTTP."""

from __future__ import annotations

import hashlib
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from geosync.paths import resolve_inside
from geosync.replicator import UPDATED, Replicator

CHUNK = 1024 * 1024


class BlobReplicator(Replicator):
    """Replicates one file per model record; implement `blob_path` and set `storage`."""

    abstract: ClassVar[bool] = True
    strategy: ClassVar[str] = "blob"
    #: The named blob storage (a key of the `blob_storages` setting) the file lives in.
    storage: ClassVar[str]

    @abstractmethod
    def blob_path(self) -> str:
        """Where the file lives inside `storage`, relative to its root."""

    @classmethod
    def declared_events(cls) -> frozenset[str]:
        """Blobs are created and deleted; mutable blobs are also updated."""
        events = super().declared_events()
        return events | {UPDATED} if cls.mutable else events

    @classmethod
    def validate_declaration(cls) -> list[str]:
        """A blob replicator also needs a storage name and a `blob_path`."""
        problems = super().validate_declaration()
        if not isinstance(getattr(cls, "storage", None), str):
            problems.append(f'{cls.__name__} has no storage (set `storage = "name"`)')
        if getattr(cls.blob_path, "__isabstractmethod__", False):
            problems.append(f"{cls.__name__} does not implement blob_path()")
        return problems

    def deleted_payload(self) -> dict[str, Any]:
        """The file's location travels with the event: the row is gone when it is read."""
        return {**super().deleted_payload(), "blob_path": self.blob_path(), "storage": self.storage}

    def file_path(self) -> Path:
        """Absolute path of this site's copy of the file."""
        return resolve_inside(self.geo.settings.blob_storage(self.storage), self.blob_path())

    def checksum(self) -> str:
        """SHA-256 hex of this site's copy of the file."""
        return file_sha256(self.file_path())


def file_sha256(path: Path) -> str:
    """SHA-256 hex of a file, read in 1 MiB chunks (hashlib releases the GIL on them)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
