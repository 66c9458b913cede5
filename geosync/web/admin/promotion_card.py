"""The promotion plan on this secondary's own site card: the verdict and what would be lost.

The cards refresh every few seconds and a plan walks every in-scope id, so a plan is reused for
`REUSE_FOR` seconds (the card says when it was computed). A plan that cannot be computed now (a
database away) is shown as not computed, never as safe.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from geosync.db.engines import error_line
from geosync.errors import GeoError
from geosync.log import get_logger
from geosync.promotion_plan import PromotionPlan, promotion_plan

if TYPE_CHECKING:
    from geosync.app import Geo

log = get_logger("admin")
#: Seconds a computed plan is shown before it is computed again.
REUSE_FOR = 30.0


@dataclass(frozen=True)
class PlanOnCard:
    """The plan to show, or why there is none."""

    plan: PromotionPlan | None
    problem: str | None = None


_cache: weakref.WeakKeyDictionary[Geo, tuple[float, PlanOnCard]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def plan_on_card(geo: Geo, now: datetime) -> PlanOnCard | None:
    """This site's plan for its own card; None on a primary (it has nothing to promote)."""
    if not geo.has_tracking_database:
        return None
    moment = now.timestamp()
    with _lock:
        kept = _cache.get(geo)
    if kept is not None and 0 <= moment - kept[0] < REUSE_FOR:
        return kept[1]
    try:
        shown = PlanOnCard(promotion_plan(geo))
    except (SQLAlchemyError, GeoError) as exc:
        log.warning("promotion plan not computed", error=error_line(exc))
        shown = PlanOnCard(None, error_line(exc))
    with _lock:
        _cache[geo] = (moment, shown)
    return shown
