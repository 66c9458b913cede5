"""Prometheus metrics of a site: GitLab's `geo_*` status gauges, the end-to-end replication lag
histogram and the counters of skipped events and failed status reports.

Each site (`Geo`) has its own `CollectorRegistry`, so several sites in one process (tests, the
demo) never mix their numbers. Metrics live in the process that counts them: a worker process
that should be scraped separately serves its own with `start_metrics_server`.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from geosync.errors import GeoError, ValidationError
from geosync.log import get_logger
from geosync.status import (
    JOB_FIELDS,
    NODE_FIELDS,
    PERCENTAGE_SUFFIX,
    NodeStatus,
    node_statuses,
    status_fields,
)

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.nodes import Node

log = get_logger("metrics")

STAGES = ("synced", "verified")
#: Lag buckets in seconds: from a second to a day.
LAG_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
#: Node fields that are not numbers to chart.
_NOT_GAUGES = frozenset(NODE_FIELDS) - {
    "db_replication_lag_seconds",
    "last_event_id",
    "last_event_timestamp",
    "cursor_last_event_id",
    "cursor_last_event_timestamp",
    "last_successful_status_check_timestamp",
    *JOB_FIELDS,
    "cursor_backlog_events",
    "primary_reachable",
    "primary_unreachable_seconds",
    "main_database_reachable",
    "main_database_unreachable_seconds",
}

_sites: weakref.WeakKeyDictionary[Geo, SiteMetrics] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def metric_name(field: str) -> str:
    """The gauge of a status field: `geo_` + the field with one trailing `_count`/`_total` cut."""
    for suffix in ("_count", "_total"):
        if field.endswith(suffix):
            return "geo_" + field[: -len(suffix)]
    return "geo_" + field


def gauge_fields(fields: list[str]) -> list[str]:
    """The status fields exported as gauges (numbers; percentages are derived, so left out)."""
    return [f for f in fields if f not in _NOT_GAUGES and not f.endswith(PERCENTAGE_SUFFIX)]


class StatusCollector(Collector):
    """Collects the `geo_*` gauges at scrape time: this node's status computed now and, on the
    primary, every other node's stored status (labels `name` and `url`, both the node name)."""

    def __init__(self, geo: Geo) -> None:
        self._geo = weakref.ref(geo)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One gauge family per numeric status field."""
        geo = self._geo()
        if geo is None:
            return
        statuses = self._statuses(geo)
        for field in gauge_fields(status_fields(geo.catalog)):
            family = GaugeMetricFamily(
                metric_name(field), f"Geo node status field {field}", labels=["name", "url"]
            )
            for node, status in statuses:
                value = status.get(field)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    family.add_metric([node.name, node.name], float(value))
            yield family

    def _statuses(self, geo: Geo) -> list[tuple[Node, NodeStatus]]:
        try:
            pairs = node_statuses(geo)
        except (GeoError, SQLAlchemyError) as exc:
            log.warning("status metrics unavailable", error=str(exc) or type(exc).__name__)
            return []
        current = [(n, s) for n, s in pairs if n.name == geo.settings.node_name and s]
        if geo.has_tracking_database:  # a secondary exports only itself, as GitLab does
            return current
        return [(n, s) for n, s in pairs if s is not None]


class SiteMetrics:
    """The metrics of one site, in a registry of its own."""

    def __init__(self, geo: Geo) -> None:
        self.node_name = geo.settings.node_name
        self.registry = CollectorRegistry()
        self.replication_lag = Histogram(
            "geo_replication_lag_seconds",
            "Seconds from the primary's change to the secondary's synced or verified copy",
            ["replicable_name", "stage"],
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.events_skipped = Counter(
            "geo_events_skipped",
            "Events the log cursor skipped, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.status_failed = Counter(
            "geo_status_failed",
            "Times this node's status could not be computed or delivered",
            ["name", "url"],
            registry=self.registry,
        )
        self.status_failed.labels(self.node_name, self.node_name)  # exported from 0
        self.scrubbed = Counter(
            "geo_scrub_items",
            "Items the scrub re-checksummed in this process, by replicable and outcome",
            ["replicable_name", "outcome"],
            registry=self.registry,
        )
        self.registry.register(StatusCollector(geo))


def metrics_for(geo: Geo) -> SiteMetrics:
    """The metrics of `geo`, created on first use."""
    with _lock:
        found = _sites.get(geo)
        if found is None:
            found = _sites[geo] = SiteMetrics(geo)
        return found


def _site(geo: Geo | None) -> SiteMetrics:
    if geo is None:
        from geosync.app import current_geo

        geo = current_geo()
    return metrics_for(geo)


def observe_replication_lag(
    replicable_name: str, stage: str, seconds: float, *, geo: Geo | None = None
) -> None:
    """Record one item's end-to-end lag; called by the sync service once per finished item.

    `geo` is the site that synced it (default: the process's most recent site).
    """
    if stage not in STAGES:
        raise ValidationError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    _site(geo).replication_lag.labels(replicable_name, stage).observe(max(0.0, seconds))


def count_skipped_event(reason: str, *, geo: Geo | None = None) -> None:
    """Count one event the log cursor skipped (unknown type, malformed payload, ...)."""
    _site(geo).events_skipped.labels(reason).inc()


def count_scrubbed(geo: Geo, replicable_name: str, good: int, bad: int) -> None:
    """Count items the scrub re-checksummed: found good and found bad."""
    site = metrics_for(geo)
    if good:
        site.scrubbed.labels(replicable_name, "good").inc(good)
    if bad:
        site.scrubbed.labels(replicable_name, "bad").inc(bad)


def count_status_failed(geo: Geo) -> None:
    """Count one status that could not be computed or delivered."""
    site = metrics_for(geo)
    site.status_failed.labels(site.node_name, site.node_name).inc()


def start_metrics_server(geo: Geo, port: int, addr: str = "127.0.0.1") -> Any:
    """Serve this site's metrics from the current process (a worker) on `addr:port`."""
    return start_http_server(port, addr=addr, registry=metrics_for(geo).registry)
