"""A TCP forwarder on 127.0.0.1 for injecting network faults: a database or a site that goes
away for everyone connected through it, without touching the server behind it."""

from __future__ import annotations

import socket
import threading
from contextlib import suppress

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `upstream`; `close()` is the upstream going away for
    everyone connected through it (connections cut, new ones refused), and a new `TcpProxy` on
    the same port is it coming back."""

    def __init__(self, port: int, upstream: tuple[str, int]) -> None:
        self.port = port
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", port))
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name=f"tcp-proxy-{port}", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        for sock in (source, target):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop listening and cut every connection."""
        with suppress(OSError):  # wakes the thread blocked in accept(), which close() would not
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self._lock:
            for sock in self._sockets:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()
