"""The site's web application: node-to-node API, admin REST API, GraphQL, metrics and admin UI.

Every error leaves as JSON `{"message": ...}` with a 4xx status; bad input never becomes a 500.
A database that is away (restarting, unreachable, locked) is a 503 and one warning line, not a
500 and a traceback per request: a secondary then retries with its backoff.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope

from geosync.db.engines import error_line
from geosync.errors import (
    AuthenticationError,
    ConfigurationError,
    GeoError,
    InvalidTransition,
    NotFound,
    ValidationError,
)
from geosync.log import get_logger

if TYPE_CHECKING:
    from geosync.app import Geo

log = get_logger("web")

STATUS_OF: tuple[tuple[type[GeoError], int], ...] = (
    (AuthenticationError, 401),
    (NotFound, 404),
    (InvalidTransition, 409),
    (ValidationError, 422),
    (ConfigurationError, 503),
)


def status_for(error: GeoError) -> int:
    """The HTTP status that answers `error`."""
    for cls, status in STATUS_OF:
        if isinstance(error, cls):
            return status
    return 400


def create_app(geo: Geo) -> FastAPI:
    """The ASGI application of one site."""
    app = FastAPI(
        title="geosync",
        openapi_url="/api/v4/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=_lifespan,
    )
    app.state.geo = geo
    _install_error_handlers(app)
    for include in ROUTERS:
        include(app, geo)
    from geosync.web.openapi import document

    app.openapi = lambda: document(app)  # type: ignore[method-assign]
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    await run_in_threadpool(warm_up, app.state.geo)
    yield


def warm_up(geo: Geo) -> None:
    """Open the first pooled connection to each database the site answers from, before the
    server takes its first request.

    An engine's first connection loads the database driver and asks the server about itself
    (some 90 ms on PostgreSQL): the first request after every start would wait for it, and a
    secondary's first syncs with it. A database not reachable yet is logged, not fatal:
    requests connect when they need to.
    """
    engines = {"main": geo.main_engine}
    if geo.has_tracking_database:
        engines["tracking"] = geo.tracking_engine
    for name, engine in engines.items():
        try:
            with engine.connect():
                pass
        except SQLAlchemyError as exc:
            log.warning("database not reachable at start", database=name, error=error_line(exc))


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GeoError)
    async def _geo_error(_request: Request, exc: GeoError) -> JSONResponse:
        return JSONResponse({"message": str(exc)}, status_code=status_for(exc))

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_away(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        log.warning("database not available", path=request.url.path, error=error_line(exc))
        return JSONResponse(
            {"message": "The site's database is not available; try again later"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        return JSONResponse({"message": f"400 Bad request - {problems}"}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        headers = exc.headers
        if exc.status_code == 405:  # Starlette names only the first route of the path
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(app, request.scope))}
        return JSONResponse({"message": message}, status_code=exc.status_code, headers=headers)


#: The methods a 405's `Allow` may name.
HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route of `app` answers at the path of `scope`, in alphabetical order
    (asked of the router, as a request with each method would be routed)."""
    return [
        method
        for method in HTTP_METHODS
        if any(route.matches({**scope, "method": method})[0] is Match.FULL for route in app.routes)
    ]


def _geo_api(app: FastAPI, geo: Geo) -> None:
    from geosync.web import geo_api

    app.include_router(geo_api.router)


def _rest_api(app: FastAPI, geo: Geo) -> None:
    from geosync.web import rest, status_api

    for router in rest.routers_for(geo.catalog):
        app.include_router(router)
    app.include_router(status_api.router_for(geo.catalog))


def _metrics(app: FastAPI, geo: Geo) -> None:
    from geosync.web import metrics

    app.include_router(metrics.router)


def _graphql(app: FastAPI, geo: Geo) -> None:
    from geosync.web import graphql

    graphql.mount(app, geo)


def _admin(app: FastAPI, geo: Geo) -> None:
    from geosync.web import admin

    admin.mount(app, geo)


#: Each adds one part of the web application; later parts append themselves here.
ROUTERS = [_geo_api, _rest_api, _metrics, _graphql, _admin]
