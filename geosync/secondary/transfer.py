"""Blob download from the primary: streamed, hashed while streaming, written atomically.

The body goes to an unnamed file (`O_TMPFILE`) in the destination directory, is fsynced and then
linked into place, so a partial file is never visible under the real name, and a worker killed
mid-download leaves nothing behind. A file system without unnamed files gets `tmp_<random>`
instead, renamed into place; it is held (`geosync.file_locks`) while written, and one a killed
worker leaves is removed by the stuck sweep (`geosync.secondary.leftovers`). An interrupted
download resumes with an HTTP Range request within the same download; the hash continues over
the bytes already written. Large files are written past the page cache
(`geosync.secondary.partial_file`).
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from geosync.errors import (
    AuthenticationError,
    ChecksumMismatch,
    Interrupted,
    PrimaryMissing,
    PrimaryRefused,
    PrimaryUnreachable,
    RecordGone,
    StorageFull,
    TransferError,
    TransportFailure,
)
from geosync.file_locks import TEMP_PREFIX, hold_new
from geosync.file_locks import temp_name as _temp_name
from geosync.secondary.blob_client import BlobClient, BlobResponse
from geosync.secondary.partial_file import PartialFile
from geosync.wire import FILE_NOT_FOUND, REFUSALS

CHUNK = 1024 * 1024
RESUME_ATTEMPTS = 3
TMP_PREFIX = TEMP_PREFIX
_O_TMPFILE: int = getattr(os, "O_TMPFILE", 0)
#: Unnamed temp files need O_TMPFILE (Linux) and /proc to name them when they are done.
_UNNAMED = bool(_O_TMPFILE) and os.path.isdir("/proc/self/fd")
#: What open(2) answers where a file system has no unnamed files.
_NO_UNNAMED = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)
#: The primary's answers that speak for the whole site, not for the item: a proxy or load
#: balancer in front of it without an upstream, or the primary itself unable to serve (503).
SITE_LEVEL_STATUSES = frozenset({502, 503, 504})
#: What a write answers on a full file system, or past a quota.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class Download:
    """A finished download: its size and SHA-256."""

    path: Path
    bytes: int
    sha256: str


def download_blob(
    client: BlobClient,
    url: str,
    auth: Callable[[], dict[str, str]],
    dest: Path,
    *,
    expected_sha256: str | None = None,
    cancel: threading.Event | None = None,
) -> Download:
    """Download `url` to `dest` atomically; checks `expected_sha256` when given.

    `auth` makes fresh request headers for each (re)try, since tokens are short-lived.
    """
    with _storage_errors(dest), _temp_file(dest) as temp:
        for attempt in range(RESUME_ATTEMPTS):
            try:
                _stream(client, url, auth(), temp.partial, cancel)
                break
            except TransportFailure as exc:
                if attempt == RESUME_ATTEMPTS - 1:
                    raise PrimaryUnreachable(f"Connection to the primary failed: {exc}") from exc
        return _commit(temp, dest, expected_sha256)


def write_blob(
    dest: Path,
    chunks: Iterable[bytes],
    *,
    expected_sha256: str | None = None,
    cancel: threading.Event | None = None,
    sync_directory: bool = True,
) -> Download:
    """Write `chunks` to `dest` atomically, as `download_blob` does with a response body.

    Without `sync_directory` the rename is not yet durable: the caller must `sync_directory`
    of `dest.parent` before it records the file as synced (once for many files).
    """
    with _storage_errors(dest), _temp_file(dest) as temp:
        for chunk in chunks:
            if cancel is not None and cancel.is_set():
                raise Interrupted("Sync interrupted: the worker is shutting down")
            temp.partial.add(chunk)
        return _commit(temp, dest, expected_sha256, sync_directory)


@contextmanager
def _storage_errors(dest: Path) -> Iterator[None]:
    """A full disk (or quota) while writing `dest` is `StorageFull`: no retry soon fixes it."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _NO_SPACE:
            raise
        raise StorageFull(f"No space left on this secondary's storage for {dest}") from exc


@dataclass
class _Temp:
    """A temp file being written, and its name if it has one."""

    partial: PartialFile
    #: None for an unnamed (`O_TMPFILE`) file.
    path: Path | None
    #: Placed under its real name: nothing is left to remove.
    placed: bool = False


@contextmanager
def _temp_file(dest: Path) -> Iterator[_Temp]:
    """A new temp file in `dest`'s directory, gone on the way out unless placed at `dest`."""
    fd, path = _open_temp(dest.parent)
    handle = os.fdopen(fd, "wb")
    temp = _Temp(PartialFile(handle), path)
    try:
        with handle:
            try:
                yield temp
            finally:
                temp.partial.close()
    finally:
        if path is not None and not temp.placed:
            path.unlink(missing_ok=True)


def _open_temp(directory: Path) -> tuple[int, Path | None]:
    """An unnamed file in `directory` where the file system has them, else `tmp_<random>`.

    An unnamed file has no name to leave behind: if the worker dies mid-download, even by
    SIGKILL, the kernel frees it. A named one stays until something removes it.
    """
    try:
        return _open_in(directory)
    except FileNotFoundError:  # the first file of its directory (a syscall saved on the rest)
        directory.mkdir(parents=True, exist_ok=True)
        return _open_in(directory)


def _open_in(directory: Path) -> tuple[int, Path | None]:
    """The temp's descriptor, held (`hold_new`) so the stuck sweep leaves it alone."""
    if _UNNAMED:
        try:
            fd = os.open(directory, os.O_WRONLY | _O_TMPFILE, 0o666)
        except OSError as exc:
            if exc.errno not in _NO_UNNAMED:
                raise
        else:
            hold_new(fd, None)
            return fd, None
    while True:
        path = _temp_name(directory)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        if hold_new(fd, path):
            return fd, path
        os.close(fd)  # swept between its creation and its hold: take another name


def _place(temp: _Temp, dest: Path) -> None:
    """Give the written file its real name, atomically (an older copy is replaced)."""
    if temp.path is not None:
        os.replace(temp.path, dest)
        return
    try:
        _link(temp.partial.fd, dest)
    except FileExistsError:  # a new version of a copy: named for a moment, then renamed over it
        named = _temp_name(dest.parent)
        _link(temp.partial.fd, named)
        os.replace(named, dest)


def _link(fd: int, dest: Path) -> None:
    # linkat(2) with AT_SYMLINK_FOLLOW through /proc names an O_TMPFILE file without privileges;
    # os.link takes that path only when given a directory fd, which an absolute source ignores.
    os.link(f"/proc/self/fd/{fd}", dest, src_dir_fd=fd, follow_symlinks=True)


def _commit(
    temp: _Temp, dest: Path, expected_sha256: str | None, sync_directory_too: bool = True
) -> Download:
    """Make the written bytes durable and, if their hash is right, visible under `dest`."""
    partial = temp.partial
    partial.finish()
    actual = partial.digest.hexdigest()
    if expected_sha256 is not None and actual != expected_sha256:
        raise ChecksumMismatch("Downloaded file checksum mismatch")
    _place(temp, dest)
    temp.placed = True
    if sync_directory_too:
        sync_directory(dest.parent)
    return Download(dest, partial.written, actual)


def _stream(
    client: BlobClient,
    url: str,
    headers: dict[str, str],
    partial: PartialFile,
    cancel: threading.Event | None,
) -> None:
    if partial.written:
        headers = {**headers, "Range": f"bytes={partial.written}-"}
    with client.get(url, headers) as response:
        check_response(response)
        if partial.written and response.status_code == 200:
            partial.restart()
        if not partial.written and (length := response.header("content-length")):
            partial.expect(int(length) if length.isdigit() else 0)
        while partial.pull(response):
            if cancel is not None and cancel.is_set():
                raise Interrupted("Sync interrupted: the worker is shutting down")


def check_response(response: BlobResponse) -> None:
    """Raise the error a non-success answer of the primary means (401, 404, 5xx, ...)."""
    if response.status_code in (200, 206):
        return
    response.read()
    message = _json_message(response)
    code = _geo_code(response).lower()
    if response.status_code == 404:
        if code == FILE_NOT_FOUND:
            raise PrimaryMissing(f"File is missing on the primary: {message}")
        raise RecordGone(f"The primary does not know this record: {message}")
    if code in REFUSALS:
        raise PrimaryRefused(code, message)
    if response.status_code in (401, 403):
        raise AuthenticationError(f"The primary refused the request: {message}")
    if response.status_code in SITE_LEVEL_STATUSES:
        raise PrimaryUnreachable(f"The primary answered {response.status_code}: {message}")
    raise TransferError(f"The primary answered {response.status_code}: {message}")


def _geo_code(response: BlobResponse) -> str:
    try:
        return str(response.json().get("geo_code") or "")
    except (ValueError, AttributeError):
        return ""


def _json_message(response: BlobResponse) -> str:
    try:
        return str(response.json().get("message", ""))[:200]
    except ValueError:
        return response.text[:200]


def sync_directory(directory: Path) -> None:
    """Make the entries of `directory` (a rename into it) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
