"""Admin authentication for the REST API: GitLab's `PRIVATE-TOKEN` header (or a Bearer token).

No token or an unknown one is 401; a valid token without admin rights is 403.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials

from geosync.auth import AdminToken, find_admin_token
from geosync.web.deps import get_geo
from geosync.web.openapi import BEARER_TOKEN, PRIVATE_TOKEN, PRIVATE_TOKEN_QUERY

UNAUTHORIZED = "401 Unauthorized"
FORBIDDEN = "403 Forbidden"


def presented_token(request: Request) -> str | None:
    """The token a request carries: `PRIVATE-TOKEN`, `Authorization: Bearer`, or `private_token`."""
    token = request.headers.get("private-token")
    if token:
        return token
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    return request.query_params.get("private_token") or None


def require_admin(
    request: Request,
    _header: Annotated[str | None, Security(PRIVATE_TOKEN)] = None,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER_TOKEN)] = None,
    _query: Annotated[str | None, Security(PRIVATE_TOKEN_QUERY)] = None,
) -> AdminToken:
    """Dependency: the admin token of this request, or 401/403 as GitLab answers.

    The three security parameters put the ways to present a token in the OpenAPI document;
    `presented_token` reads them, in GitLab's order.
    """
    geo = get_geo(request)
    with geo.main_engine.connect() as conn:
        found = find_admin_token(conn, presented_token(request))
    if found is None:
        raise HTTPException(status_code=401, detail=UNAUTHORIZED)
    if not found.admin:
        raise HTTPException(status_code=403, detail=FORBIDDEN)
    return found
