"""The jobs page: this site's running and recent bulk jobs, each with its progress, which
updates itself while the job runs, and a Cancel button while it can still be cancelled."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from geosync.errors import NotFound
from geosync.web.admin.pages import graphql, notices_of, page
from geosync.web.admin.session import PREFIX, AdminSession, current_session, form_of
from geosync.web.deps import get_geo

if TYPE_CHECKING:
    from geosync.catalog import Catalog

router = APIRouter(include_in_schema=False)
JOB_FIELDS = (
    "id replicableName action state filters { ids replicationState verificationState }"
    " processed total createdBy error createdAt startedAt finishedAt updatedAt"
)
ACTIVE = ("QUEUED", "RUNNING")


def _job(data: dict[str, Any], catalog: Catalog | None = None) -> dict[str, Any]:
    """A job as the templates show it; with `catalog`, a link to its type's list."""
    total, processed = int(data["total"]), int(data["processed"])
    name = data["replicableName"]
    return {
        **data,
        "number": int(str(data["id"]).rsplit("/", 1)[-1]),
        "active": data["state"] in ACTIVE,
        "percent": 100 if total == 0 and data["state"] == "DONE" else _percent(processed, total),
        "label": name.replace("_", " "),
        "list_url": _list_url(catalog, name) if catalog is not None else None,
    }


def _list_url(catalog: Catalog, name: str) -> str | None:
    try:
        return f"{PREFIX}/replication/{catalog.get(name).replicable_name_plural}"
    except NotFound:  # a job of a type no longer in the catalog
        return None


def _percent(processed: int, total: int) -> int:
    return min(100, processed * 100 // total) if total else 0


@router.get(PREFIX + "/jobs", response_class=HTMLResponse)
async def _jobs(request: Request, session: AdminSession = Depends(current_session)) -> Response:
    data = await graphql(request, session, f"{{ geoBulkJobs(first: 50) {{ {JOB_FIELDS} }} }}")
    catalog = get_geo(request).catalog
    jobs = [_job(job, catalog) for job in data["geoBulkJobs"]]
    return page(
        request,
        session,
        "jobs.html",
        title="Jobs",
        active=[job for job in jobs if job["active"]],
        finished=[job for job in jobs if not job["active"]],
        **notices_of(request),
    )


@router.get(PREFIX + "/jobs/{job_id:int}/progress", response_class=HTMLResponse)
async def _progress(
    request: Request, job_id: int, session: AdminSession = Depends(current_session)
) -> Response:
    query = f"query($id: ID!) {{ geoBulkJob(id: $id) {{ {JOB_FIELDS} }} }}"
    found = (await graphql(request, session, query, {"id": str(job_id)}))["geoBulkJob"]
    if found is None:
        return Response(status_code=404)
    return page(request, session, "job_progress.html", job=_job(found))


@router.post(PREFIX + "/jobs/{job_id:int}/cancel")
async def _cancel(
    request: Request, job_id: int, session: AdminSession = Depends(current_session)
) -> Response:
    await form_of(request, session)
    mutation = "mutation($id: ID!) { geoBulkJobCancel(input: {id: $id}) { errors job { state } } }"
    result = (await graphql(request, session, mutation, {"id": str(job_id)}))["geoBulkJobCancel"]
    if result["errors"]:
        said = f"error={quote(f'Job {job_id}: ' + ' '.join(result['errors']))}"
    else:
        said = f"notice={quote(f'Job {job_id} was cancelled: it stops before its next batch.')}"
    return RedirectResponse(f"{PREFIX}/jobs?{said}", status_code=303)
