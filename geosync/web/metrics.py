"""`GET /metrics`: the site's Prometheus metrics (status gauges, lag histogram, counters)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from geosync.metrics import metrics_for
from geosync.web.deps import get_geo

router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus text exposition of this site's metrics."""
    registry = metrics_for(get_geo(request)).registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
