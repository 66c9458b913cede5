"""The download client: work done while the primary prepares its answer, and kept-alive
connections the server has closed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

import pytest

from geosync.secondary.blob_client import BlobClient
from tests.httputil import loopback_server


@dataclass
class Waiting:
    """What the test server does: answer only once `go` is set (or after 5 s, saying so),
    and, with `drop_after`, close each connection silently after answering."""

    drop_after: bool = False
    go: threading.Event = field(default_factory=threading.Event)
    requests: int = 0


@pytest.fixture
def waiting_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, Waiting]]:
    """A loopback HTTP/1.1 server that holds its answer until told to send it."""
    state = Waiting(drop_after=request.param)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            state.requests += 1
            body = b"in time" if state.go.wait(5) else b"too late"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            # No "Connection: close": the client keeps the connection for its next request.
            self.close_connection = state.drop_after

        def log_message(self, format: str, *args: object) -> None:
            pass

    with loopback_server(Handler) as url:
        yield url, state


@pytest.mark.parametrize("waiting_server", [False], indirect=True)
def test_meanwhile_runs_after_the_request_is_sent_and_before_the_answer(
    waiting_server: tuple[str, Waiting],
) -> None:
    url, state = waiting_server
    client = BlobClient()
    with client.get(url, {}, meanwhile=state.go.set) as response:
        assert response.read() == b"in time"
    assert state.requests == 1


@pytest.mark.parametrize("waiting_server", [True], indirect=True)
def test_meanwhile_runs_once_when_a_stale_connection_makes_the_request_go_again(
    waiting_server: tuple[str, Waiting],
) -> None:
    url, state = waiting_server
    client = BlobClient()
    state.go.set()
    with client.get(url, {}) as response:  # leaves a connection the server has closed
        assert response.read() == b"in time"
    calls: list[int] = []
    with client.get(url, {}, meanwhile=lambda: calls.append(1)) as response:
        assert response.read() == b"in time"
    assert calls == [1]
    assert client.opened == 2  # the stale one, then a fresh one for the second try
