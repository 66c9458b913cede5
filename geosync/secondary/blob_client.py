"""The HTTP client blob downloads use: keep-alive connections of the standard library's client.

A secondary backfilling small blobs makes hundreds of requests a second from its sync threads.
httpx spends about 0.8 ms of CPU on each (and its shared pool serialises the threads), the
standard library's `http.client` about 0.1 ms, so downloads use the latter; everything else
(status reports, the REST API) keeps httpx.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from geosync.errors import TransferError, TransportFailure

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
MAX_IDLE_PER_ORIGIN = 64

Origin = tuple[str, str, int]


class BlobResponse:
    """One response; the body is read in chunks, never held whole unless asked for."""

    def __init__(self, raw: http.client.HTTPResponse) -> None:
        self.raw = raw
        self.status_code = raw.status
        self._body: bytes | None = None

    def header(self, name: str) -> str | None:
        """A response header, or None."""
        return self.raw.getheader(name)

    def read_chunk(self, size: int) -> bytes:
        """Up to `size` bytes of the body (empty at its end).

        A body that ends before its Content-Length is a `TransportFailure`, never a short end:
        the standard library's client returns such an end as if the body were whole.
        """
        try:
            chunk = self.raw.read(size)
        except (OSError, http.client.HTTPException) as exc:
            raise TransportFailure(f"the body was cut short: {exc}") from exc
        self._check_end(len(chunk), size)
        return chunk

    def read_into(self, buffer: memoryview) -> int:
        """Fill `buffer` from the body as far as the body goes; 0 at its end.

        Reading into the caller's buffer spares a large download a new bytes object and a copy
        per piece. Cut short: `TransportFailure`, as `read_chunk`.
        """
        try:
            count = self.raw.readinto(buffer)
        except (OSError, http.client.HTTPException) as exc:
            raise TransportFailure(f"the body was cut short: {exc}") from exc
        self._check_end(count, len(buffer))
        return count

    def _check_end(self, got: int, asked: int) -> None:
        """Nothing read though bytes were asked for and the Content-Length promises more."""
        if not got and asked and self.raw.length:
            raise TransportFailure(f"the body was cut short: {self.raw.length} bytes missing")

    def iter_bytes(self, size: int) -> Iterator[bytes]:
        """The body in chunks of at most `size` bytes (cut short: `TransportFailure`)."""
        while chunk := self.read_chunk(size):
            yield chunk

    def read(self) -> bytes:
        """The whole body (for small error bodies); read once, then kept."""
        if self._body is None:
            self._body = b"".join(self.iter_bytes(64 * 1024))
        return self._body

    @property
    def text(self) -> str:
        """The body as text (read whole)."""
        return self.read().decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON; `ValueError` if it is not."""
        return json.loads(self.read())


class _Connection(http.client.HTTPConnection):
    """Connects within `CONNECT_TIMEOUT`, then waits up to `READ_TIMEOUT` per read."""

    def connect(self) -> None:
        super().connect()
        self.sock.settimeout(READ_TIMEOUT)


class _TLSConnection(http.client.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        self.sock.settimeout(READ_TIMEOUT)


class BlobClient:
    """Thread-safe GET client with a keep-alive pool per origin."""

    def __init__(self) -> None:
        self._idle: dict[Origin, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._closed = False
        #: Connections opened so far: with keep-alive working, far fewer than requests made.
        self.opened = 0

    @contextmanager
    def get(
        self, url: str, headers: dict[str, str], meanwhile: Callable[[], object] | None = None
    ) -> Iterator[BlobResponse]:
        """GET `url`; the response is valid inside the block, whose end frees the connection.

        `meanwhile` runs once the request is sent, before its answer is read: work the caller
        needs anyway is then done while the primary prepares the answer. It runs at most once,
        even when a stale kept-alive connection makes the request go again, and must not
        raise: its errors would read as the connection's.
        """
        origin, target = _split(url)
        conn, response = self._send(origin, target, headers, _once(meanwhile))
        reusable = False
        try:
            wrapped = BlobResponse(response)
            yield wrapped
            reusable = response.isclosed() and not response.will_close
        finally:
            if reusable:
                self._release(origin, conn)
            else:
                conn.close()

    def _send(
        self,
        origin: Origin,
        target: str,
        headers: dict[str, str],
        meanwhile: Callable[[], object] | None,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn, reused = self._acquire(origin)
        try:
            return conn, _exchange(conn, target, headers, meanwhile)
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            if not reused:
                raise TransportFailure(f"cannot reach {origin[1]}:{origin[2]}: {exc}") from exc
        except BaseException:  # from `meanwhile`: the answer will not be read
            conn.close()
            raise
        # A kept-alive connection the server had already closed: one fresh try.
        conn = self._new_connection(origin)
        try:
            return conn, _exchange(conn, target, headers, meanwhile)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, OSError | http.client.HTTPException):
                raise TransportFailure(f"cannot reach {origin[1]}:{origin[2]}: {exc}") from exc
            raise

    def _acquire(self, origin: Origin) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(origin)
            if idle:
                return idle.pop(), True
        return self._new_connection(origin), False

    def _new_connection(self, origin: Origin) -> http.client.HTTPConnection:
        with self._lock:
            self.opened += 1
        return _new_connection(origin)

    def _release(self, origin: Origin, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(origin, [])
            if not self._closed and len(idle) < MAX_IDLE_PER_ORIGIN:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close every idle connection; connections in use close when released."""
        with self._lock:
            self._closed = True
            idle = [conn for conns in self._idle.values() for conn in conns]
            self._idle.clear()
        for conn in idle:
            conn.close()


def _once(action: Callable[[], object] | None) -> Callable[[], object] | None:
    """`action`, made to run at most once."""
    if action is None:
        return None
    pending = [action]

    def run() -> None:
        if pending:
            pending.pop()()

    return run


def _exchange(
    conn: http.client.HTTPConnection,
    target: str,
    headers: dict[str, str],
    meanwhile: Callable[[], object] | None,
) -> http.client.HTTPResponse:
    """Send the request, run `meanwhile` (once, if given), then read the answer's head."""
    conn.request("GET", target, headers=headers)
    if meanwhile is not None:
        meanwhile()
    return conn.getresponse()


def _split(url: str) -> tuple[Origin, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TransferError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return (parts.scheme, parts.hostname, port), target


def _new_connection(origin: Origin) -> http.client.HTTPConnection:
    scheme, host, port = origin
    if scheme == "https":
        return _TLSConnection(host, port, timeout=CONNECT_TIMEOUT)
    return _Connection(host, port, timeout=CONNECT_TIMEOUT)
