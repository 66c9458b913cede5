"""A download's temp file while it is written: the bytes so far, their running SHA-256, and for
large files, writes that bypass the page cache.

Written through the page cache, every byte of a file is first copied into cache pages the kernel
must find (on a virtual machine often fault in from the host) and then written out again by the
fsync that makes it durable. For a large file that copy costs more than the disk write itself.
So once a download is known to be large, its temp file takes `O_DIRECT` where the file system
allows it: the body is read into one reused, page-aligned 1 MiB buffer, hashed there and written
from it straight to the disk, and only the last, partial block goes through the cache. The
fsync before the file gets its name still makes every byte durable, and a file system without
direct I/O simply keeps the page cache.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
from typing import Any, BinaryIO, Protocol

#: Files from this size on bypass the page cache; below it the cache is cheaper than the waits
#: of direct writes.
DIRECT_MIN = 8 * 1024 * 1024
#: The unit of a direct write: a multiple of every block size a disk has.
BLOCK = 1024 * 1024
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)


class Body(Protocol):
    """A response body, read in pieces or into a buffer."""

    def read_chunk(self, size: int) -> bytes:
        """Up to `size` bytes; empty at the end."""

    def read_into(self, buffer: memoryview) -> int:
        """Bytes read into `buffer`; 0 at the end."""


class PartialFile:
    """The temp file of one download: write with `add`, make durable with `finish`."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.fd = handle.fileno()
        self.digest: Any = hashlib.sha256()
        #: Bytes accepted so far (written, or held in the block buffer until it is full).
        self.written = 0
        self._block: mmap.mmap | None = None
        self._fill = 0
        self._direct = False

    @property
    def direct(self) -> bool:
        """Whether blocks are being written past the page cache."""
        return self._direct

    def expect(self, size: int) -> None:
        """Told the body's size before its first byte: a large file goes direct where it can."""
        if self.written or self._direct or size < DIRECT_MIN or not _O_DIRECT:
            return
        self.handle.flush()
        try:
            flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags | _O_DIRECT)
        except OSError:
            return  # no direct I/O on this file system: the page cache it is
        if self._block is None:
            self._block = mmap.mmap(-1, BLOCK)  # page-aligned, as direct writes need
        self._direct = True

    def add(self, chunk: bytes) -> None:
        """Hash `chunk` and write it (or hold it until its block is full)."""
        self.digest.update(chunk)
        self.written += len(chunk)
        if not self._direct or self._block is None:
            self.handle.write(chunk)
            return
        view = memoryview(chunk)
        while view:
            taken = min(len(view), BLOCK - self._fill)
            self._block[self._fill : self._fill + taken] = view[:taken]
            self._fill += taken
            view = view[taken:]
            if self._fill == BLOCK:
                self._write_block()
                if not self._direct:
                    self.handle.write(view)
                    return

    def pull(self, body: Body) -> int:
        """Take the next piece of `body` (at most a block); 0 at its end.

        Writing direct, the body is read straight into the block buffer: no piece is allocated
        and copied again.
        """
        if not self._direct or self._block is None:
            chunk = body.read_chunk(BLOCK)
            if chunk:
                self.add(chunk)
            return len(chunk)
        space = memoryview(self._block)[self._fill :]
        count = body.read_into(space)
        self.digest.update(space[:count])
        self.written += count
        self._fill += count
        if self._fill == BLOCK:
            self._write_block()
        return count

    def restart(self) -> None:
        """Forget everything written (the server ignored a Range request)."""
        self.handle.seek(0)
        self.handle.truncate()
        self.digest = hashlib.sha256()
        self.written = 0
        self._fill = 0

    def finish(self) -> None:
        """Write what is still held, then make every byte durable (fdatasync)."""
        if self._direct:
            self._leave_direct()  # the tail is not a whole block: it goes through the cache
        if self._fill and self._block is not None:
            _write_all(self.fd, self._block[: self._fill])
            self._fill = 0
        self.handle.flush()
        os.fdatasync(self.fd)

    def close(self) -> None:
        """Release the block buffer (the file itself belongs to the caller)."""
        if self._block is not None:
            with contextlib.suppress(BufferError):  # still viewed by a failed read's traceback:
                self._block.close()  # then it is freed with that traceback
            self._block = None

    def _write_block(self) -> None:
        assert self._block is not None
        try:
            done = os.write(self.fd, self._block)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            done = 0  # the file system took the flag but not the write
        if done < BLOCK:  # refused or cut short: this block and all after it go buffered
            self._leave_direct()
            _write_all(self.fd, self._block[done:])
        self._fill = 0

    def _leave_direct(self) -> None:
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~_O_DIRECT)
        self._direct = False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
