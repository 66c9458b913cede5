"""A blob storage that is a directory on this machine."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from geosync.errors import ValidationError
from geosync.paths import resolve_inside
from geosync.storage.base import CHUNK, BlobStore, Listing, Written


class LocalStore(BlobStore):
    """Blobs as files under `root`; keys are paths relative to it."""

    local = True

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        """The directory."""
        return str(self.root)

    def path(self, key: str) -> Path:
        """The file of `key`, resolved strictly inside the root (`UnsafePath` otherwise)."""
        return resolve_inside(self.root, key)

    def exists(self, key: str) -> bool:
        """Whether `key` is a regular file."""
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        """The file's size."""
        return self.path(key).stat().st_size

    def modified_at(self, key: str) -> datetime:
        """The file's modification time."""
        return datetime.fromtimestamp(self.path(key).stat().st_mtime, UTC)

    def sha256(self, key: str) -> str:
        """SHA-256 hex of the file."""
        return file_sha256(self.path(key))

    def remove(self, key: str) -> bool:
        """Delete the file; a symlink loses the link, never its target; a directory is not a
        blob and is refused (`ValidationError`)."""
        path = unresolved_inside(self.root, key)
        if path.is_symlink():
            path.unlink()
            return True
        if path.is_dir():
            raise ValidationError(f"Not a file, not removed: {key!r}")
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def open_read(self, key: str) -> tuple[BinaryIO, int]:
        """The file opened for reading, and its size."""
        handle = self.path(key).open("rb")
        return handle, os.fstat(handle.fileno()).st_size

    def write(
        self,
        key: str,
        chunks: Iterable[bytes],
        *,
        expected_sha256: str | None = None,
        cancel: threading.Event | None = None,
    ) -> Written:
        """Write the file atomically (a temp file linked or renamed into place)."""
        from geosync.secondary.transfer import write_blob

        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        done = write_blob(path, chunks, expected_sha256=expected_sha256, cancel=cancel)
        return Written(done.bytes, done.sha256)

    def list_page(self, prefix: str = "", after: str | None = None, limit: int = 1000) -> Listing:
        """Regular files under `prefix`, in key order."""
        keys = sorted(key for key in self._walk(prefix) if after is None or key > after)
        page = keys[:limit]
        return Listing(page, page[-1] if len(keys) > limit else None)

    def _walk(self, prefix: str) -> Iterable[str]:
        root = self.root.resolve()
        for directory, _, files in os.walk(root):
            for name in files:
                path = Path(directory, name)
                key = path.relative_to(root).as_posix()
                if key.startswith(prefix) and path.is_file() and not path.is_symlink():
                    yield key


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
