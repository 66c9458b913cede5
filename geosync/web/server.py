"""`geosync serve`'s HTTP server: uvicorn with geosync's zero-copy protocol, logging where it
listens, every request (`AccessLog`) and its shutdown as structured lines."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

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


def serve(geo: Geo, host: str, port: int, sock: socket.socket | None = None) -> None:
    """Serve `geo`'s web application on `host:port` (or the listening `sock` given) until
    SIGTERM or SIGINT."""
    from geosync.web.app import create_app
    from geosync.web.zero_copy import ZeroCopyHttpToolsProtocol

    if sock is None:
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


#: A web process that exits with an error of its own (not killed by a signal) within this many
#: seconds of its start is a start-up failure: the others are stopped and `geosync serve` exits
#: with its code instead of starting it again.
STARTUP_WINDOW = 10.0
#: Seconds before a web process that exited later is replaced.
RESTART_PAUSE = 1.0


class ProcessGroup:
    """`geosync serve --processes N`: one listening socket, N forked web processes sharing it
    (the kernel hands each new connection to one of them), each replaced if it dies; SIGTERM
    or SIGINT stop them all."""

    def __init__(self, start: Callable[[socket.socket], None], sock: socket.socket) -> None:
        self.start = start
        self.sock = sock
        self.children: dict[int, float] = {}
        self.stopping = False

    def run(self, processes: int) -> int:
        """Start `processes` web processes and supervise them; returns the exit code."""
        previous = {
            sig: signal.signal(sig, self._signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        code = 0
        try:
            for _ in range(processes):
                self._spawn()
            log.info("web processes started", processes=processes, pids=sorted(self.children))
            while self.children:
                pid, status = os.wait()
                started = self.children.pop(pid, None)
                if started is None or self.stopping:
                    continue
                exit_code = os.waitstatus_to_exitcode(status)
                if exit_code > 0 and time.monotonic() - started < STARTUP_WINDOW:
                    log.error("web process failed to start", pid=pid, exit_code=exit_code)
                    code = exit_code if exit_code > 0 else 1
                    self._stop_all()
                    continue
                log.warning("web process exited, starting another", pid=pid, exit_code=exit_code)
                time.sleep(RESTART_PAUSE)
                if not self.stopping:
                    self._spawn()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code

    def _spawn(self) -> None:
        pid = os.fork()
        if pid == 0:
            self._child()
        self.children[pid] = time.monotonic()

    def _child(self) -> NoReturn:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        code = 1
        try:
            self.start(self.sock)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("web process crashed")
        finally:
            os._exit(code)

    def _signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal received, stopping the web processes", signal=signal.Signals(signum).name)
        self._stop_all()

    def _stop_all(self) -> None:
        self.stopping = True
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
