"""Real HTTP servers for tests: uvicorn on 127.0.0.1, a free port, in a background thread."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from geosync.web.zero_copy import ZeroCopyHttpToolsProtocol


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve_in_thread(
    app: Any, host: str = "127.0.0.1", port: int | None = None, http: Any = None
) -> Iterator[str]:
    """Serve the ASGI `app` until the block ends; yields its base URL (with a trailing slash).

    `http` is uvicorn's HTTP protocol; by default the one `geosync serve` runs.
    """
    port = port or free_port(host)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        http=http or ZeroCopyHttpToolsProtocol,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"test server on {host}:{port} did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}/"
    finally:
        server.should_exit = True
        thread.join(10)


class HeldResponses:
    """A fault to inject into a served app: the body of every response whose path `match`es
    stops after `after` bytes until `release()` (or `limit` seconds), so a test can act while a
    transfer is surely still running instead of racing it. `wrap` is what
    `SitePair.primary_served` takes.
    """

    def __init__(
        self, match: Callable[[str], bool], after: int = 64 * 1024, limit: float = 30.0
    ) -> None:
        self.match = match
        self.after = after
        self.limit = limit
        self.holding = threading.Event()
        self._released = threading.Event()

    def release(self) -> None:
        """Let every held body go on, now and from then on."""
        self._released.set()

    def wrap(self, app: Any) -> Any:
        """`app` with this fault in front of it."""

        async def held_app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and self.match(scope["path"]):
                send = self._held(send)
            await app(scope, receive, send)

        return held_app

    def _held(self, send: Any) -> Any:
        sent = 0

        async def held_send(message: Any) -> None:
            nonlocal sent
            await send(message)
            if message["type"] != "http.response.body" or not message.get("more_body"):
                return
            sent += len(message.get("body", b""))
            if sent >= self.after and not self._released.is_set():
                self.holding.set()
                deadline = time.monotonic() + self.limit
                while not self._released.is_set() and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                self._released.set()  # held once at most: a forgotten release costs `limit`

        return held_send
