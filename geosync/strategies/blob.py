"""The blob strategy: a file in a named storage, replicated over HTTP."""

from __future__ import annotations

import hashlib
import threading
from abc import abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from geosync.errors import GeoError, ValidationError
from geosync.paths import resolve_inside
from geosync.replicator import UPDATED, Replicator

if TYPE_CHECKING:
    from geosync.registry import RegistryRow
    from geosync.secondary.settlement import Success
    from geosync.secondary.sync import SyncService
    from geosync.settings import Settings

CHUNK = 1024 * 1024


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
        """SHA-256 hex of this site's copy of the file."""
        return file_sha256(self.file_path())

    # -- the strategy's behaviour ------------------------------------------------------------

    @classmethod
    def keeps_checksum(cls) -> bool:
        """An immutable blob keeps its reference checksum: its content cannot change."""
        return not cls.mutable

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
        """Delete the file; a symlink loses the link, never its target; a directory is not a
        blob and is refused (`ValidationError`)."""
        root = cls.storage_root(settings)
        path = unresolved_inside(root, local_path)
        if path.is_symlink():
            path.unlink()
            return True
        if path.is_dir():
            raise ValidationError(f"Not a file, not removed: {local_path!r}")
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def local_path(self) -> str:
        """The blob's path inside its storage."""
        return self.blob_path()

    def copy_path(self) -> Path:
        """This site's copy of the file."""
        return self.file_path()

    def served_file(self) -> Path:
        """The blob's file on the primary."""
        return self.file_path()

    def scrub_bytes(self) -> int:
        """The size of this site's copy of the file (0 when it is missing)."""
        try:
            return self.file_path().stat().st_size
        except (OSError, GeoError):
            return 0

    def can_skip_download(self, row: RegistryRow, expected: str | None) -> bool:
        """§6 skip-download: an immutable blob, a brand-new registry row, and a file already at
        the target path whose SHA-256 is the primary's checksum `expected`."""
        if self.mutable or expected is None or not row.brand_new:
            return False
        path = self.file_path()
        if not path.is_file():
            return False
        try:
            return file_sha256(path) == expected
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

        def auth() -> dict[str, str]:
            return {"Authorization": node_header(job.geo, path, BLOB_TOKEN_TTL, route.node)}

        download = download_blob(
            job.client,
            route.primary_url.rstrip("/") + path,
            auth,
            self.file_path(),
            expected_sha256=expected,
            cancel=job.cancel,
        )
        return Success.downloaded(self.blob_path(), expected, download)


def unresolved_inside(root: Path, relative: str) -> Path:
    """`root/relative` with its last component left as it is (a symlink stays the link), after
    checking that the directory holding it is inside `root`."""
    resolve_inside(root, relative)  # the checks: relative, no `..`, no way out
    parts = Path(relative).parts
    parent = resolve_inside(root, str(Path(*parts[:-1]))) if len(parts) > 1 else root.resolve()
    return parent / parts[-1]


def file_sha256(path: Path) -> str:
    """SHA-256 hex of a file, read in 1 MiB chunks (hashlib releases the GIL on them).

    Each thread reads into a buffer of its own, kept between files: a fresh 1 MiB allocation
    per read costs a small file more than hashing it.
    """
    buffer = _buffers.__dict__.get("buffer")
    if buffer is None:
        buffer = _buffers.buffer = memoryview(bytearray(CHUNK))
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as handle:
        while size := handle.readinto(buffer):
            digest.update(buffer[:size])
    return digest.hexdigest()


_buffers = threading.local()
