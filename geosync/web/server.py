"""`geosync serve`'s HTTP server: uvicorn with geosync's zero-copy protocol, logging where it
listens, every request (`AccessLog`) and its shutdown as structured lines."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import uvicorn

from geosync.errors import ConfigurationError
from geosync.log import get_logger
from geosync.web.access_log import AccessLog

if TYPE_CHECKING:
    from geosync.app import Geo

log = get_logger("web")


class SiteServer(uvicorn.Server):
    """A uvicorn server that says, in geosync's log format, when it listens and when it stops."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start as uvicorn does, then log the address actually bound (port 0 included)."""
        await super().startup(sockets)
        if not self.started:
            return
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                log.info("listening", host=host, port=port, url=f"http://{shown}:{port}/")

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop taking connections, finish the requests under way, then say so."""
        log.info("shutting down", open_connections=len(self.server_state.connections))
        await super().shutdown(sockets)
        log.info("stopped")


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on `host:port`, or one line saying why there cannot be one (the port
    is taken, the address is not this machine's)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigurationError(f"cannot listen on {host}:{port}: {reason}") from None


def serve(geo: Geo, host: str, port: int) -> None:
    """Serve `geo`'s web application on `host:port` until SIGTERM or SIGINT."""
    from geosync.web.app import create_app
    from geosync.web.zero_copy import ZeroCopyHttpToolsProtocol

    sock = listen(host, port)

    config = uvicorn.Config(
        AccessLog(create_app(geo)),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        http=ZeroCopyHttpToolsProtocol,
    )
    SiteServer(config).run(sockets=[sock])
