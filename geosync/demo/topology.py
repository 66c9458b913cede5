"""The demo's two site topologies, built on this machine: embedded and production.

- **embedded** (the default): one SQLite main database that the primary writes and the
  secondary opens read-only, a SQLite tracking database, one web process and one worker per site.
- **production** (`geosync demo --postgres`): PostgreSQL as an operator runs it, in throwaway
  clusters on free loopback ports (ARCHITECTURE.md §14): the primary's main database, a
  streaming standby of it (`pg_basebackup -R -X stream`) that is the secondary's main database,
  and a tracking database on a cluster of its own; `geosync serve --processes 2` on each site,
  three `geosync worker` processes on the secondary sharing the tracking database.

The end-to-end test of the production topology and the lag benchmark build theirs here too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geosync.app import Geo
from geosync.demo.runner import DemoDatabases, Site, prepare
from geosync.errors import GeoError
from geosync.testing.pg_standby import (
    Cluster,
    StandbyPair,
    missing_reason,
    streaming_standby,
    throwaway_cluster,
)

if TYPE_CHECKING:
    from geosync.demo.object_storage import DemoBuckets

MAIN_DATABASE = "geosync_main"
TRACKING_DATABASE = "geosync_tracking"
#: The production topology's process counts.
WEB_PROCESSES = 2
SECONDARY_WORKERS = 3


@dataclass(frozen=True)
class PostgresClusters:
    """The production topology's clusters: the primary and its standby, and the tracking one."""

    pair: StandbyPair
    tracking: Cluster

    def databases(self) -> DemoDatabases:
        """Where each site's databases are on these clusters."""
        return DemoDatabases(
            primary_main=self.pair.primary.url(MAIN_DATABASE),
            secondary_main=self.pair.standby.url(MAIN_DATABASE),
            tracking=self.tracking.url(TRACKING_DATABASE),
            replayed=self.pair.wait_for_replay,
        )


def postgres_missing() -> str | None:
    """One line saying why the production topology cannot be built here, or None."""
    reason = missing_reason()
    return None if reason is None else f"the production topology needs {reason}"


@contextmanager
def postgres_clusters() -> Iterator[PostgresClusters]:
    """Make and start the three clusters with their empty databases; removed at the end."""
    reason = postgres_missing()
    if reason is not None:
        raise GeoError(reason)
    with streaming_standby() as pair, throwaway_cluster() as tracking:
        pair.primary.scalar(f"CREATE DATABASE {MAIN_DATABASE}")
        tracking.scalar(f"CREATE DATABASE {TRACKING_DATABASE}")
        pair.wait_for_replay()
        yield PostgresClusters(pair, tracking)


@dataclass
class Topology:
    """Both sites, prepared (databases, nodes, config files), their processes not yet started."""

    root: Path
    primary: Site
    secondary: Site
    clusters: PostgresClusters | None
    #: The S3 server and buckets the sites keep their blobs in (`--object-storage`), or None.
    buckets: DemoBuckets | None = None
    _geos: dict[str, Geo] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        """Where every process of both sites writes its log."""
        return self.root / "logs"

    @property
    def sites(self) -> tuple[Site, Site]:
        """The primary, then the secondary (the order they start in)."""
        return self.primary, self.secondary

    def geo(self, site: Site) -> Geo:
        """A `Geo` of `site` for this process (the application's side, status, checks)."""
        found = self._geos.get(site.name)
        if found is None:
            found = self._geos[site.name] = Geo(site.settings)
        return found

    def start(self) -> None:
        """Start the primary's processes, wait until it listens, then the secondary's."""
        for site in self.sites:
            site.start(self.logs)
            site.wait_serving()

    def stop(self) -> None:
        """Stop the secondary's processes, then the primary's, and close this process's
        connections."""
        for site in reversed(self.sites):
            site.stop()
        for geo in self._geos.values():
            geo.dispose()


@contextmanager
def topology(
    root: Path,
    *,
    postgres: bool = False,
    object_storage: bool = False,
    node: dict[str, Any] | None = None,
    **settings: Any,
) -> Iterator[Topology]:
    """Prepare the embedded or (with `postgres`) the production topology under `root`; at
    the end every process is stopped and the clusters are removed. With `object_storage` the
    sites keep their blobs in buckets of an S3 server on loopback (moto's, stopped at the end),
    and the secondary copies them itself (`sync_object_storage`: the server does not replicate).
    `node` sets fields of the secondary's node (capacities), `settings` those of both sites."""
    with ExitStack() as stack:
        clusters = stack.enter_context(postgres_clusters()) if postgres else None
        databases = clusters.databases() if clusters is not None else None
        buckets = None
        if object_storage:
            from geosync.demo.object_storage import demo_buckets

            buckets = stack.enter_context(demo_buckets())
            node = {**(node or {}), "sync_object_storage": True}
        primary, secondary = prepare(root, databases, node, buckets, **settings)
        if clusters is not None:
            primary.web_processes = secondary.web_processes = WEB_PROCESSES
            secondary.workers = SECONDARY_WORKERS
        built = Topology(root, primary, secondary, clusters, buckets)
        built.logs.mkdir(parents=True, exist_ok=True)
        stack.callback(built.stop)
        yield built
