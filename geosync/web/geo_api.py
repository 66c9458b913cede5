"""Node-to-node endpoints on the primary: blob retrieval and read-only git smart HTTP.

Every request carries a `GL-Geo` JWT scoped to exactly what it asks for; authentication runs
before anything about the item is revealed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from itertools import chain
from pathlib import Path
from typing import Any, BinaryIO

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from geosync.app import Geo
from geosync.auth import authenticate_node
from geosync.errors import AuthenticationError, NotFound
from geosync.replicator import Replicator
from geosync.web.blob_batch import MAX_RECORD_ID, BatchSource, parse_ids
from geosync.web.git_http import RECEIVE_PACK, UPLOAD_PACK, git_http_backend
from geosync.web.openapi import NODE_SECURITY, GeoRefusal, Message, errors
from geosync.web.served_files import Refusal, open_served, open_served_object
from geosync.web.zero_copy import ZERO_COPY_SEND
from geosync.wire import (
    BATCH_MEDIA_TYPE,
    FILE_NOT_FOUND,
    GEO_API,
    MAX_BATCH_IDS,
    PING_PATH,
    repository_base_path,
)

router = APIRouter(prefix=GEO_API, tags=["geo"])
BLOB_MEDIA_TYPE = "application/octet-stream"
#: Blobs up to this size are read whole and sent in one body; larger ones are streamed.
WHOLE_READ_LIMIT = 1024 * 1024


def _unauthorized(exc: AuthenticationError) -> JSONResponse:
    return JSONResponse({"message": f"401 Unauthorized - {exc}"}, status_code=401)


def _authorize(geo: Geo, request: Request, scope_path: str) -> None:
    with geo.main_reads() as conn:
        authenticate_node(
            geo, conn, request.headers.get("authorization"), scope_path, on_primary=True
        )


class BlobResponse(FileResponse):
    """A blob's file, sent from the open `handle` whose size went into Content-Length, so that
    length and bytes come from one version of a file being replaced by rename: by the kernel
    where the server offers zero-copy bodies (`geosync.web.zero_copy`), else in 1 MiB reads
    (Starlette's 64 KiB default costs a loop turn per read). Ranges (resumes) are left to
    Starlette, which reopens the path; the secondary's checksum catches a version change there.
    """

    chunk_size = 1024 * 1024

    def __init__(self, handle: BinaryIO, path: Path, stat: os.stat_result) -> None:
        super().__init__(path, media_type=BLOB_MEDIA_TYPE, stat_result=stat)
        self.handle = handle
        self.size = stat.st_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the file, then close its handle whatever happened."""
        try:
            if scope["method"] != "GET" or any(name == b"range" for name, _ in scope["headers"]):
                await super().__call__(scope, receive, send)
                return
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            if ZERO_COPY_SEND in scope.get("extensions", {}):
                body = {"type": ZERO_COPY_SEND, "file": self.handle, "offset": 0}
                await send({**body, "count": self.size, "more_body": False})
            else:
                await self._stream(send)
        finally:
            self.handle.close()

    async def _stream(self, send: Send) -> None:
        """The handle's bytes as body messages; a file shorter than promised ends the body
        early, and the server breaks off the response."""
        left = self.size
        while True:
            chunk = b""
            if left > 0:
                chunk = await run_in_threadpool(self.handle.read, min(self.chunk_size, left))
            left = left - len(chunk) if chunk else 0
            await send({"type": "http.response.body", "body": chunk, "more_body": left > 0})
            if not left:
                return


def _replicator(geo: Geo, name: str, record_id: int, conn: Connection | None = None) -> Replicator:
    """The record `record_id` of replicator `name`, bound; `NotFound` naming only `name`."""
    replicator_class = geo.catalog.served(name, Replicator)
    record = geo.load_record(replicator_class.model, record_id, conn)
    if record is None:
        raise NotFound(f"{name} not found")
    return replicator_class(record, geo=geo)


def _blob_response(
    geo: Geo, header: str | None, path: str, name: str, record_id: int, ranged: bool
) -> Response:
    """Authenticate, find the file and answer, all on one connection and one thread hop.

    A file up to `WHOLE_READ_LIMIT` is read in one call and sent in one body: most blobs are
    small, and streaming them costs several event-loop turns and thread hops each.
    """
    with geo.main_reads() as conn:
        try:
            authenticate_node(geo, conn, header, path, on_primary=True)
        except AuthenticationError as exc:
            return _unauthorized(exc)
        replicator = _replicator(geo, name, record_id, conn)
    streamed = open_served_object(replicator)
    if streamed is not None:
        return _object_response(streamed)
    opened = open_served(replicator)
    if isinstance(opened, Refusal):
        return _refusal_response(opened)
    handle, file_path, stat = opened
    try:
        if not ranged and stat.st_size <= WHOLE_READ_LIMIT:
            with handle:
                return Response(handle.read(), media_type=BLOB_MEDIA_TYPE)
    except BaseException:
        handle.close()
        raise
    return BlobResponse(handle, file_path, stat)


def _binary(media_type: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {media_type: {"schema": {"type": "string", "format": "binary"}}},
    }


_REFUSAL = {"model": GeoRefusal, "description": "The primary does not serve this file"}
_RANGE = {
    "name": "Range",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "Resume a transfer: `bytes=<start>-`.",
}
_PLAIN = {"text/plain": {"schema": {"type": "string"}}}


@router.get(
    PING_PATH.removeprefix(GEO_API),
    responses=errors(401, 503),
    openapi_extra=NODE_SECURITY,
)
async def ping(request: Request) -> dict[str, bool]:
    """Answer a secondary's reachability probe: the web server, its database and the node's
    token all work (`geosync.secondary.reachability`); a database that is away is a 503."""
    await run_in_threadpool(_authorize, request.app.state.geo, request, PING_PATH)
    return {"ok": True}


@router.get(
    "/retrieve/{replicable_name}/{model_record_id}",
    response_class=Response,
    responses={
        200: _binary(BLOB_MEDIA_TYPE, "The blob"),
        206: _binary(BLOB_MEDIA_TYPE, "The requested range of the blob"),
        **errors(400, 401, 404, 503),
        416: {"description": "The range is beyond the blob's end", "content": _PLAIN},
        422: _REFUSAL,
    },
    openapi_extra={
        **NODE_SECURITY,
        "parameters": [_RANGE],
        # A malformed Range header is Starlette's plain-text 400.
        "responses": {"400": {"content": _PLAIN}},
    },
)
async def retrieve(replicable_name: str, model_record_id: int, request: Request) -> Response:
    """Send one blob to an authenticated secondary (HTTP Range supported for resumes)."""
    response: Response = await run_in_threadpool(
        _blob_response,
        request.app.state.geo,
        request.headers.get("authorization"),
        request.url.path,
        replicable_name,
        model_record_id,
        "range" in request.headers,
    )
    return response


def _refusal_response(refusal: Refusal) -> JSONResponse:
    """A blob not served: 404 when it is missing, else 422, with its `geo_code`."""
    status = 404 if refusal.reason == FILE_NOT_FOUND else 422
    body = {"message": refusal.message, "geo_code": refusal.geo_code}
    return JSONResponse(body, status_code=status)


def _object_response(opened: tuple[BinaryIO, int] | Refusal) -> Response:
    """A blob in the primary's object store, streamed through this site (not a presigned
    redirect: the node token stays the only key, and the store needs no public route).
    Ranges are not offered: a secondary retries an object whole."""
    if isinstance(opened, Refusal):
        return _refusal_response(opened)
    handle, size = opened

    def body() -> Iterator[bytes]:
        with handle:
            while chunk := handle.read(1024 * 1024):
                yield chunk

    headers = {"Content-Length": str(size)}
    return StreamingResponse(body(), media_type=BLOB_MEDIA_TYPE, headers=headers)


def _batch_response(
    geo: Geo, header: str | None, scope: str, name: str, raw_ids: str | None
) -> Response:
    """Authenticate, load the records and read the first piece, all on one thread hop."""
    with geo.main_reads() as conn:
        try:
            authenticate_node(geo, conn, header, scope, on_primary=True)
        except AuthenticationError as exc:
            return _unauthorized(exc)
        source = BatchSource.load(geo, name, parse_ids(raw_ids), conn)
    first, more = source.first_piece()
    if not more:
        return Response(first, media_type=BATCH_MEDIA_TYPE)
    return StreamingResponse(chain([first], source.rest()), media_type=BATCH_MEDIA_TYPE)


@router.get(
    "/retrieve/{replicable_name}",
    response_class=Response,
    responses={
        200: _binary(BATCH_MEDIA_TYPE, "One frame per requested id (`geosync.web.blob_batch`)"),
        **errors(401, 404, 422, 503),
    },
    openapi_extra={
        **NODE_SECURITY,
        "parameters": [
            {
                "name": "ids",
                "in": "query",
                "required": True,
                "style": "form",
                "explode": False,
                "schema": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 1, "maximum": MAX_RECORD_ID},
                    "minItems": 1,
                    "maxItems": MAX_BATCH_IDS,
                    "uniqueItems": True,
                },
                "description": "Record ids, comma-separated (else 422).",
            }
        ],
    },
)
async def retrieve_batch(replicable_name: str, request: Request) -> Response:
    """Send many small blobs in one framed response (format: `geosync.web.blob_batch`)."""
    response: Response = await run_in_threadpool(
        _batch_response,
        request.app.state.geo,
        request.headers.get("authorization"),
        f"{request.url.path}?{request.url.query}",
        replicable_name,
        request.query_params.get("ids"),
    )
    return response


_REPOSITORY = "/repositories/{replicable_name}/{model_record_id:int}.git"
_GIT_ERRORS = {
    **errors(401, 404, 503),
    502: {"model": Message, "description": "git http-backend did not answer"},
}


@router.get(
    _REPOSITORY + "/info/refs",
    response_class=Response,
    responses={
        200: _binary("application/x-git-upload-pack-advertisement", "The refs"),
        **_GIT_ERRORS,
        403: {"model": Message, "description": "Pushes are not served (`git-receive-pack`)"},
    },
    openapi_extra={
        **NODE_SECURITY,
        "parameters": [
            {
                "name": "service",
                "in": "query",
                "required": True,
                "schema": {"type": "string", "enum": [UPLOAD_PACK]},
                "description": f"`{UPLOAD_PACK}` (`{RECEIVE_PACK}` answers 403).",
            }
        ],
    },
)
async def repository_refs(replicable_name: str, model_record_id: int, request: Request) -> Response:
    """Smart HTTP ref advertisement of one repository (upload-pack only)."""
    return await _repository(replicable_name, model_record_id, "info/refs", request)


@router.post(
    _REPOSITORY + "/" + UPLOAD_PACK,
    response_class=Response,
    responses={
        200: _binary("application/x-git-upload-pack-result", "The pack"),
        **_GIT_ERRORS,
        415: {"model": Message, "description": "The body is not an upload-pack request"},
    },
    openapi_extra={
        **NODE_SECURITY,
        "requestBody": {
            "required": True,
            "content": {
                "application/x-git-upload-pack-request": {
                    "schema": {"type": "string", "format": "binary"}
                }
            },
        },
    },
)
async def repository_upload_pack(
    replicable_name: str, model_record_id: int, request: Request
) -> Response:
    """Smart HTTP fetch from one repository."""
    return await _repository(replicable_name, model_record_id, UPLOAD_PACK, request)


@router.post(_REPOSITORY + "/" + RECEIVE_PACK, include_in_schema=False)
async def repository_receive_pack(
    replicable_name: str, model_record_id: int, request: Request
) -> Response:
    """Pushes: refused (403) once the node is authenticated."""
    return await _repository(replicable_name, model_record_id, RECEIVE_PACK, request)


async def _repository(
    replicable_name: str, model_record_id: int, rest: str, request: Request
) -> Response:
    """Read-only git smart HTTP for one repository: authenticate, then hand over to git."""
    geo: Geo = request.app.state.geo
    scope = repository_base_path(replicable_name, model_record_id)
    try:
        await run_in_threadpool(_authorize, geo, request, scope)
    except AuthenticationError as exc:
        return _unauthorized(exc)
    found = await run_in_threadpool(_replicator, geo, replicable_name, model_record_id)
    repo_dir = found.served_repository()
    return await git_http_backend(request, repo_dir, "/" + rest)
