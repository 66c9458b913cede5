"""This site's bulk jobs in the admin REST API, under `current` as its failures are:
`GET /api/v4/geo_nodes/current/bulk_jobs` (paginated, `state` filters), `GET …/bulk_jobs/:id`
and `POST …/bulk_jobs/:id/cancel`, with the `/api/v4/geo_sites` alias. Jobs are created by the
CLI and GraphQL; errors are GitLab's `{"message": …}`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from geosync.errors import InvalidTransition, NotFound
from geosync.jobs import BulkJob, JobState, cancel_job, get_job, job_counts, list_jobs
from geosync.web.deps import get_geo
from geosync.web.openapi import errors
from geosync.web.pagination import Page, page_params

MAX_ID = 2**31 - 1
PATH = "/current/bulk_jobs"
StateName = Literal["queued", "running", "done", "cancelled", "failed"]


class JobFiltersOut(BaseModel):
    """The rows a job touches beyond its action's own condition (null: no filter)."""

    ids: list[int] | None
    replication_state: str | None
    verification_state: str | None


class BulkJobOut(BaseModel):
    """A bulk resync or reverify job of this site; `total` is the estimate made at creation."""

    id: int
    replicable_name: str
    action: Literal["resync", "reverify"]
    filters: JobFiltersOut
    created_by: str | None
    state: StateName
    processed: int
    total: int
    last_key: int | None
    error: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str


def _job_or_404(job_id: int, find: Any) -> BulkJob:
    try:
        if job_id > MAX_ID:
            raise NotFound
        job: BulkJob = find(job_id)
    except NotFound:
        raise HTTPException(404, f"404 Bulk job {job_id} Not Found") from None
    return job


def add_job_routes(router: APIRouter) -> None:
    """Add the bulk job endpoints to one collection's router (admin token required there)."""

    @router.get(PATH, response_model=list[BulkJobOut], responses=errors(400))
    def list_bulk_jobs(
        request: Request,
        page: Annotated[Page, Depends(page_params)],
        state: Annotated[list[StateName] | None, Query(description="Only these states.")] = None,
    ) -> Response:
        """This site's bulk jobs, newest first (paginated)."""
        geo = get_geo(request)
        states = None if not state else [JobState(s) for s in state]
        counts = job_counts(geo)
        total = sum(n for s, n in counts.items() if states is None or s in states)
        found = list_jobs(geo, states=states, limit=page.per_page, offset=page.offset)
        items = [job.as_json() for job in found]
        return JSONResponse(items, headers=page.headers(total, request.url))

    @router.get(f"{PATH}/{{job_id:int}}", response_model=BulkJobOut, responses=errors(404))
    def get_bulk_job(job_id: int, request: Request) -> Response:
        """One bulk job of this site."""
        geo = get_geo(request)
        return JSONResponse(_job_or_404(job_id, lambda i: get_job(geo, i)).as_json())

    @router.post(
        f"{PATH}/{{job_id:int}}/cancel",
        response_model=BulkJobOut,
        responses={
            **errors(404, 409),
            409: {**errors(409)[409], "description": "The job already finished"},
        },
    )
    def cancel_bulk_job(job_id: int, request: Request) -> Response:
        """Cancel a queued or running job; it stops before its next batch (409 when it
        already finished)."""
        geo = get_geo(request)
        try:
            job = _job_or_404(job_id, lambda i: cancel_job(geo, i))
        except InvalidTransition as exc:
            raise HTTPException(409, f"409 Conflict - {exc}") from None
        return JSONResponse(job.as_json())
