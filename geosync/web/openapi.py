"""The OpenAPI document at `/api/v4/openapi.json`: every status a route answers, and its body.

Routes name the statuses they answer with `errors(...)`; every error body is GitLab's
`{"message": ...}`. A request whose parameters or body do not fit the document answers 400, as
GitLab's API does (FastAPI's own 422 entries, with a body geosync never sends, are dropped from
the document); 422 is a well-formed request that geosync refuses for what it asks (a blob it will
not serve, a status naming another node, a malformed id list). `document` builds the document
once per application.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.security import APIKeyHeader, APIKeyQuery, HTTPBearer
from pydantic import BaseModel


class Message(BaseModel):
    """An error: GitLab's shape."""

    message: str


class GeoRefusal(BaseModel):
    """A blob the primary does not serve, with the reason a secondary classifies it by."""

    message: str
    geo_code: str


DESCRIPTIONS: dict[int, str] = {
    400: "Bad request: a parameter or the body does not fit this document",
    401: "No valid token (admin API: `PRIVATE-TOKEN`; node-to-node: a `GL-Geo` JWT)",
    403: "Forbidden: the token is not an admin's, or this site does not do this",
    404: "Not found",
    409: "Conflict: refused in the current state",
    422: "Unprocessable: well-formed, but refused for what it asks",
    503: "This site cannot answer this now (it is not the primary)",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The documented error responses `codes`, each with a `Message` body."""
    return {code: {"model": Message, "description": DESCRIPTIONS[code]} for code in codes}


#: The ways an admin token is presented (any one of them): the document's security schemes,
#: read by `geosync.web.admin_auth.presented_token`.
PRIVATE_TOKEN = APIKeyHeader(
    name="PRIVATE-TOKEN", scheme_name="PrivateToken", auto_error=False, description="Admin token."
)
BEARER_TOKEN = HTTPBearer(scheme_name="BearerToken", auto_error=False, description="Admin token.")
PRIVATE_TOKEN_QUERY = APIKeyQuery(
    name="private_token", scheme_name="PrivateTokenQuery", auto_error=False
)
#: The node-to-node token, `Authorization: GL-Geo <access_key>:<jwt>`: its scheme, and the
#: requirement of every node-to-node operation. These routes read the header themselves (the
#: blob path pays no dependency for it), so the document names it here.
GEO_NODE_SCHEME = {
    "type": "apiKey",
    "in": "header",
    "name": "Authorization",
    "description": "`GL-Geo <access_key>:<jwt>`: an HS256 JWT signed with the requesting "
    "node's secret, whose `data` claim names exactly the requested path.",
}
NODE_SECURITY: dict[str, Any] = {"security": [{"GeoNodeToken": []}]}


def document(app: FastAPI) -> dict[str, Any]:
    """The application's OpenAPI document, built once."""
    if app.openapi_schema is None:
        spec = get_openapi(
            title=app.title,
            version=app.version,
            openapi_version=app.openapi_version,
            description=app.description,
            routes=app.routes,
        )
        _drop_fastapi_validation_errors(spec)
        schemes = spec.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["GeoNodeToken"] = GEO_NODE_SCHEME
        app.openapi_schema = spec
    return app.openapi_schema


def _drop_fastapi_validation_errors(spec: dict[str, Any]) -> None:
    """Remove FastAPI's 422 `HTTPValidationError` answers: invalid requests answer 400."""
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            answer = responses.get("422", {})
            schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
            if schema.get("$ref", "").endswith("/HTTPValidationError"):
                del responses["422"]
    schemas = spec.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
