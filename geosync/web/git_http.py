"""The primary's read-only git smart HTTP endpoint: ``git http-backend`` run as a CGI subprocess.

Only upload-pack (clone and fetch) is served; pushes are refused before git ever runs. Request and
response bodies are streamed both ways, so a pack never sits whole in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

__all__ = ["git_http_backend"]

logger = logging.getLogger(__name__)

UPLOAD_PACK = "git-upload-pack"
RECEIVE_PACK = "git-receive-pack"
_READ_SIZE = 64 * 1024
_MAX_HEADER_BYTES = 64 * 1024
_STDERR_KEEP = 4096
_EXIT_GRACE = 10.0
"""Seconds git may take to exit after its output ended before it is killed."""

_GIT_PROTOCOL = re.compile(r"^[A-Za-z0-9=:._-]{1,256}$")
_DROPPED_HEADERS = frozenset({"status", "content-length", "transfer-encoding", "connection"})
_INHERITED_ENV = ("PATH", "HOME", "XDG_CONFIG_HOME", "TMPDIR", "LANG", "LC_ALL")

_backend: str | None = None


def _message(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """Return the JSON error body every geosync endpoint uses."""
    return JSONResponse({"message": message}, status_code=status, headers=headers)


async def git_http_backend(request: Request, repo_dir: Path, path_info: str) -> Response:
    """Serve the read-only smart HTTP request ``path_info`` (after ``<id>.git``) for ``repo_dir``.

    Upload-pack only: ``GET /info/refs?service=git-upload-pack`` and ``POST /git-upload-pack``.
    """
    path = path_info if path_info.startswith("/") else "/" + path_info
    service = request.query_params.get("service")
    if RECEIVE_PACK in path or service == RECEIVE_PACK:
        return _message(403, "Pushing to a Geo endpoint is not allowed")
    if path == "/info/refs" and service == UPLOAD_PACK:
        method = "GET"
    elif path == "/git-upload-pack" and not service:
        method = "POST"
    else:
        return _message(404, "404 Not Found")
    if request.method != method:
        return _message(405, "405 Method Not Allowed", {"Allow": method})
    if not repo_dir.is_dir():
        return _message(404, "Repository not found")

    try:
        process = await asyncio.create_subprocess_exec(
            await _backend_path(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_cgi_env(request, repo_dir, path),
            start_new_session=True,  # one process group: killing it also ends upload-pack
        )
    except (OSError, RuntimeError) as exc:
        logger.error("Cannot start git http-backend: %s", exc)
        return _message(503, "git is not available on this site")
    cgi = _CGIProcess(process, request)
    try:
        status, headers = await cgi.read_headers()
    except _BadGateway as exc:
        await cgi.close()
        logger.warning("git http-backend failed for %s: %s", repo_dir, exc)
        return _message(502, "The git backend did not answer")
    except BaseException:
        await cgi.close()
        raise
    if status >= 400:  # git's own refusals (not a repository, wrong content type) as JSON too
        detail = (await cgi.read_some(_STDERR_KEEP)).decode("utf-8", "replace").strip()
        await cgi.close()
        if status == 404:
            return _message(404, "Repository not found")
        return _message(status, detail or f"git http-backend answered {status}")
    return _CGIResponse(cgi, status, headers)


async def _backend_path() -> str:
    """Return the path of ``git-http-backend`` in ``$(git --exec-path)``, looked up once."""
    global _backend
    if _backend is None:
        process = await asyncio.create_subprocess_exec(
            "git", "--exec-path", stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
        )
        stdout, _ = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError("git --exec-path failed")
        _backend = os.path.join(stdout.decode().strip(), "git-http-backend")
    return _backend


def _cgi_env(request: Request, repo_dir: Path, path: str) -> dict[str, str]:
    """Build the CGI environment: a minimal inherited set plus the request's CGI variables."""
    env = {key: os.environ[key] for key in _INHERITED_ENV if key in os.environ}
    env.update(
        GATEWAY_INTERFACE="CGI/1.1",
        SERVER_PROTOCOL="HTTP/" + request.scope.get("http_version", "1.1"),
        REQUEST_METHOD=request.method,
        QUERY_STRING=request.url.query,
        GIT_PROJECT_ROOT=str(repo_dir.parent),
        PATH_INFO="/" + repo_dir.name + path,
        GIT_HTTP_EXPORT_ALL="1",
        # Defence in depth: no push and no dumb-protocol file serving, whatever the config says.
        GIT_CONFIG_COUNT="2",
        GIT_CONFIG_KEY_0="http.receivepack",
        GIT_CONFIG_VALUE_0="false",
        GIT_CONFIG_KEY_1="http.getanyfile",
        GIT_CONFIG_VALUE_1="false",
    )
    if request.client is not None:
        env["REMOTE_ADDR"] = request.client.host
    content_type = request.headers.get("content-type")
    if content_type:
        env["CONTENT_TYPE"] = content_type
    content_length = request.headers.get("content-length")
    if content_length and content_length.isdigit():
        env["CONTENT_LENGTH"] = content_length
    content_encoding = request.headers.get("content-encoding")
    if content_encoding:
        env["HTTP_CONTENT_ENCODING"] = content_encoding
    git_protocol = request.headers.get("git-protocol")
    if git_protocol and _GIT_PROTOCOL.match(git_protocol):
        env["GIT_PROTOCOL"] = git_protocol  # without it git answers in protocol v0
        env["HTTP_GIT_PROTOCOL"] = git_protocol
    return env


class _BadGateway(Exception):
    """git http-backend ended or misbehaved before it sent a complete CGI header block."""


class _CGIProcess:
    """One running ``git http-backend``: feeds it the request body and reads its CGI output."""

    def __init__(self, process: asyncio.subprocess.Process, request: Request) -> None:
        self._process = process
        self._stderr = bytearray()
        self._leftover = b""
        self._finished = False
        self._closed = False
        self._pump = asyncio.create_task(self._pump_request(request))
        self._drain = asyncio.create_task(self._drain_stderr())

    async def _pump_request(self, request: Request) -> None:
        """Stream the request body into git's stdin, then kill git if the client disconnects."""
        stdin = self._process.stdin
        assert stdin is not None
        writable = True
        try:
            async for chunk in request.stream():
                if chunk and writable:
                    try:
                        stdin.write(chunk)
                        await stdin.drain()
                    except (BrokenPipeError, ConnectionResetError):
                        writable = False  # git stopped reading; its answer says why
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                stdin.close()
            while (await request.receive())["type"] != "http.disconnect":
                pass
        except ClientDisconnect:
            pass
        except Exception:  # a body already consumed elsewhere, a server quirk: never leak git
            logger.exception("Cannot stream the request body to git http-backend")
        if not self._finished:
            self.kill()

    async def _drain_stderr(self) -> None:
        """Keep the tail of git's stderr for the log without letting the pipe fill up."""
        stderr = self._process.stderr
        assert stderr is not None
        while chunk := await stderr.read(_READ_SIZE):
            self._stderr += chunk
            del self._stderr[:-_STDERR_KEEP]

    async def read_headers(self) -> tuple[int, dict[str, str]]:
        """Read the CGI header block; return the status and the headers to send on."""
        stdout = self._process.stdout
        assert stdout is not None
        data = b""
        while True:
            ends = [(data.find(sep), sep) for sep in (b"\r\n\r\n", b"\n\n")]
            found = [(index, sep) for index, sep in ends if index >= 0]
            if found:
                index, sep = min(found)
                head, self._leftover = data[:index], data[index + len(sep) :]
                break
            if len(data) > _MAX_HEADER_BYTES:
                raise _BadGateway("CGI header block too long")
            chunk = await stdout.read(_READ_SIZE)
            if not chunk:
                await asyncio.wait({self._drain}, timeout=1.0)  # for the log's sake
                raise _BadGateway(self.stderr_tail() or "no output")
            data += chunk

        status = 200
        headers: dict[str, str] = {}
        for raw in head.split(b"\n"):
            line = raw.rstrip(b"\r").decode("latin-1")
            name, colon, value = line.partition(":")
            if not colon:
                raise _BadGateway(f"malformed CGI header line {line!r}")
            name, value = name.strip(), value.strip()
            if name.lower() == "status":
                try:
                    status = int(value.split()[0])
                except (IndexError, ValueError) as exc:
                    raise _BadGateway(f"malformed CGI status {value!r}") from exc
            elif name.lower() not in _DROPPED_HEADERS:
                headers[name] = value
        return status, headers

    async def read_some(self, limit: int) -> bytes:
        """Read up to ``limit`` bytes of the body after the header block (for short error pages)."""
        stdout = self._process.stdout
        assert stdout is not None
        data, self._leftover = self._leftover[:limit], self._leftover[limit:]
        while len(data) < limit and (chunk := await stdout.read(limit - len(data))):
            data += chunk
        return data

    async def body(self) -> AsyncIterator[bytes]:
        """Yield git's output after the header block, chunk by chunk, as it arrives."""
        stdout = self._process.stdout
        assert stdout is not None
        if self._leftover:
            yield self._leftover
            self._leftover = b""
        while chunk := await stdout.read(_READ_SIZE):
            yield chunk
        self._finished = True

    def kill(self) -> None:
        """Kill git http-backend and the upload-pack it started (same process group)."""
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)

    def stderr_tail(self) -> str:
        """Return the end of git's stderr, decoded, on one line."""
        text = self._stderr.decode("utf-8", "replace")
        return " | ".join(line.strip() for line in text.splitlines() if line.strip())

    async def close(self) -> None:
        """Stop feeding git, make sure it has exited (killing it if needed) and reap it."""
        if self._closed:
            return
        self._closed = True
        if not self._finished:
            self.kill()  # synchronous, so git dies even if the awaits below are cancelled
        with anyio.CancelScope(shield=True):
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            try:
                await asyncio.wait_for(self._process.wait(), _EXIT_GRACE)
            except TimeoutError:
                self.kill()
                await self._process.wait()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._drain, _EXIT_GRACE)
        if self._finished and self._process.returncode != 0:
            logger.warning(
                "git http-backend exited with %s: %s",
                self._process.returncode,
                self.stderr_tail()[-1000:],
            )


class _CGIResponse(StreamingResponse):
    """Streams git's output and always cleans the subprocess up, even when the client leaves.

    Unlike `StreamingResponse` it never reads ``receive`` itself: the request pump owns it, so a
    body still arriving while the answer starts is not swallowed by a disconnect listener.
    """

    def __init__(self, cgi: _CGIProcess, status_code: int, headers: dict[str, str]) -> None:
        super().__init__(cgi.body(), status_code=status_code, headers=headers)
        self._cgi = cgi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the status, headers and streamed body, then reap git."""
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            async for chunk in self.body_iterator:
                assert isinstance(chunk, bytes)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away (ASGI 2.4 servers raise on send); nothing left to do
        finally:
            await self._cgi.close()
