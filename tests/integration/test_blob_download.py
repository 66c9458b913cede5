"""One blob download: hashed while written, large files past the page cache, resumed when cut,
and never visible (nor left behind) under a name until it is whole."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from geosync.errors import ChecksumMismatch, TransportFailure
from geosync.secondary import transfer
from geosync.secondary.blob_client import BlobClient
from geosync.secondary.partial_file import BLOCK, DIRECT_MIN, PartialFile
from geosync.secondary.transfer import TMP_PREFIX, download_blob, write_blob
from tests.httputil import loopback_server

LARGE = DIRECT_MIN + 3 * BLOCK + 4321  # direct blocks and a tail that is not a whole block


def direct_io_works(directory: Path) -> bool:
    """Whether files in `directory` can be opened for direct I/O (not on every file system)."""
    flag = getattr(os, "O_DIRECT", 0)
    probe = directory / "probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | flag, 0o600)
    except OSError as exc:
        assert exc.errno == errno.EINVAL
        return False
    os.close(fd)
    probe.unlink()
    return bool(flag)


def write(path: Path, chunks: list[bytes], size: int) -> PartialFile:
    """Write `chunks` through a PartialFile told the body's `size`, then finish it."""
    with path.open("wb") as handle:
        partial = PartialFile(handle)
        partial.expect(size)
        for chunk in chunks:
            partial.add(chunk)
        partial.finish()
        partial.close()
    return partial


def pieces(data: bytes, sizes: list[int]) -> list[bytes]:
    """`data` cut into chunks of the given sizes, cycling, as a socket hands them out."""
    out, at, n = [], 0, 0
    while at < len(data):
        out.append(data[at : at + sizes[n % len(sizes)]])
        at += sizes[n % len(sizes)]
        n += 1
    return out


def test_a_large_file_bypasses_the_page_cache_and_keeps_every_byte(tmp_path: Path) -> None:
    data = os.urandom(LARGE)
    partial = write(tmp_path / "large", pieces(data, [70_001, BLOCK, 1, 3 * BLOCK + 17]), len(data))
    assert (tmp_path / "large").read_bytes() == data
    assert partial.digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert partial.written == len(data)
    assert not partial.direct  # left for the tail, as finish() must


def test_direct_io_is_taken_where_the_file_system_has_it(tmp_path: Path) -> None:
    with (tmp_path / "f").open("wb") as handle:
        partial = PartialFile(handle)
        partial.expect(DIRECT_MIN)
        assert partial.direct == direct_io_works(tmp_path)
        partial.close()


def test_a_small_file_stays_in_the_page_cache(tmp_path: Path) -> None:
    data = os.urandom(DIRECT_MIN - 1)
    with (tmp_path / "small").open("wb") as handle:
        partial = PartialFile(handle)
        partial.expect(len(data))
        assert not partial.direct
        partial.add(data)
        partial.finish()
    assert (tmp_path / "small").read_bytes() == data


def test_a_restart_forgets_direct_blocks_already_written(tmp_path: Path) -> None:
    first, second = os.urandom(LARGE), os.urandom(LARGE - 999)
    with (tmp_path / "f").open("wb") as handle:
        partial = PartialFile(handle)
        partial.expect(len(first))
        for chunk in pieces(first[: 2 * BLOCK + 5], [BLOCK // 3]):
            partial.add(chunk)
        partial.restart()
        for chunk in pieces(second, [BLOCK + 1]):
            partial.add(chunk)
        partial.finish()
        partial.close()
    assert (tmp_path / "f").read_bytes() == second
    assert partial.digest.hexdigest() == hashlib.sha256(second).hexdigest()


class CutBody:
    """A response body that fails after `good` bytes: the fault a dropped connection is."""

    def __init__(self, data: bytes, good: int) -> None:
        self.data, self.good, self.at = data, good, 0

    def read_chunk(self, size: int) -> bytes:
        if self.at == len(self.data):
            return b""
        if self.at >= self.good:
            raise TransportFailure("connection reset")
        chunk = self.data[self.at : min(self.good, self.at + size)]
        self.at += len(chunk)
        return chunk

    def read_into(self, buffer: memoryview) -> int:
        if self.at == len(self.data):
            return 0
        if self.at >= self.good:
            buffer[:10] = b"x" * 10  # what a failing read may have put there: not counted
            raise TransportFailure("connection reset")
        count = min(len(buffer), self.good - self.at, 300_000)
        buffer[:count] = self.data[self.at : self.at + count]
        self.at += count
        return count


def drain(partial: PartialFile, body: CutBody) -> None:
    """Pull `body` into `partial` to its end (a bounded number of pulls)."""
    for _ in range(len(body.data) // 1000 + 2):
        if not partial.pull(body):
            return
    raise AssertionError("the body never ended")


def test_a_body_failing_mid_block_keeps_what_came_before(tmp_path: Path) -> None:
    data = os.urandom(LARGE)
    with (tmp_path / "f").open("wb") as handle:
        partial = PartialFile(handle)
        partial.expect(len(data))
        with pytest.raises(TransportFailure):
            drain(partial, CutBody(data, BLOCK + 500_000))
        assert partial.written == BLOCK + 500_000  # where the resume starts
        drain(partial, CutBody(data[partial.written :], len(data) - partial.written))
        partial.finish()
        partial.close()
    assert (tmp_path / "f").read_bytes() == data
    assert partial.digest.hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_download_given_up_mid_block_still_closes(tmp_path: Path) -> None:
    with (tmp_path / "f").open("wb") as handle:
        partial = PartialFile(handle)
        partial.expect(LARGE)
        try:
            partial.pull(CutBody(b"never", 0))
        except TransportFailure:
            partial.close()  # as the temp file's cleanup does, the traceback still alive
        assert partial.written == 0


class Flaky:
    """What the test server does: cut the first answer short, and honour Range or not."""

    def __init__(self, data: bytes, honour_range: bool) -> None:
        self.data = data
        self.honour_range = honour_range
        self.requests: list[str | None] = []


@pytest.fixture
def flaky_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, Flaky]]:
    """A loopback HTTP server whose first answer stops after 40% of the body (a fault on
    purpose); later answers are whole, from the Range start when `honour_range`."""
    state = Flaky(os.urandom(LARGE), honour_range=request.param)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ranged = self.headers.get("Range")
            state.requests.append(ranged)
            start = int(ranged[6:-1]) if ranged and state.honour_range else 0
            body = state.data[start:]
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if len(state.requests) == 1:
                self.wfile.write(body[: len(body) * 2 // 5])
                self.close_connection = True
                return
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with loopback_server(Handler) as url:
        yield url, state


@pytest.mark.parametrize("flaky_server", [True, False], ids=["ranged", "whole"], indirect=True)
def test_a_cut_download_resumes_and_lands_whole(
    tmp_path: Path, flaky_server: tuple[str, Flaky]
) -> None:
    url, state = flaky_server
    dest = tmp_path / "a" / "blob.bin"
    expected = hashlib.sha256(state.data).hexdigest()
    got = download_blob(BlobClient(), url, dict, dest, expected_sha256=expected)
    assert dest.read_bytes() == state.data
    assert (got.bytes, got.sha256) == (len(state.data), expected)
    assert state.requests[0] is None and state.requests[1] is not None
    assert state.requests[1].startswith("bytes=")
    assert [p.name for p in dest.parent.iterdir()] == ["blob.bin"]


@pytest.mark.parametrize("flaky_server", [True], ids=["ranged"], indirect=True)
def test_a_wrong_checksum_leaves_no_file_at_all(
    tmp_path: Path, flaky_server: tuple[str, Flaky]
) -> None:
    url, _ = flaky_server
    dest = tmp_path / "blob.bin"
    with pytest.raises(ChecksumMismatch):
        download_blob(BlobClient(), url, dict, dest, expected_sha256="0" * 64)
    assert not dest.exists()
    assert not list(tmp_path.glob(f"{TMP_PREFIX}*"))


def written_watching(dest: Path, parts: list[bytes]) -> list[str]:
    """Write `parts` to `dest` with `write_blob`; the directory's names seen mid-write."""
    seen: list[str] = []

    def chunks() -> Iterator[bytes]:
        for n, part in enumerate(parts):
            if n:
                seen.extend(sorted(p.name for p in dest.parent.iterdir()))
            yield part

    write_blob(dest, chunks())
    return seen


def test_a_file_being_written_has_no_name_at_all(tmp_path: Path) -> None:
    # Unnamed (O_TMPFILE, as on ext4, xfs, btrfs and tmpfs): a worker killed mid-write leaves
    # nothing behind for anyone to clean up.
    dest = tmp_path / "new" / "blob.bin"
    assert written_watching(dest, [b"a" * 1000, b"b" * 1000]) == []
    assert dest.read_bytes() == b"a" * 1000 + b"b" * 1000
    assert [p.name for p in dest.parent.iterdir()] == ["blob.bin"]


@pytest.fixture(params=[True, False], ids=["unnamed", "named"])
def old_copy(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, bool]:
    """A copy already in place, on a file system with unnamed temp files or (as if) without."""
    monkeypatch.setattr(transfer, "_UNNAMED", request.param)
    dest = tmp_path / "blob.bin"
    dest.write_bytes(b"old")
    return dest, request.param


def test_a_new_version_replaces_the_old_copy_whole_and_leaves_nothing_else(
    old_copy: tuple[Path, bool],
) -> None:
    dest, unnamed = old_copy
    seen = written_watching(dest, [b"new ", b"version"])
    assert dest.read_bytes() == b"new version"
    assert [p.name for p in dest.parent.iterdir()] == ["blob.bin"]
    if unnamed:
        assert seen == ["blob.bin"]
    else:  # a file system without unnamed files: a named temp file, renamed into place
        assert len(seen) == 2 and seen[0] == "blob.bin" and seen[1].startswith(TMP_PREFIX)


def test_a_wrong_checksum_leaves_the_old_copy_and_nothing_else(
    old_copy: tuple[Path, bool],
) -> None:
    dest, _ = old_copy
    with pytest.raises(ChecksumMismatch):
        write_blob(dest, [b"corrupt"], expected_sha256=hashlib.sha256(b"good").hexdigest())
    assert dest.read_bytes() == b"old"
    assert [p.name for p in dest.parent.iterdir()] == ["blob.bin"]
