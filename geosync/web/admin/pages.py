"""What every admin page shares: the templates, the layout's context, and the GraphQL API.

Pages read and act through the site's own GraphQL schema, executed in-process with the signed-in
admin's token, so the UI and the API cannot disagree and there is no second query layer.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypedDict

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, select_autoescape

from geosync.web.admin.session import PREFIX, AdminSession
from geosync.web.deps import get_geo
from geosync.web.graphql.context import GeoContext

if TYPE_CHECKING:
    from geosync.app import Geo

templates = Environment(
    loader=PackageLoader("geosync.web", "admin/templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


class GraphQLFailed(Exception):
    """The in-process GraphQL query answered errors."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


async def graphql(
    request: Request, session: AdminSession, query: str, variables: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Run `query` on this site's schema as the signed-in admin; its data, or `GraphQLFailed`."""
    geo = get_geo(request)
    schema = request.app.state.graphql_schema
    result = await schema.execute(
        query, variable_values=variables, context_value=GeoContext(geo, session.token)
    )
    if result.errors:
        raise GraphQLFailed([error.message for error in result.errors])
    data: dict[str, Any] = result.data or {}
    return data


def page(
    request: Request,
    session: AdminSession | None,
    template: str,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """Render `template` inside the layout (navigation, sign-out, CSRF token)."""
    geo = get_geo(request)
    html = templates.get_template(template).render(
        prefix=PREFIX,
        session=session,
        csrf=session.csrf if session else "",
        site_name=geo.settings.node_name,
        secondary=geo.has_tracking_database,
        replicators=list(geo.catalog),
        now=geo.clock.now(),
        path=request.url.path,
        **context,
    )
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


def not_found(request: Request, session: AdminSession | None, message: str) -> HTMLResponse:
    """The 404 page that says what was not found."""
    return page(request, session, "error.html", 404, title="Not found", message=message)


class Notices(TypedDict):
    """What a redirect after an action tells the page it lands on."""

    notice: str
    error: str


def notices_of(request: Request) -> Notices:
    """The notice and error a redirect carried in the query string, cut to 500 characters."""
    query = request.query_params
    return Notices(notice=query.get("notice", "")[:500], error=query.get("error", "")[:500])


#: Sent with every admin page: no framing, no sniffing, scripts and styles from this site only.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def ago(moment: datetime | str | None, now: datetime | None = None) -> str:
    """ "3 minutes ago", "in 2 hours", or "never"."""
    if moment is None:
        return "never"
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
        if seconds >= size or size == 1:
            count = int(seconds // size)
            text = f"{count} {unit}{'' if count == 1 else 's'}"
            return f"in {text}" if future else f"{text} ago"
    return "just now"


def geo_of(request: Request) -> Geo:
    """The site of this request."""
    return get_geo(request)


templates.filters["ago"] = ago
