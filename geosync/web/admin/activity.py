"""The Activity page (`/admin/geo/activity`): per secondary and data type, a chart of its synced
and failed counts over the last hours, from the primary's status history.

The history lives in the primary's main database, which a secondary reads too, so the page is
the same on every site. Each chart is inline SVG (`charts.line_chart`) with a table of the same
numbers, hour by hour, for screen readers and for copying.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup

from geosync.nodes import Node, NodeStore
from geosync.status_history import HistoryPoint, history_since
from geosync.web.admin.charts import Point, Series, line_chart, thin
from geosync.web.admin.pages import page
from geosync.web.admin.session import PREFIX, AdminSession, current_session
from geosync.web.deps import get_geo

if TYPE_CHECKING:
    from geosync.replicator import Replicator

router = APIRouter(include_in_schema=False)
DEFAULT_HOURS = 6
MAX_HOURS = 48
#: The most points one line draws (about one per unit of the chart's width).
MAX_POINTS = 240
EMPTY = "no history yet: the primary records the sites' statuses every minute"


class BadHours(ValueError):
    """An `hours` parameter that is not a whole number from 1 to `MAX_HOURS`."""


@dataclass(frozen=True)
class Row:
    """One line of a chart's table: the counts at an hour (or now)."""

    at: datetime
    synced: int | None
    failed: int | None


@dataclass(frozen=True)
class Chart:
    """One data type of one node: its SVG, its description and its numbers."""

    title: str
    description: str
    svg: Markup
    synced: int | None
    failed: int | None
    rows: list[Row]


@dataclass(frozen=True)
class NodeActivity:
    """A secondary and its charts, one per data type."""

    node: Node
    charts: list[Chart]


def parse_hours(raw: str | None) -> int:
    """The `hours` parameter, or `BadHours`."""
    if raw is None or raw.strip() == "":
        return DEFAULT_HOURS
    text = raw.strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_HOURS:
        raise BadHours(f"hours must be a whole number from 1 to {MAX_HOURS}, not {raw[:20]!r}")
    return int(text)


@router.get(f"{PREFIX}/activity", response_class=HTMLResponse)
def _activity(
    request: Request, hours: str | None = None, session: AdminSession = Depends(current_session)
) -> HTMLResponse:
    try:
        span = parse_hours(hours)
    except BadHours as exc:
        return page(request, session, "error.html", 400, title="Activity", message=str(exc))
    geo = get_geo(request)
    end = geo.clock.now()
    start = end - timedelta(hours=span)
    with geo.main_engine.connect() as conn:
        secondaries = [node for node in NodeStore(geo, conn).list() if not node.primary]
        history = history_since(conn, start, [node.id for node in secondaries])
    activity = [
        NodeActivity(node, [chart_of(node, r, history[node.id], start, end) for r in geo.catalog])
        for node in secondaries
        if node.id in history
    ]
    return page(
        request,
        session,
        "activity.html",
        title="Activity",
        hours=span,
        max_hours=MAX_HOURS,
        activity=activity,
        empty=EMPTY,
    )


def series_of(points: Sequence[HistoryPoint], field: str) -> list[Point]:
    """The (time, value) pairs of one count, leaving out minutes whose status lacked it."""
    found = ((p.recorded_at, p.value(field)) for p in points)
    return [(moment, value) for moment, value in found if value is not None]


def chart_of(
    node: Node,
    replicator: type[Replicator],
    points: Sequence[HistoryPoint],
    start: datetime,
    end: datetime,
) -> Chart:
    """The chart of one data type of `node` from `start` to `end`."""
    prefix = replicator.status_field_prefix
    synced = series_of(points, prefix + "synced_count")
    failed = series_of(points, prefix + "failed_count")
    lines = [
        Series("synced", "synced", thin(synced, MAX_POINTS)),
        Series("failed", "failed", thin(failed, MAX_POINTS)),
    ]
    title = replicator.replicable_name_plural.replace("_", " ").capitalize()
    now_synced, now_failed = lines[0].current, lines[1].current
    description = (
        f"{title} on {node.name}: synced and failed over the last"
        f" {_hours_text(start, end)}; now {_count(now_synced)} synced, {_count(now_failed)} failed"
    )
    # line_chart escapes every text it writes, so its SVG goes into the page as it is.
    svg = Markup(line_chart(lines, start, end, description))
    return Chart(title, description, svg, now_synced, now_failed, hourly_rows(synced, failed, end))


def hourly_rows(synced: Sequence[Point], failed: Sequence[Point], end: datetime) -> list[Row]:
    """The counts at each whole hour of the series (the last value before it) and now."""
    moments = sorted({moment for moment, _ in [*synced, *failed]})
    if not moments:
        return []
    hour = moments[0].replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    marks = []
    while hour < end:
        marks.append(hour)
        hour += timedelta(hours=1)
    marks.append(end)
    return [Row(mark, _at(synced, mark), _at(failed, mark)) for mark in marks]


def _at(points: Sequence[Point], moment: datetime) -> int | None:
    value = None
    for at, count in points:
        if at > moment:
            break
        value = count
    return value


def _count(value: int | None) -> str:
    return "no" if value is None else f"{value:,}"


def _hours_text(start: datetime, end: datetime) -> str:
    hours = round((end - start).total_seconds() / 3600)
    return "hour" if hours == 1 else f"{hours} hours"
