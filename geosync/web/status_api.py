"""`POST /api/v4/geo/status` on the primary: a secondary delivers its status (node JWT).

Only GitLab's status fields of this site's catalog are kept, each of its kind (a number, a flag
or text) or null, since its readers format it as such; a `geo_node_id` other than the
authenticated node's is refused.
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from geosync.app import Geo
from geosync.auth import authenticate_node
from geosync.catalog import Catalog
from geosync.errors import AuthenticationError, ConfigurationError, ValidationError
from geosync.status import NodeStatus, iso, status_fields, store_status
from geosync.status_reporting import STATUS_PATH
from geosync.web.deps import get_geo
from geosync.web.openapi import NODE_SECURITY, errors

MAX_BODY = 1024 * 1024
MAX_TEXT = 2000
_INT_RANGE = 2**63
#: Status fields that are text, or a flag; every other one is a number. Any may be null.
TEXT_FIELDS = frozenset(
    (
        "health",
        "health_status",
        "version",
        "revision",
        "selective_sync_type",
        "updated_at",
        "object_storages",
    )
)
FLAG_FIELDS = frozenset(("healthy",))
#: A field's value, as `_fits` checks it, by kind.
_SCHEMAS: dict[str, dict[str, Any]] = {
    "text": {"type": "string", "maxLength": MAX_TEXT, "pattern": "^[^\\x00]*$"},
    "flag": {"type": "boolean"},
    "number": {"type": "number", "exclusiveMinimum": -_INT_RANGE, "exclusiveMaximum": _INT_RANGE},
}


def field_kind(field: str) -> str:
    """`text`, `flag` or `number`: what a status field holds (besides null)."""
    if field in TEXT_FIELDS:
        return "text"
    return "flag" if field in FLAG_FIELDS else "number"


class _BadStatus(ValueError):
    pass


class StatusStored(BaseModel):
    """The node whose status was stored, and when."""

    geo_node_id: int
    updated_at: str


def router_for(catalog: Catalog) -> APIRouter:
    """The status receiver of a site with `catalog`, whose status fields its document names."""
    router = APIRouter(tags=["geo"])
    fields = {
        name: {"anyOf": [{"type": "null"}, _SCHEMAS[field_kind(name)]]}
        for name in status_fields(catalog)
    }
    body = {
        "type": "object",
        "properties": fields,
        "description": "GitLab's status fields (others are ignored), each of its kind or null. "
        "`geo_node_id`, if given, must be the authenticated node's (else 422).",
    }
    router.post(
        STATUS_PATH,
        status_code=201,
        response_model=StatusStored,
        responses=errors(400, 401, 422, 503),
        openapi_extra={
            **NODE_SECURITY,
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        },
    )(receive_status)
    return router


async def receive_status(request: Request) -> JSONResponse:
    """Store an authenticated secondary's status as its latest."""
    geo = get_geo(request)
    body = await request.body()
    header = request.headers.get("authorization")
    return await run_in_threadpool(_receive, geo, header, body)


def _receive(geo: Geo, header: str | None, body: bytes) -> JSONResponse:
    if not geo.is_primary():
        raise ConfigurationError("this site is not the primary")
    try:
        with geo.main_engine.connect() as conn:
            node = authenticate_node(geo, conn, header, STATUS_PATH)
    except AuthenticationError as exc:
        return JSONResponse({"message": f"401 Unauthorized - {exc}"}, status_code=401)
    values = _parse(geo, body)
    claimed = values.get("geo_node_id")
    if claimed is not None and claimed != node.id:
        raise ValidationError(f"geo_node_id {claimed!r} is not the authenticated node ({node.id})")
    values["geo_node_id"] = node.id
    now = geo.clock.now()
    with geo.main() as conn:
        store_status(conn, NodeStatus(values, now), now)
    return JSONResponse({"geo_node_id": node.id, "updated_at": iso(now)}, status_code=201)


def _parse(geo: Geo, body: bytes) -> dict[str, Any]:
    if len(body) > MAX_BODY:
        _reject("the status is too large")
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except (ValueError, _BadStatus):
        _reject("the body must be a JSON object of status fields")
    if not isinstance(data, dict):
        _reject("the body must be a JSON object of status fields")
    known = set(status_fields(geo.catalog))
    values = {key: value for key, value in data.items() if key in known}
    for key, value in values.items():
        if not _fits(field_kind(key), value):
            _reject(f"field {key!r} must be a {field_kind(key)} or null")
    return values


def _fits(kind: str, value: Any) -> bool:
    """Whether `value` may be stored as a field of `kind`: its readers format it unchecked."""
    if value is None:
        return True
    if kind == "flag":
        return isinstance(value, bool)
    if kind == "text":
        return isinstance(value, str) and len(value) <= MAX_TEXT and "\x00" not in value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and -_INT_RANGE < value < _INT_RANGE


def _no_constant(name: str) -> Any:
    raise _BadStatus(name)


def _reject(message: str) -> NoReturn:
    raise HTTPException(status_code=400, detail=f"400 Bad request - {message}")
