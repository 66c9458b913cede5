"""The admin UI under `/admin/geo`: server-rendered pages on the site's GraphQL API and jobs.

Each page lives in its own module with its own router; this module mounts them, the static
files, sign-in and sign-out, and the answers to a missing session or CSRF token.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from geosync.log import get_logger
from geosync.web.admin.pages import page
from geosync.web.admin.session import (
    COOKIE,
    PREFIX,
    AdminSession,
    CsrfRefused,
    SignInRequired,
    cookie_options,
    current_session,
    form_of,
    safe_next,
    sign_in,
)
from geosync.web.deps import get_geo

if TYPE_CHECKING:
    from fastapi import FastAPI

    from geosync.app import Geo

log = get_logger("admin")
STATIC = Path(__file__).parent / "static"
router = APIRouter(include_in_schema=False)


@router.get("/")
@router.get("/admin")
@router.get(PREFIX)
async def _home() -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/sites", status_code=303)


@router.get(f"{PREFIX}/sign_in", response_class=HTMLResponse)
async def _sign_in_form(request: Request, next: str = "", message: str = "") -> HTMLResponse:
    return page(request, None, "sign_in.html", next=safe_next(next), message=message[:200])


@router.post(f"{PREFIX}/sign_in")
async def _sign_in(request: Request) -> Response:
    from urllib.parse import parse_qs

    body = (await request.body())[:8192].decode("utf-8", "replace")
    fields = {k: v[-1] for k, v in parse_qs(body).items()}
    geo = get_geo(request)
    value, refusal = sign_in(geo, fields.get("token", ""))
    target = safe_next(fields.get("next"))
    if value is None:
        log.info("admin sign-in refused", reason=refusal)
        return page(request, None, "sign_in.html", 401, next=target, message=refusal)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, value, **cookie_options(request))
    log.info("admin signed in")
    return response


@router.post(f"{PREFIX}/sign_out")
async def _sign_out(request: Request, session: AdminSession = Depends(current_session)) -> Response:
    await form_of(request, session)
    response = RedirectResponse(f"{PREFIX}/sign_in?message=Signed+out.", status_code=303)
    response.delete_cookie(COOKIE, path=PREFIX)
    return response


def mount(app: FastAPI, geo: Geo) -> None:
    """Serve the admin UI on `app`."""
    from geosync.web.admin.routes import routes

    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="admin-static")
    app.include_router(router)
    for page_router in routes():
        app.include_router(page_router)

    @app.exception_handler(SignInRequired)
    async def _signed_out(request: Request, exc: SignInRequired) -> Response:
        if request.headers.get("x-requested-with") == "fetch":  # a live update: no redirect
            return Response(status_code=401)
        return RedirectResponse(exc.location(), status_code=303)

    @app.exception_handler(CsrfRefused)
    async def _csrf(request: Request, exc: CsrfRefused) -> Response:
        log.info("admin form refused", reason=str(exc))
        return page(request, None, "error.html", 403, title="Refused", message=str(exc))
