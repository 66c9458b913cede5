"""Zero-copy bodies (`geosync.web.zero_copy`) through a real uvicorn server on 127.0.0.1, and the
blob response that uses them where they are offered."""

from __future__ import annotations

import http.client
import os
import socket
import struct
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from geosync.testing.servers import serve_in_thread
from geosync.web import zero_copy
from geosync.web.access_log import AccessLog
from geosync.web.geo_api import BlobResponse
from geosync.web.zero_copy import ZERO_COPY_SEND

MiB = 1024 * 1024
#: Larger than a loopback socket's buffers, so the send waits for the reader many times.
BIG = 8 * MiB


@pytest.fixture
def content(tmp_path: Path) -> tuple[Path, bytes]:
    """A file of random bytes and its content."""
    data = os.urandom(BIG)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    return path, data


def file_app(path: Path, seen: list[str]) -> Any:
    """An ASGI app sending `path` zero-copy: /whole, /slice (bytes 100-1123) or /short (one
    byte more promised than the file holds). Notes whether the extension was offered."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        offered = ZERO_COPY_SEND in scope.get("extensions", {})
        seen.append("offered" if offered else "missing")
        size = path.stat().st_size
        offset, count = {"/whole": (0, size), "/slice": (100, 1024), "/short": (0, size + 1)}[
            scope["path"]
        ]
        headers = [(b"content-length", str(count).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        with path.open("rb") as handle:
            if offered:
                message = {"file": handle, "offset": offset, "count": count}
                await send({"type": ZERO_COPY_SEND, **message})
            else:
                handle.seek(offset)
                await send({"type": "http.response.body", "body": handle.read(count)})

    return app


@dataclass
class Served:
    """`file_app` served on 127.0.0.1: its URL, the file's content, what each request saw."""

    base: str
    data: bytes
    seen: list[str]


@pytest.fixture
def served(content: tuple[Path, bytes]) -> Iterator[Served]:
    """The file served by `file_app` through geosync's server."""
    path, data = content
    seen: list[str] = []
    with serve_in_thread(file_app(path, seen)) as base:
        yield Served(base, data, seen)


def raw_socket(base: str) -> socket.socket:
    """A plain TCP connection to the server at `base`."""
    parts = urlsplit(base)
    assert parts.hostname is not None and parts.port is not None
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def connection(base: str) -> http.client.HTTPConnection:
    """A keep-alive connection to the server at `base`."""
    parts = urlsplit(base)
    assert parts.hostname is not None and parts.port is not None
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)


def fetch(conn: http.client.HTTPConnection, path: str) -> bytes:
    """The whole body of GET `path` on `conn`."""
    conn.request("GET", path)
    response = conn.getresponse()
    assert response.status == 200
    return response.read()


def test_a_file_larger_than_the_socket_buffers_arrives_whole(served: Served) -> None:
    conn = connection(served.base)
    conn.connect()
    # a small receive buffer: the server's send must wait for this reader again and again
    assert conn.sock is not None
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    assert fetch(conn, "/whole") == served.data
    conn.close()
    assert served.seen == ["offered"]


def test_a_slice_is_sent_and_the_connection_serves_the_next_request(served: Served) -> None:
    conn = connection(served.base)
    assert fetch(conn, "/slice") == served.data[100:1124]
    first_socket = conn.sock
    assert fetch(conn, "/whole") == served.data
    assert conn.sock is first_socket  # kept alive: the response ended where it should
    conn.close()
    assert served.seen == ["offered", "offered"]


def test_a_file_shorter_than_promised_ends_the_connection_not_the_server(served: Served) -> None:
    conn = connection(served.base)
    conn.request("GET", "/short")
    response = conn.getresponse()
    with pytest.raises(http.client.IncompleteRead):
        response.read()
    conn.close()
    assert fetch(connection(served.base), "/whole") == served.data


def test_a_client_gone_mid_body_leaves_the_server_serving(served: Served) -> None:
    with raw_socket(served.base) as sock:
        sock.sendall(b"GET /whole HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536)  # the send has started
        # close with a reset, as a client that crashed would
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    time.sleep(0.2)
    assert fetch(connection(served.base), "/whole") == served.data


def test_a_client_that_stops_reading_is_cut_off(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(zero_copy, "STALL_SECONDS", 0.5)
    with raw_socket(served.base) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(b"GET /whole HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(1.5)  # reads nothing while the server waits for it
        received = 0
        while chunk := sock.recv(1024 * 1024):  # what was in flight, then the end
            received += len(chunk)
    assert received < len(served.data)
    assert fetch(connection(served.base), "/whole") == served.data


def test_a_head_request_gets_the_headers_only(served: Served) -> None:
    conn = connection(served.base)
    conn.request("HEAD", "/whole")
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("content-length") == str(len(served.data))
    assert response.read() == b""
    assert fetch(conn, "/slice") == served.data[100:1124]  # and the connection goes on


def test_a_server_without_the_extension_does_not_offer_it(content: tuple[Path, bytes]) -> None:
    path, data = content
    seen: list[str] = []
    with serve_in_thread(file_app(path, seen), http="h11") as base:
        assert fetch(connection(base), "/whole") == data
    assert seen == ["missing"]


def test_a_uvicorn_whose_cycle_changed_gets_no_extension_and_still_serves(
    content: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A uvicorn release without some state the extension needs, simulated by asking for more.
    monkeypatch.setattr(zero_copy, "CYCLE_STATE", (*zero_copy.CYCLE_STATE, "gone_in_this_release"))
    path, data = content
    seen: list[str] = []
    with serve_in_thread(file_app(path, seen)) as base:
        conn = connection(base)
        assert fetch(conn, "/whole") == data
        assert fetch(conn, "/whole") == data
    assert seen == ["missing", "missing"]


def blob_app(path: Path, sent: list[str]) -> Any:
    """An ASGI app answering with a `BlobResponse` of `path`; records the messages' types."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return

        async def recording(message: MutableMapping[str, Any]) -> None:
            sent.append(message["type"])
            await send(message)

        handle = path.open("rb")
        await BlobResponse(handle, path, os.fstat(handle.fileno()))(scope, receive, recording)
        assert handle.closed

    return app


@pytest.mark.parametrize("server", [None, "h11"])
def test_a_blob_response_sends_zero_copy_where_offered(
    content: tuple[Path, bytes], server: str | None
) -> None:
    path, data = content
    sent: list[str] = []
    with serve_in_thread(blob_app(path, sent), http=server) as base:
        assert fetch(connection(base), "/") == data
    assert sent[0] == "http.response.start"
    if server is None:  # geosync's own server
        assert sent[1:] == [ZERO_COPY_SEND]
    else:
        assert set(sent[1:]) == {"http.response.body"}
        assert len(sent[1:]) >= BIG // MiB  # streamed in 1 MiB reads


def test_a_blob_response_behind_the_access_log_is_still_sent_zero_copy(
    content: tuple[Path, bytes],
) -> None:
    """`geosync serve` wraps the app in `AccessLog`: the extension passes through it."""
    path, data = content
    sent: list[str] = []
    with serve_in_thread(AccessLog(blob_app(path, sent))) as base:
        conn = connection(base)
        assert fetch(conn, "/") == data
        assert fetch(conn, "/") == data
    assert sent == ["http.response.start", ZERO_COPY_SEND] * 2


@pytest.mark.parametrize("server", [None, "h11"])
def test_a_blob_response_of_an_empty_file_ends(tmp_path: Path, server: str | None) -> None:
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    with serve_in_thread(blob_app(path, []), http=server) as base:
        conn = connection(base)
        assert fetch(conn, "/") == b""
        assert fetch(conn, "/") == b""  # and the connection serves the next request


def test_a_blob_response_streams_a_range(content: tuple[Path, bytes]) -> None:
    path, data = content
    sent: list[str] = []
    with serve_in_thread(blob_app(path, sent)) as base:
        conn = connection(base)
        conn.request("GET", "/", headers={"Range": f"bytes={BIG - 10}-"})
        response = conn.getresponse()
        assert response.status == 206
        assert response.read() == data[-10:]
    assert ZERO_COPY_SEND not in sent


@pytest.mark.parametrize("server", [None, "h11"])
def test_a_file_replaced_after_it_was_opened_is_sent_as_opened(
    content: tuple[Path, bytes], tmp_path: Path, server: str | None
) -> None:
    path, data = content

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        handle = path.open("rb")
        stat = os.fstat(handle.fileno())
        newer = tmp_path / "newer.bin"
        newer.write_bytes(b"newer and shorter")
        newer.replace(path)  # as a rewrite by rename does
        await BlobResponse(handle, path, stat)(scope, receive, send)

    with serve_in_thread(app, http=server) as base:
        assert fetch(connection(base), "/") == data
