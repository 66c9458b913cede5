"""What every blob storage offers the blob strategy (`BlobStore`), whatever keeps the bytes."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

#: Bytes read or written at a time.
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Written:
    """A blob written whole under its key: its size and SHA-256 hex."""

    bytes: int
    sha256: str


@dataclass(frozen=True)
class Listing:
    """One page of the keys under a prefix, in key order; `after` continues it (None: done)."""

    keys: list[str]
    after: str | None


class BlobStore(ABC):
    """A named storage's blobs by key (the blob's path relative to the storage's root).

    Keys are checked before use: relative, no `..`, no way out of the storage. A missing blob is
    `FileNotFoundError` from `sha256`, `size` and `open_read`.
    """

    #: Whether this store is a directory on this machine (the strategy's fast paths).
    local: bool = False

    @abstractmethod
    def describe(self) -> str:
        """Where the store is, safe to log and show (never a credential)."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether a blob (a regular file or an object) is stored under `key`."""

    @abstractmethod
    def size(self, key: str) -> int:
        """The blob's size in bytes."""

    @abstractmethod
    def modified_at(self, key: str) -> datetime:
        """When the blob was last written (aware, UTC)."""

    @abstractmethod
    def sha256(self, key: str) -> str:
        """SHA-256 hex of the blob's bytes, streamed."""

    @abstractmethod
    def remove(self, key: str) -> bool:
        """Delete the blob; missing is fine. Returns whether something was removed."""

    @abstractmethod
    def open_read(self, key: str) -> tuple[BinaryIO, int]:
        """The blob opened for reading, and its size."""

    @abstractmethod
    def write(
        self,
        key: str,
        chunks: Iterable[bytes],
        *,
        expected_sha256: str | None = None,
        cancel: threading.Event | None = None,
    ) -> Written:
        """Store `chunks` under `key`, visible only when whole and (given `expected_sha256`)
        hash-checked: a failure or a kill part-way leaves the key as it was."""

    @abstractmethod
    def list_page(self, prefix: str = "", after: str | None = None, limit: int = 1000) -> Listing:
        """Up to `limit` keys under `prefix`, after key `after`, in key order."""

    def iter_keys(self, prefix: str = "", page: int = 1000) -> Iterator[str]:
        """Every key under `prefix`, one page (at most `page` keys) in memory at a time."""
        after: str | None = None
        while True:
            listing = self.list_page(prefix, after, page)
            yield from listing.keys
            if listing.after is None:
                return
            after = listing.after
