"""The sites overview (`/admin/geo/sites`): a card per node from its latest status, refreshed in
place; and each site's edit form (`/admin/geo/sites/N/edit`, the node JSON's `web_edit_url`).

Statuses are read as the REST API reads them (`node_statuses`), nodes are changed through
`NodeStore` with its rules, and both only on a thread: neither call is async.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.exc import DataError, IntegrityError
from starlette.concurrency import run_in_threadpool

from geosync.errors import InvalidTransition, NotFound, ValidationError
from geosync.log import get_logger
from geosync.nodes import Node, NodeStore
from geosync.status import node_statuses
from geosync.web.admin.pages import page
from geosync.web.admin.promotion_card import plan_on_card
from geosync.web.admin.session import PREFIX, AdminSession, current_session, form_of
from geosync.web.admin.site_cards import cards
from geosync.web.admin.site_form import (
    Field,
    bound_problems,
    changes_of,
    fields_from,
    fields_of,
    with_errors,
)
from geosync.web.deps import get_geo

if TYPE_CHECKING:
    from geosync.app import Geo

log = get_logger("admin")
router = APIRouter(include_in_schema=False)
#: Milliseconds between two refreshes of the cards.
REFRESH_EVERY = 5000


@router.get(f"{PREFIX}/sites", response_class=HTMLResponse)
async def overview(
    request: Request, saved: str = "", session: AdminSession = Depends(current_session)
) -> HTMLResponse:
    """Every node's card, refreshed in place from `cards`; `saved` names a node just saved."""
    context = await run_in_threadpool(_cards_context, get_geo(request))
    names = {str(card.node.id): card.node.name for card in context["cards"]}
    return page(
        request,
        session,
        "sites.html",
        saved=names.get(saved),
        refresh_every=REFRESH_EVERY,
        **context,
    )


@router.get(f"{PREFIX}/sites/cards", response_class=HTMLResponse)
async def overview_cards(
    request: Request, session: AdminSession = Depends(current_session)
) -> HTMLResponse:
    """The cards alone, without the layout: what the overview's live refresh fetches."""
    context = await run_in_threadpool(_cards_context, get_geo(request))
    return page(request, session, "sites_cards.html", **context)


@router.get(f"{PREFIX}/sites/{{node_id:int}}/edit", response_class=HTMLResponse)
async def edit_form(
    node_id: int, request: Request, session: AdminSession = Depends(current_session)
) -> HTMLResponse:
    """A node's settings as a form; read-only where the main database is."""
    geo = get_geo(request)
    found = await run_in_threadpool(_editing, geo, node_id)
    if found is None:
        return _not_found(request, session, node_id)
    node, primary_edit = found
    return _form(request, session, node, fields_of(node), primary_edit)


@router.post(f"{PREFIX}/sites/{{node_id:int}}/edit")
async def save(
    node_id: int, request: Request, session: AdminSession = Depends(current_session)
) -> Response:
    """Store the typed settings with `NodeStore`'s rules; on a refusal, the form again with
    each problem next to its field and what was typed kept."""
    posted = await form_of(request, session)
    geo = get_geo(request)
    found = await run_in_threadpool(_editing, geo, node_id)
    if found is None:
        return _not_found(request, session, node_id)
    node, primary_edit = found
    fields = fields_from(posted)
    if primary_edit is not None:
        problem = "Nodes are changed on the primary only."
        return _form(request, session, node, fields, primary_edit, problem, 403)
    problems = await run_in_threadpool(_save, geo, node.id, fields)
    if problems:
        general = problems.pop("", None)
        errors = with_errors(fields, problems)
        return _form(request, session, node, errors, None, general, 422)
    log.info("admin changed a node", node=node.name, by=session.token.name)
    return RedirectResponse(f"{PREFIX}/sites?saved={node.id}", status_code=303)


def _cards_context(geo: Geo) -> dict[str, Any]:
    now = geo.clock.now()
    return {
        "cards": cards(geo, node_statuses(geo, own_stored=True), now),
        "at": now,
        "promotion": plan_on_card(geo, now),
    }


def _editing(geo: Geo, node_id: int) -> tuple[Node, str | None] | None:
    """The node, and the primary's edit URL when this site cannot change nodes (else None)."""
    with geo.main_engine.connect() as conn:
        store = NodeStore(geo, conn)
        try:
            node = store.get(node_id)
        except NotFound:
            return None
        primary = next((n for n in store.list() if n.primary), None)
    writable = not geo.main_readonly and (primary is None or primary.name == geo.settings.node_name)
    if writable:
        return node, None
    edit_path = f"admin/geo/sites/{node.id}/edit"
    return node, (primary.url + edit_path if primary is not None else "")


def _save(geo: Geo, node_id: int, fields: list[Field]) -> dict[str, str]:
    """Every problem with the typed fields by field name ("" for the whole form), or store them."""
    changes = changes_of(fields)
    try:
        with geo.main() as conn:
            store = NodeStore(geo, conn)
            problems = {**store.problems(node_id, changes), **bound_problems(fields)}
            if not problems:
                store.update(node_id, **changes)
    except (ValidationError, InvalidTransition) as exc:  # a change raced past the checks
        return {"": exc.message}
    except (IntegrityError, DataError):
        return {"": "The node changed meanwhile, or a value is out of range: try again."}
    return problems


def _form(
    request: Request,
    session: AdminSession,
    node: Node,
    fields: list[Field],
    primary_edit: str | None,
    problem: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    return page(
        request,
        session,
        "site_edit.html",
        status_code,
        node=node,
        fields=fields,
        read_only=primary_edit is not None,
        primary_edit=primary_edit,
        problem=problem,
        errors=[field for field in fields if field.error],
    )


def _not_found(request: Request, session: AdminSession, node_id: int) -> HTMLResponse:
    message = f"There is no site with id {node_id}."
    return page(request, session, "error.html", 404, title="Site not found", message=message)
