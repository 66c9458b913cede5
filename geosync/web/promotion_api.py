"""This site's promotion plan in the admin REST API: `GET /api/v4/geo_nodes/current/promotion_plan`
(and the `/api/v4/geo_sites` alias), what `geosync promote --plan --json` prints. A secondary
answers; a primary has nothing to promote and answers 403, as for its `current/failures`.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from geosync.promotion_plan import promotion_plan
from geosync.web.deps import get_geo
from geosync.web.openapi import errors

PATH = "/current/promotion_plan"


class FailureReasonOut(BaseModel):
    """Failed items of one type that share a reason."""

    reason: str
    count: int


class TypePlanOut(BaseModel):
    """What one data type would lose (counts of items)."""

    replicable_name: str
    replicable_name_plural: str
    replication_enabled: bool
    verification_enabled: bool
    primary_count: int
    in_scope_count: int
    synced_count: int
    not_synced_count: int
    untracked_count: int
    oldest_not_synced_at: str | None
    failed_count: int
    failures: list[FailureReasonOut]
    not_verified_count: int
    verified_outside_scrub_period_count: int
    out_of_scope_count: int
    unread_event_count: int
    losses: list[str]


class DatabaseOut(BaseModel):
    """The main database: a standby with its lag, writable, or the demo's shared SQLite file."""

    kind: Literal["standby", "writable", "shared_sqlite"]
    replication_lag_seconds: int | None


class EventLogOut(BaseModel):
    """The newest event, the cursor and the events between them."""

    last_event_id: int | None
    cursor_last_event_id: int | None
    unread_event_count: int


class PromotionPlanOut(BaseModel):
    """What a promotion of this site now would lose, and the verdict."""

    node_name: str
    computed_at: str
    verdict: Literal["safe", "data would be lost"]
    safe: bool
    losses: list[str]
    database: DatabaseOut
    event_log: EventLogOut
    types: list[TypePlanOut]


def add_promotion_routes(router: APIRouter) -> None:
    """Add the plan's endpoint to one collection's router (admin token required there)."""

    @router.get(PATH, response_model=PromotionPlanOut, responses=errors(403))
    async def get_promotion_plan(request: Request) -> Response:
        """What promoting this site (a secondary) now would lose; a primary answers 403."""
        geo = get_geo(request)
        if not geo.has_tracking_database:
            raise HTTPException(
                403, "403 Forbidden - the promotion plan is a secondary's: this site is the primary"
            )
        plan = await run_in_threadpool(promotion_plan, geo)
        return JSONResponse(plan.as_json())
