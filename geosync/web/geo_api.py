"""Node-to-node endpoints on the primary: blob retrieval and read-only git smart HTTP.

Every request carries a `GL-Geo` JWT scoped to exactly what it asks for; authentication runs
before anything about the item is revealed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from geosync.app import Geo
from geosync.auth import authenticate_node
from geosync.errors import AuthenticationError, ConfigurationError, NotFound
from geosync.replicator import Replicator
from geosync.strategies.blob import BlobReplicator
from geosync.strategies.repository import RepositoryReplicator
from geosync.web.deps import get_geo
from geosync.web.git_http import git_http_backend

router = APIRouter(prefix="/api/v4/geo", tags=["geo"])
GeoDep = Annotated[Geo, Depends(get_geo)]
FILE_NOT_FOUND = "FILE_NOT_FOUND"


def repository_base_path(replicable_name: str, model_record_id: int) -> str:
    """The URL path of one repository; tokens for git fetches are scoped to it."""
    return f"/api/v4/geo/repositories/{replicable_name}/{model_record_id}.git"


def retrieve_path(replicable_name: str, model_record_id: int) -> str:
    """The URL path of one blob; its token is scoped to exactly this path."""
    return f"/api/v4/geo/retrieve/{replicable_name}/{model_record_id}"


def _unauthorized(exc: AuthenticationError) -> JSONResponse:
    return JSONResponse({"message": f"401 Unauthorized - {exc}"}, status_code=401)


def _authorize(geo: Geo, request: Request, scope_path: str) -> None:
    with geo.main_engine.connect() as conn:
        current = geo.current_node(conn)
        if current is None or not current.primary:
            raise ConfigurationError("this site is not the primary")
        authenticate_node(geo, conn, request.headers.get("authorization"), scope_path)


class BlobResponse(FileResponse):
    """A file streamed in 1 MiB reads: Starlette's 64 KiB default costs a loop turn per read."""

    chunk_size = 1024 * 1024


def _replicator(geo: Geo, name: str, strategy: type[Replicator], record_id: int) -> Replicator:
    try:
        replicator_class = geo.catalog.get(name)
    except NotFound:
        raise NotFound(f"{name} not found") from None
    if not issubclass(replicator_class, strategy):
        raise NotFound(f"{name} not found")
    record = geo.load_record(replicator_class.model, record_id)
    if record is None:
        raise NotFound(f"{name} not found")
    return replicator_class(record, geo=geo)


@router.get("/retrieve/{replicable_name}/{model_record_id}", response_model=None)
def retrieve(replicable_name: str, model_record_id: int, request: Request, geo: GeoDep) -> Response:
    """Stream one blob to an authenticated secondary (HTTP Range supported for resumes)."""
    try:
        _authorize(geo, request, request.url.path)
    except AuthenticationError as exc:
        return _unauthorized(exc)
    replicator = _replicator(geo, replicable_name, BlobReplicator, model_record_id)
    assert isinstance(replicator, BlobReplicator)
    path = replicator.file_path()
    if not path.is_file():
        return JSONResponse(
            {"message": f"{replicable_name} file not found", "geo_code": FILE_NOT_FOUND},
            status_code=404,
        )
    return BlobResponse(path, media_type="application/octet-stream")


_GIT_PATH = "/repositories/{replicable_name}/{model_record_id:int}.git/{rest:path}"


# One route per method: a single GET+POST route gives OpenAPI a duplicate operation id.
@router.get(_GIT_PATH, response_model=None, operation_id="geo_repository_get")
@router.post(_GIT_PATH, response_model=None, operation_id="geo_repository_post")
async def repository(
    replicable_name: str, model_record_id: int, rest: str, request: Request
) -> Response:
    """Read-only git smart HTTP for one repository (upload-pack only)."""
    geo: Geo = request.app.state.geo
    scope = repository_base_path(replicable_name, model_record_id)
    try:
        await run_in_threadpool(_authorize, geo, request, scope)
    except AuthenticationError as exc:
        return _unauthorized(exc)
    found: Any = await run_in_threadpool(
        _replicator, geo, replicable_name, RepositoryReplicator, model_record_id
    )
    repo_dir: Path = found.repository_dir()
    return await git_http_backend(request, repo_dir, "/" + rest)
