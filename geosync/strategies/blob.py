"""The blob strategy: a file in a named storage, replicated over HTTP."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

from geosync.errors import GeoError
from geosync.paths import resolve_inside
from geosync.replicator import UPDATED, Replicator
from geosync.storage import BlobStore, Written, blob_store
from geosync.storage.local import file_sha256, unresolved_inside

if TYPE_CHECKING:
    from geosync.registry import RegistryRow
    from geosync.secondary.settlement import Success
    from geosync.secondary.sync import SyncService
    from geosync.settings import Settings

CHUNK = 1024 * 1024

__all__ = ["BlobReplicator", "file_sha256", "unresolved_inside"]


class BlobReplicator(Replicator):
    """Replicates one file per model record; implement `blob_path` and set `storage`."""

    abstract: ClassVar[bool] = True
    strategy: ClassVar[str] = "blob"
    noun: ClassVar[str] = "file"
    capacity_setting: ClassVar[str] = "files_max_capacity"
    batches: ClassVar[bool] = True
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
        return resolve_inside(self.storage_root(self.geo.settings), self.blob_path())

    def checksum(self) -> str:
        """SHA-256 hex of this site's copy of the file (streamed, from a disk or a store)."""
        return self.blob_store().sha256(self.blob_path())

    def blob_store(self) -> BlobStore:
        """This site's store of the blob's storage (a directory or an object store)."""
        return self.store_of(self.geo.settings)

    def store_blob(self, chunks: Iterable[bytes]) -> Written:
        """Write this record's blob into its storage, visible only when whole: how an
        application puts a file into an object-store storage (a directory works the same)."""
        return self.blob_store().write(self.blob_path(), chunks)

    # -- the strategy's behaviour ------------------------------------------------------------

    @classmethod
    def keeps_checksum(cls) -> bool:
        """An immutable blob keeps its reference checksum: its content cannot change."""
        return not cls.mutable

    @classmethod
    def store_of(cls, settings: Settings) -> BlobStore:
        """The store of the named blob storage `storage` on the site of `settings`."""
        return blob_store(settings, str(getattr(cls, "storage", "")))

    @classmethod
    def transfers_in_batches(cls, settings: Settings) -> bool:
        """Small files travel many per request into a directory; into an object store each
        blob is its own streamed upload."""
        return cls.batches and cls.store_of(settings).local

    @classmethod
    def storage_root(cls, settings: Settings) -> Path:
        """The root of the named blob storage `storage`."""
        return settings.blob_storage(str(getattr(cls, "storage", "")))

    @classmethod
    def path_in_payload(cls, payload: dict[str, Any]) -> str | None:
        """The `blob_path` a `deleted` event carries."""
        value = payload.get("blob_path")
        return str(value) if value else None

    @classmethod
    def remove_copy(cls, settings: Settings, local_path: str) -> bool:
        """Delete the file or object; a symlink loses the link, never its target; a directory
        is not a blob and is refused (`ValidationError`)."""
        return cls.store_of(settings).remove(local_path)

    def local_path(self) -> str:
        """The blob's path inside its storage."""
        return self.blob_path()

    def copy_path(self) -> Path:
        """This site's copy of the file."""
        return self.file_path()

    def served_file(self) -> Path:
        """The blob's file on the primary."""
        return self.file_path()

    def served_object(self) -> tuple[BinaryIO, int] | None:
        """The blob opened in the primary's object store, and its size; None when the storage
        is a directory (`served_file` then)."""
        store = self.blob_store()
        return None if store.local else store.open_read(self.blob_path())

    def scrub_bytes(self) -> int:
        """The size of this site's copy of the file (0 when it is missing)."""
        try:
            return self.blob_store().size(self.blob_path())
        except (OSError, GeoError):
            return 0

    def can_skip_download(self, row: RegistryRow, expected: str | None) -> bool:
        """§6 skip-download: an immutable blob, a brand-new registry row, and a file already at
        the target path whose SHA-256 is the primary's checksum `expected`."""
        if self.mutable or expected is None or not row.brand_new:
            return False
        store, key = self.blob_store(), self.blob_path()
        if not store.exists(key):
            return False
        try:
            return store.sha256(key) == expected
        except OSError:
            return False

    def fetch(self, job: SyncService, expected: str | None) -> Success:
        """Download the file from the primary (streamed, hashed while streaming, atomic)."""
        from geosync.auth import BLOB_TOKEN_TTL, node_header
        from geosync.secondary.settlement import Success
        from geosync.secondary.transfer import download_blob
        from geosync.wire import retrieve_path

        route = job.route()
        path = retrieve_path(self.replicable_name, self.model_record_id)
        store = self.blob_store()

        def auth() -> dict[str, str]:
            return {"Authorization": node_header(job.geo, path, BLOB_TOKEN_TTL, route.node)}

        if not store.local:
            from geosync.secondary.object_transfer import download_to_store

            url = route.primary_url.rstrip("/") + path
            download = download_to_store(job, url, auth, store, self.blob_path(), expected)
            return Success.downloaded(self.blob_path(), expected, download)
        download = download_blob(
            job.client,
            route.primary_url.rstrip("/") + path,
            auth,
            self.file_path(),
            expected_sha256=expected,
            cancel=job.cancel,
        )
        return Success.downloaded(self.blob_path(), expected, download)
