"""The replication list of one data type: a secondary's registries, or the primary's records
with their checksums, 20 a page, with filters, search, per-row actions and bulk jobs.

Every read and action is a GraphQL query or mutation (`replication_api`); a bulk action is
confirmed on a page of its own that states how many rows it touches, so it needs no JavaScript.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from geosync.web.admin import replication_api as api
from geosync.web.admin.pages import GraphQLFailed, graphql, not_found, notices_of, page
from geosync.web.admin.session import PREFIX, AdminSession, current_session, form_of

router = APIRouter(include_in_schema=False)
PATH = PREFIX + "/sites/{node_id:int}/replication/{plural}"
#: The single-row actions of a secondary and the mutation action each one runs.
ROW_ACTIONS = {"resync": ("RESYNC", "resync"), "reverify": ("REVERIFY", "reverification")}


@router.get(PREFIX + "/replication/{plural}")
async def _this_site(
    request: Request, plural: str, session: AdminSession = Depends(current_session)
) -> Response:
    """The navigation's link: the type's list on this site's own node."""
    node = (await graphql(request, session, api.NODE_QUERY)).get("geoNode")
    if node is None:
        message = "This site is not registered as a Geo node."
        return not_found(request, session, message)
    target = PATH.replace("{node_id:int}", str(api.number_of(node["id"]))).replace(
        "{plural}", quote(plural)
    )
    query = f"?{request.url.query}" if request.url.query else ""
    return RedirectResponse(target + query, status_code=303)


@router.get(PATH, response_class=HTMLResponse)
async def _list(
    request: Request, node_id: int, plural: str, session: AdminSession = Depends(current_session)
) -> Response:
    place = await api.place_of(request, session, node_id, plural)
    if not isinstance(place, api.Place):
        return place
    filters = api.Filters.of(request, place.primary)
    reader = api.records_page if place.primary else api.registries_page
    failure: list[str] = []
    try:
        listed = await reader(request, session, place, filters)
    except GraphQLFailed as exc:
        listed, failure = api.Listed(), exc.messages
    template = "records_list.html" if place.primary else "registries_list.html"
    return page(
        request,
        session,
        template,
        400 if failure else 200,
        **_context(request, place, filters, listed),
        failure=failure,
    )


def _context(
    request: Request, place: api.Place, filters: api.Filters, listed: api.Listed
) -> dict[str, Any]:
    info = listed.page_info
    here = place.list_path
    previous = next_ = None
    if info.get("hasPreviousPage") and info.get("startCursor"):
        previous = f"{here}?{filters.query(place.primary, before=info['startCursor'])}"
    if info.get("hasNextPage") and info.get("endCursor"):
        next_ = f"{here}?{filters.query(place.primary, after=info['endCursor'])}"
    return {
        "title": f"{api.label_of(place.replicator).capitalize()} replication",
        "place": place,
        "replicator": place.replicator,
        "filters": filters,
        "listed": listed,
        "count_label": api.label_of(place.replicator, listed.count),
        "previous_url": previous,
        "next_url": next_,
        "paged": bool(filters.after or filters.before),
        "back": str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""),
        "bulk_actions": api.bulk_actions(place),
        "replication_states": api.REPLICATION_STATES,
        "verification_states": api.VERIFICATION_STATES,
        **notices_of(request),
    }


@router.post(PATH + "/{registry_id:int}/{action}")
async def _row_action(
    request: Request,
    node_id: int,
    plural: str,
    registry_id: int,
    action: str,
    session: AdminSession = Depends(current_session),
) -> Response:
    fields = await form_of(request, session)
    place = await api.place_of(request, session, node_id, plural)
    if not isinstance(place, api.Place):
        return place
    if action not in ROW_ACTIONS or place.primary:
        return not_found(request, session, "No such action.")
    mutation_action, purpose = ROW_ACTIONS[action]
    what = f"{api.label_of(place.replicator).capitalize()} registry {registry_id}"
    errors = await api.update_registry(request, session, place, registry_id, mutation_action)
    return _answered(place, fields.get("back"), what, errors, f"was queued for {purpose}.")


@router.post(PATH + "/records/{record_id:int}/checksum")
async def _checksum(
    request: Request,
    node_id: int,
    plural: str,
    record_id: int,
    session: AdminSession = Depends(current_session),
) -> Response:
    fields = await form_of(request, session)
    place = await api.place_of(request, session, node_id, plural)
    if not isinstance(place, api.Place):
        return place
    what = f"{api.label_of(place.replicator).capitalize()} {record_id}"
    errors = await api.checksum_record(request, session, place, record_id)
    return _answered(place, fields.get("back"), what, errors, "was queued to be checksummed again.")


def _answered(
    place: api.Place, back: str | None, what: str, errors: list[str], done: str
) -> Response:
    """Back to the page the action came from, with `what` and its errors, or that it was `done`."""
    if errors:
        return api.back_to(place, back, error=f"{what}: " + " ".join(errors))
    return api.back_to(place, back, notice=f"{what} {done}")


def _bulk_of(place: api.Place, slug: str) -> api.BulkAction | None:
    return next((b for b in api.bulk_actions(place) if b.slug == slug), None)


@router.get(PATH + "/bulk/{slug}", response_class=HTMLResponse)
async def _bulk_confirmation(
    request: Request,
    node_id: int,
    plural: str,
    slug: str,
    session: AdminSession = Depends(current_session),
) -> Response:
    place = await api.place_of(request, session, node_id, plural)
    if not isinstance(place, api.Place):
        return place
    bulk = _bulk_of(place, slug)
    if bulk is None:
        return not_found(request, session, "No such action.")
    count = await api.count_of(request, session, place, bulk.counted)
    return page(
        request,
        session,
        "bulk_confirm.html",
        title=f"{bulk.label}: {place.replicator.replicable_name_plural.replace('_', ' ')}",
        place=place,
        bulk=bulk,
        count=count,
        count_label=api.label_of(place.replicator, count),
    )


@router.post(PATH + "/bulk/{slug}")
async def _bulk(
    request: Request,
    node_id: int,
    plural: str,
    slug: str,
    session: AdminSession = Depends(current_session),
) -> Response:
    await form_of(request, session)
    place = await api.place_of(request, session, node_id, plural)
    if not isinstance(place, api.Place):
        return place
    bulk = _bulk_of(place, slug)
    if bulk is None:
        return not_found(request, session, "No such action.")
    job, errors = await api.start_bulk(request, session, place, bulk)
    if job is None:
        return api.back_to(place, None, error=f"{bulk.label}: " + " ".join(errors))
    number = api.number_of(job["id"])
    notice = (
        f"Job {number} queued: {api.label_of(place.replicator, int(job['total']))} {bulk.purpose}."
    )
    return RedirectResponse(f"{PREFIX}/jobs?notice={quote(notice)}", status_code=303)
