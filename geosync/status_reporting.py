"""Status reporting: every minute a primary stores its own status and a secondary posts its
status to the primary (`POST /api/v4/geo/status`, node-authenticated), where it is stored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from geosync.auth import node_header
from geosync.errors import ConfigurationError, GeoError
from geosync.log import get_logger
from geosync.loops import HOUSEKEEPING_START
from geosync.status import NodeStatus, compute_status, store_status

if TYPE_CHECKING:
    import httpx

    from geosync.app import Geo
    from geosync.worker import Worker

log = get_logger("status")

#: The node-authenticated endpoint on the primary that receives secondaries' statuses.
STATUS_PATH = "/api/v4/geo/status"
#: Seconds between two status computations (GitLab: every minute).
REPORT_INTERVAL = 60.0
REQUEST_TIMEOUT = 30.0


def report_to_primary(geo: Geo, status: NodeStatus, client: httpx.Client) -> None:
    """Post a secondary's `status` to the primary, or raise `GeoError` saying why it failed."""
    import httpx

    primary = geo.primary_node()
    if primary is None:
        raise ConfigurationError("no primary node is registered: cannot report status")
    url = primary.effective_internal_url.rstrip("/") + STATUS_PATH
    headers = {"Authorization": node_header(geo, STATUS_PATH)}
    try:
        response = client.post(url, json=status.values, headers=headers)
    except httpx.HTTPError as exc:
        raise GeoError(f"cannot reach the primary at {url}: {type(exc).__name__}") from exc
    if response.status_code != 201:
        raise GeoError(f"the primary refused the status: HTTP {response.status_code}")


def store_own_status(geo: Geo, status: NodeStatus) -> None:
    """Keep the primary's own status in its `geo_node_statuses`."""
    with geo.main() as conn:
        store_status(conn, status, geo.clock.now())


class StatusLoop:
    """Background loop (both roles): compute this node's status every minute and deliver it."""

    name = "status"
    start_after = HOUSEKEEPING_START

    def __init__(self, geo: Geo, worker: Worker | None = None) -> None:
        self.geo = geo
        self.worker = worker
        self._client: httpx.Client | None = None

    @property
    def client(self) -> httpx.Client:
        """The HTTP client for reports, made on first use (httpx stays out of a worker's start)."""
        if self._client is None:
            import httpx

            self._client = httpx.Client(timeout=REQUEST_TIMEOUT)
        return self._client

    def run_once(self) -> float:
        """Compute and deliver one status; a failure is logged and counted, never raised."""
        from geosync.metrics import count_status_failed

        try:
            status = compute_status(self.geo)
            if self.geo.has_tracking_database:
                report_to_primary(self.geo, status, self.client)
            else:
                store_own_status(self.geo, status)
        except (GeoError, SQLAlchemyError) as exc:
            count_status_failed(self.geo)
            log.warning("status not delivered", error=str(exc) or type(exc).__name__)
        return REPORT_INTERVAL

    def close(self) -> None:
        """Release the HTTP connections (called by the worker when the loop ends)."""
        if self._client is not None:
            self._client.close()
