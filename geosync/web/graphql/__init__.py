"""The GraphQL API at `/api/graphql` (Strawberry, inside the site's FastAPI app).

Every request needs an admin token (`PRIVATE-TOKEN` or `Authorization: Bearer`): without one
the answer is a GraphQL error with 401, with a token that is not an admin's 403, and no data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cross_web import HTTPException
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from strawberry.fastapi import GraphQLRouter
from strawberry.types.unset import UNSET

from geosync.auth import find_admin_token
from geosync.web.admin_auth import FORBIDDEN, UNAUTHORIZED, presented_token
from geosync.web.deps import get_geo
from geosync.web.graphql.context import GeoContext
from geosync.web.graphql.schema import build_schema

if TYPE_CHECKING:
    from fastapi import FastAPI

    from geosync.app import Geo

PATH = "/api/graphql"


class GraphQLDenied(Exception):
    """A request refused before its query runs (no admin token, a body that is not a GraphQL
    request, a mutation over GET): answered as a GraphQL error in JSON, never plain text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def _context(request: Request) -> GeoContext:
    geo = get_geo(request)

    def lookup() -> object:
        with geo.main_engine.connect() as conn:
            return find_admin_token(conn, presented_token(request))

    found = await run_in_threadpool(lookup)
    if found is None:
        raise GraphQLDenied(401, UNAUTHORIZED)
    if not getattr(found, "admin", False):
        raise GraphQLDenied(403, FORBIDDEN)
    return GeoContext(geo, found)  # type: ignore[arg-type]


class _Router(GraphQLRouter[GeoContext, None]):
    """Strawberry's router, with its plain-text refusals turned into JSON errors."""

    async def run(self, request: Any, context: Any = UNSET, root_value: Any = UNSET) -> Any:
        """Run one request; a request Strawberry refuses raises `GraphQLDenied`."""
        try:
            return await super().run(request, context=context, root_value=root_value)
        except HTTPException as exc:
            raise GraphQLDenied(exc.status_code, exc.reason) from None


def mount(app: FastAPI, geo: Geo) -> None:
    """Serve the site's schema at `/api/graphql`."""
    schema = build_schema(geo.catalog)
    app.state.graphql_schema = schema  # the admin UI runs its queries on it, in-process
    router = _Router(
        schema,
        path=PATH,
        context_getter=_context,
        graphql_ide=None,
        # GraphQL describes itself (introspection, docs/graphql/schema.graphql): the OpenAPI
        # document would only hold one opaque operation per method.
        include_in_schema=False,
    )
    app.include_router(router)

    @app.exception_handler(GraphQLDenied)
    async def _denied(_request: Request, exc: GraphQLDenied) -> JSONResponse:
        body = {"errors": [{"message": exc.message}], "data": None}
        return JSONResponse(body, status_code=exc.status)
