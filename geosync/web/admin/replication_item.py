"""One item of a replication list: on a secondary a registry with every field, its attempt
history and the diagnosis `geosync explain` prints; on the primary a record and its checksum.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from geosync.errors import GeoError
from geosync.explain import Explanation, explain
from geosync.explain_view import fact_rows
from geosync.web.admin import replication_api as api
from geosync.web.admin.pages import not_found, notices_of, page
from geosync.web.admin.replication import PATH
from geosync.web.admin.session import AdminSession, current_session
from geosync.web.deps import get_geo

router = APIRouter(include_in_schema=False)


@router.get(PATH + "/{registry_id:int}", response_class=HTMLResponse)
async def _registry(
    request: Request,
    node_id: int,
    plural: str,
    registry_id: int,
    session: AdminSession = Depends(current_session),
) -> Response:
    place = await api.place_of(request, session, node_id, plural)
    if not isinstance(place, api.Place):
        return place
    label = api.label_of(place.replicator).capitalize()
    row = None if place.primary else await api.one_registry(request, session, place, registry_id)
    if row is None:
        message = f"There is no {label.lower()} registry {registry_id} on this site."
        return not_found(request, session, message)
    explanation, trouble = await _explained(request, place, int(row["modelRecordId"]))
    return _item_page(
        request,
        session,
        place,
        "registry_item.html",
        f"{label} registry {registry_id}",
        row,
        fields=_fields(row),
        explanation=explanation,
        facts=fact_rows(explanation) if explanation else [],
        trouble=trouble,
    )


def _item_page(
    request: Request,
    session: AdminSession,
    place: api.Place,
    template: str,
    title: str,
    row: dict[str, Any],
    **context: Any,
) -> Response:
    """Render an item page: its row, the way back to its list, and the notices it was sent."""
    return page(
        request,
        session,
        template,
        title=title,
        place=place,
        replicator=place.replicator,
        row=row,
        back=request.url.path,
        **notices_of(request),
        **context,
    )


async def _explained(
    request: Request, place: api.Place, model_record_id: int
) -> tuple[Explanation | None, str]:
    """`geosync explain`'s answer for the item, or None and why it could not be given."""
    geo = get_geo(request)
    try:
        found = await run_in_threadpool(
            explain, geo, place.replicator.replicable_name, model_record_id
        )
    except GeoError as exc:
        return None, exc.message
    return found, ""


def _fields(row: dict[str, Any]) -> list[tuple[str, Any]]:
    """Every field the API answered, in its order, with people's labels (`retryCount` ->
    "retry count")."""
    return [(_words(name), value) for name, value in row.items() if name != "number"]


def _words(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", " ", name).lower()


@router.get(PATH + "/records/{record_id:int}", response_class=HTMLResponse)
async def _record(
    request: Request,
    node_id: int,
    plural: str,
    record_id: int,
    session: AdminSession = Depends(current_session),
) -> Response:
    place = await api.place_of(request, session, node_id, plural)
    if not isinstance(place, api.Place):
        return place
    label = api.label_of(place.replicator).capitalize()
    row = await api.one_record(request, session, place, record_id) if place.primary else None
    if row is None:
        message = f"There is no {label.lower()} {record_id} among this primary's records."
        return not_found(request, session, message)
    info = row["checksumInformation"]
    fields = [(_words(k), v) for k, v in row.items() if k not in ("number", "checksumInformation")]
    fields += [(_words(k), v) for k, v in info.items()]
    return _item_page(
        request, session, place, "record_item.html", f"{label} {record_id}", row, fields=fields
    )
