"""Zero-copy response bodies: ASGI's `http.response.zerocopysend` extension, for uvicorn.

Streaming a large blob as ordinary ASGI body messages reads every MiB of the file into a new
buffer on a worker thread and writes it to the socket: two copies through user space and a
thread hop per MiB. With this extension the kernel moves the file's pages to the socket itself
(`sendfile`); on a 20 x 50 MiB backfill the primary's CPU per gigabyte served fell from about
0.5 s to 0.15 s, which on a small machine is CPU the secondary's hashing gets instead.

uvicorn does not offer the extension, so `ZeroCopyHttpToolsProtocol` (its httptools protocol,
which `geosync serve` runs) adds it on plain TCP connections: never over TLS, where every byte
must pass through the TLS layer. An app checks `scope["extensions"]` and sends ordinary bodies
where the extension is missing (another server, a TLS connection).

The send waits on a thread of its own pool, with its own duplicates of the connection's and the
file's descriptors: if the event loop closes the connection or the app its file meanwhile, the
thread can never send another file or into a newer connection that reused a number. A client
that stops reading for `STALL_SECONDS` is cut off.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import select
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import is_ssl

from geosync.log import get_logger

log = get_logger("web")

ZERO_COPY_SEND = "http.response.zerocopysend"
#: A send making no progress for this long (the client stopped reading) is given up.
STALL_SECONDS = 60.0
#: Zero-copy sends under way at once in one process; more wait for a thread.
MAX_SENDS = 64
#: How often a waiting send looks at whether it should give up.
_POLL_SECONDS = 0.25


def send_file(
    sock_fd: int, file_fd: int, offset: int, count: int, stop: threading.Event | None = None
) -> int:
    """Send `count` bytes of `file_fd` from `offset` to the non-blocking socket `sock_fd`.

    Returns the bytes sent: fewer than `count` when the file ended early, the client stalled
    for `STALL_SECONDS` or `stop` was set. A broken connection raises `OSError`.
    """
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    sent = 0
    last_progress = time.monotonic()
    while sent < count and not (stop is not None and stop.is_set()):
        try:
            n = os.sendfile(sock_fd, file_fd, offset + sent, count - sent)
        except BlockingIOError:
            if time.monotonic() - last_progress > STALL_SECONDS:
                break
            poller.poll(_POLL_SECONDS * 1000)
            continue
        if n == 0:  # the file is shorter than promised
            break
        sent += n
        last_progress = time.monotonic()
    return sent


def _send_owned(fds: tuple[int, int], offset: int, count: int, stop: threading.Event) -> int:
    """`send_file` on descriptors this thread owns and closes."""
    try:
        return send_file(fds[0], fds[1], offset, count, stop)
    finally:
        for fd in fds:
            os.close(fd)


@functools.cache
def _senders() -> ThreadPoolExecutor:
    """The threads zero-copy sends wait in: their own, so that slow readers never take the
    threads the app's other requests run on."""
    return ThreadPoolExecutor(MAX_SENDS, thread_name_prefix="zero-copy-send")


class ZeroCopyCycle(RequestResponseCycle):
    """uvicorn's request/response cycle, with `http.response.zerocopysend` bodies."""

    async def send(self, message: Any) -> None:
        """Send one ASGI message; zero-copy bodies here, everything else as uvicorn does."""
        if message["type"] != ZERO_COPY_SEND:
            await super().send(message)
            return
        if not self.response_started or self.response_complete:
            raise RuntimeError(f"'{ZERO_COPY_SEND}' outside a started, unfinished response")
        if self.chunked_encoding:
            raise RuntimeError(f"'{ZERO_COPY_SEND}' needs a response with a Content-Length")
        if not await self._drained():
            return
        file: BinaryIO = message["file"]
        offset = message.get("offset")
        start = file.tell() if offset is None else int(offset)
        count = message.get("count")
        if count is None:
            count = os.fstat(file.fileno()).st_size - start
        if self.scope["method"] == "HEAD":  # headers only, as uvicorn answers HEAD
            count = self.expected_content_length = 0
        if count > self.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        sent = await self._send_file(file.fileno(), start, count)
        self.expected_content_length -= sent
        if offset is None:
            file.seek(start + sent)
        if sent < count:  # cut off, stalled or the file shrank: the response cannot be whole
            self.transport.close()
            return
        if not message.get("more_body", False):
            self._complete()

    async def _drained(self) -> bool:
        """Wait until everything written before (the headers) has left; False if disconnected."""
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        deadline = time.monotonic() + STALL_SECONDS
        while self.transport.get_write_buffer_size() and not self.disconnected:
            if time.monotonic() > deadline:
                self.transport.close()
                return False
            await asyncio.sleep(0.001)
        return not self.disconnected

    async def _send_file(self, file_fd: int, offset: int, count: int) -> int:
        if count <= 0:
            return 0
        sock = self.transport.get_extra_info("socket")
        stop = threading.Event()
        # The thread gets descriptors of its own, and closes them: neither the loop closing the
        # connection nor the app closing the file can hand their numbers to something else
        # while it still sends, even if this task is cancelled.
        fds = (os.dup(sock.fileno()), os.dup(file_fd))
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(_senders(), _send_owned, fds, offset, count, stop)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            stop.set()
            raise
        except OSError as exc:
            if not isinstance(exc, (BrokenPipeError, ConnectionResetError)):
                log.warning("zero-copy send failed", error=str(exc))
            self.transport.close()
            return 0

    def _complete(self) -> None:
        """The end of the response, as uvicorn ends one after its last body message."""
        if self.expected_content_length != 0:
            raise RuntimeError("Response content shorter than Content-Length")
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()


#: The state of uvicorn's cycle that `ZeroCopyCycle` reads and writes; not a public API.
CYCLE_STATE = (
    "scope",
    "transport",
    "flow",
    "keep_alive",
    "message_event",
    "on_response",
    "disconnected",
    "response_started",
    "response_complete",
    "chunked_encoding",
    "expected_content_length",
)


def missing_cycle_state(cycle: object) -> list[str]:
    """The names of `CYCLE_STATE` that `cycle` lacks: a uvicorn that changed its internals."""
    return [name for name in CYCLE_STATE if not hasattr(cycle, name)]


@functools.cache
def _warn_unfit(missing: tuple[str, ...]) -> None:
    log.warning("zero-copy sends off: this uvicorn's cycle lacks", missing=list(missing))


class ZeroCopyHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, offering `http.response.zerocopysend` on plain TCP, and
    answering a request it cannot parse in JSON, as the application answers every error.

    A uvicorn whose request cycle no longer has the state the extension needs gets no
    extension (and one warning): blobs are then streamed, slower but whole.
    """

    def send_400_response(self, msg: str) -> None:
        """Answer a request httptools cannot parse as every geosync error is answered: JSON
        `{"message": ...}` (uvicorn's own is plain text)."""
        body = json.dumps({"message": f"400 Bad request - {msg}"}).encode()
        content = [STATUS_LINE[400]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()

    def on_headers_complete(self) -> None:
        """Make the new request's cycle able to send files, then advertise the extension; the
        app's task, created but not yet run, sees the extension in its scope."""
        super().on_headers_complete()
        cycle = getattr(self, "cycle", None)
        if type(cycle) is not RequestResponseCycle or cycle.scope is not self.scope:
            return  # an upgrade, or no new cycle
        if is_ssl(self.transport):
            return
        missing = missing_cycle_state(cycle)
        if missing:
            _warn_unfit(tuple(missing))
            return
        cycle.__class__ = ZeroCopyCycle
        self.scope.setdefault("extensions", {})[ZERO_COPY_SEND] = {}
