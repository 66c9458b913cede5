"""Node status (ARCHITECTURE.md §9): GitLab's fields, computed from indexed aggregates, and health.

A status is a flat mapping of GitLab's field names to JSON values (counts, epoch seconds,
percentages as numbers). It is computed every minute and on demand; the primary stores every
node's latest status in `geo_node_statuses`, and a status older than an hour reads as unhealthy.
"""

from __future__ import annotations

import functools
import math
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, Engine, Table, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from geosync import status_history
from geosync.db.engines import is_sqlite
from geosync.db.tables import geo_events, geo_node_statuses
from geosync.errors import ConfigurationError
from geosync.flags import flag_enabled
from geosync.log import get_logger
from geosync.object_sync import left_count, object_storage_names
from geosync.registry import Registry
from geosync.scrub import scrub_counts
from geosync.secondary.cursor_state import last_moved_at, reported_position
from geosync.states import SyncState, VerificationState

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.catalog import Catalog
    from geosync.nodes import Node
    from geosync.replicator import Replicator

log = get_logger("status")
T = TypeVar("T")

#: A status not refreshed for this long makes its node unhealthy.
STALE_AFTER = timedelta(hours=1)
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
PERCENTAGE_SUFFIX = "_in_percentage"

#: Per-replicator fields, after the `<plural>_` prefix, in GitLab's order.
REPLICATOR_FIELDS = (
    "count",
    "checksum_total_count",
    "checksummed_count",
    "checksum_failed_count",
    "synced_count",
    "failed_count",
    "registry_count",
    "verification_total_count",
    "verified_count",
    "verification_failed_count",
    "synced_in_percentage",
    "verified_in_percentage",
    "oldest_unsynced_age_seconds",
    # Beyond GitLab: the scrub (`geosync.scrub`).
    "oldest_verification_age_seconds",
    "verification_stale_count",
    "scrub_due_count",
    "scrub_found_bad_count",
    # Beyond GitLab, on a secondary with `sync_object_storage` off: the primary's blobs of the
    # type that are in an object store, left to its own replication (`geosync.object_sync`).
    "left_to_object_storage_count",
)

#: This site's bulk jobs by state (`geosync.jobs`): beyond GitLab.
JOB_FIELDS = (
    "bulk_jobs_queued_count",
    "bulk_jobs_running_count",
    "bulk_jobs_done_count",
    "bulk_jobs_cancelled_count",
    "bulk_jobs_failed_count",
)

#: Node-wide fields.
NODE_FIELDS = (
    "geo_node_id",
    "healthy",
    "health",
    "health_status",
    "db_replication_lag_seconds",
    "last_event_id",
    "last_event_timestamp",
    "cursor_last_event_id",
    "cursor_last_event_timestamp",
    "last_successful_status_check_timestamp",
    "version",
    "revision",
    "selective_sync_type",
    "updated_at",
    "scrub_period_seconds",
    *JOB_FIELDS,
    # Beyond GitLab, on a secondary: events of the primary's log not yet read (the id distance
    # from the cursor to the newest event: gaps in the ids make it an upper bound) ...
    "cursor_backlog_events",
    # ... and whether its primary and its copy of the primary's database answer (1 or 0, null
    # before the first probe) and for how long they have not (`geosync.secondary.reachability`).
    "primary_reachable",
    "primary_unreachable_seconds",
    "main_database_reachable",
    "main_database_unreachable_seconds",
    # ... and, on every site, its blob storages that are object stores, comma-separated (a
    # secondary reads the primary's to know what `sync_object_storage` off leaves to the store).
    "object_storages",
)

_LAG_SQL = text(
    "SELECT pg_is_in_recovery(),"
    " CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0"
    " ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) END"
)


def replicator_fields(replicator: type[Replicator]) -> list[str]:
    """The status fields of one replicator (`uploads_count`, `uploads_synced_count`, ...)."""
    return [replicator.status_field_prefix + name for name in REPLICATOR_FIELDS]


def status_fields(catalog: Catalog) -> list[str]:
    """Every status field of a site with this catalog, node fields first."""
    fields = list(NODE_FIELDS)
    for replicator in catalog:
        fields.extend(replicator_fields(replicator))
    return fields


def epoch(moment: datetime | None) -> int | None:
    """Epoch seconds, as GitLab reports its `*_timestamp` fields."""
    return None if moment is None else int(moment.timestamp())


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a `Z`, as GitLab's JSON has them."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def percentage(part: int | None, total: int | None) -> float | None:
    """`part` of `total` in percent, two decimals; 0 when there is nothing to count."""
    if part is None or total is None:
        return None
    return round(part * 100.0 / total, 2) if total else 0.0


def format_percentage(value: float | None) -> str:
    """A percentage as GitLab's API writes it: "97.56%" (null counts read "0.00%")."""
    return f"{(value or 0.0):.2f}%"


@dataclass(frozen=True)
class NodeStatus:
    """One node's status: GitLab's fields (`values`) and when it was last reported."""

    values: dict[str, Any]
    reported_at: datetime

    def __getitem__(self, field: str) -> Any:
        return self.values[field]

    def get(self, field: str, default: Any = None) -> Any:
        """The value of `field`, or `default` when it is absent."""
        return self.values.get(field, default)

    @property
    def geo_node_id(self) -> int:
        """The node this status belongs to."""
        return int(self.values["geo_node_id"])

    @property
    def healthy(self) -> bool:
        """Whether the node reported itself healthy and recently enough."""
        return bool(self.values.get("healthy"))

    def aged(self, now: datetime) -> NodeStatus:
        """This status as seen at `now`: unhealthy when older than `STALE_AFTER`."""
        if now - self.reported_at <= STALE_AFTER:
            return self
        minutes = int((now - self.reported_at).total_seconds() // 60)
        message = (
            f"Status not updated for {minutes} minutes (last update {iso(self.reported_at)});"
            " is the node's worker running?"
        )
        return replace(self, values={**self.values, **health_fields([message])})

    def for_api(self) -> dict[str, Any]:
        """The status as GitLab's API shows it: percentages as "97.56%" strings."""
        return {
            key: format_percentage(value) if key.endswith(PERCENTAGE_SUFFIX) else value
            for key, value in self.values.items()
        }


def health_fields(problems: list[str]) -> dict[str, Any]:
    """`healthy`, `health` and `health_status` for a list of problems (none: healthy)."""
    if not problems:
        return {"healthy": True, "health": HEALTHY, "health_status": HEALTHY}
    return {"healthy": False, "health": "; ".join(problems), "health_status": UNHEALTHY}


# -- computing ---------------------------------------------------------------------------------


def compute_status(geo: Geo) -> NodeStatus:
    """This site's status now; problems that stop a part from being counted make it unhealthy."""
    node = geo.current_node()
    if node is None:
        raise ConfigurationError(
            f"node {geo.settings.node_name!r} is not registered: run `geosync node add` on the"
            " primary"
        )
    return StatusComputation(geo, node).run()


class StatusComputation:
    """One computation of a node's status; each part is guarded so one failure is reported,
    not raised."""

    def __init__(self, geo: Geo, node: Node) -> None:
        self.geo = geo
        self.node = node
        self.now = geo.clock.now()
        self.problems: list[str] = []
        self.secondary = geo.has_tracking_database

    def run(self) -> NodeStatus:
        """Compute every field."""
        values: dict[str, Any] = dict.fromkeys(status_fields(self.geo.catalog))
        values.update(
            geo_node_id=self.node.id,
            version=_version(),
            revision=_revision(),
            selective_sync_type=self.node.selective_sync_type,
            scrub_period_seconds=int(self.geo.settings.scrub_period.total_seconds()),
            object_storages=",".join(object_storage_names(self.geo.settings)),
        )
        enabled = self._guard("feature flags", self._flags, None)
        values.update(self._guard("event log", self._event_fields, dict[str, Any]()))
        for replicator in self.geo.catalog:
            # Flags unknown (the main database away): a secondary still counts its registries,
            # so that a stalled secondary stays visible (its oldest unsynced item's age).
            if (enabled is None and self.secondary) or (enabled or {}).get(
                replicator.replicable_name
            ):
                label = replicator.replicable_name_plural
                counts = functools.partial(self._counts, replicator)
                values.update(self._guard(label, counts, dict[str, Any]()))
        values.update(self._guard("bulk jobs", self._job_fields, dict[str, Any]()))
        if self.secondary:
            cursor = functools.partial(self._cursor_fields, values)
            values.update(self._guard("event cursor", cursor, dict[str, Any]()))
            values.update(self._guard("site reachability", self._reachability, dict[str, Any]()))
        values["db_replication_lag_seconds"] = self._guard(
            "database replication lag", lambda: replication_lag_seconds(self.geo.main_engine), None
        )
        values.update(health_fields(self.problems))
        values["last_successful_status_check_timestamp"] = epoch(self.now)
        values["updated_at"] = iso(self.now)
        return NodeStatus(values, self.now)

    def _guard(self, part: str, compute: Callable[[], T], fallback: T) -> T:
        try:
            return compute()
        except SQLAlchemyError as exc:
            log.warning("status part failed", part=part, error=type(exc).__name__)
            self.problems.append(f"{part}: {type(exc).__name__}: {_first_line(exc)}")
            return fallback

    def _flags(self) -> dict[str, bool]:
        with self.geo.main_engine.connect() as main:
            return {r.replicable_name: flag_enabled(main, r) for r in self.geo.catalog}

    def _event_fields(self) -> dict[str, Any]:
        with self.geo.main_engine.connect() as main:
            newest = main.execute(
                select(geo_events.c.id, geo_events.c.created_at)
                .order_by(geo_events.c.id.desc())
                .limit(1)
            ).first()
        if newest is None:
            return {"last_event_id": None, "last_event_timestamp": None}
        return {"last_event_id": int(newest.id), "last_event_timestamp": epoch(newest.created_at)}

    def _counts(self, replicator: type[Replicator]) -> dict[str, Any]:
        if self.secondary:
            with self.geo.tracking_engine.connect() as tracking:
                counts = registry_counts(self.geo, tracking, replicator, self.now)
            if replicator.strategy == "blob":
                with self.geo.main_engine.connect() as main:
                    counts["left_to_object_storage_count"] = left_count(main, self.node, replicator)
        else:
            with self.geo.main_engine.connect() as main:
                counts = primary_counts(self.geo, main, replicator, self.now)
        return {replicator.status_field_prefix + key: value for key, value in counts.items()}

    def _job_fields(self) -> dict[str, Any]:
        from geosync.jobs import job_counts

        return {f"bulk_jobs_{state}_count": n for state, n in job_counts(self.geo).items()}

    def _cursor_fields(self, values: dict[str, Any]) -> dict[str, Any]:
        with self.geo.tracking_engine.connect() as tracking:
            cursor = reported_position(tracking)
            moved_at = last_moved_at(tracking)
        if cursor is None:  # the log cursor has not run yet
            return {"cursor_last_event_id": None, "cursor_last_event_timestamp": None}
        try:
            with self.geo.main_engine.connect() as main:
                created_at = main.execute(
                    select(geo_events.c.created_at).where(geo_events.c.id == cursor)
                ).scalar()
                oldest = main.execute(select(func.min(geo_events.c.id))).scalar()
        except SQLAlchemyError:  # the main database is away ("event log" says so): the cursor
            created_at = oldest = None  # is still this site's to show
        if oldest is not None and cursor < int(oldest) - 1:
            self.problems.append(
                f"Event log cursor ({cursor}) fell behind the pruned event log (oldest event"
                f" {oldest}); the consistency sweep is restoring what it missed"
            )
        moment = created_at if created_at is not None else (moved_at if cursor else None)
        newest = values.get("last_event_id")
        backlog = max(0, int(newest) - cursor) if newest is not None else None
        return {
            "cursor_last_event_id": cursor,
            "cursor_last_event_timestamp": epoch(moment),
            "cursor_backlog_events": backlog,
        }

    def _reachability(self) -> dict[str, Any]:
        """What the workers' last probes found (`geosync.secondary.reachability`); a target
        that is away makes the node unhealthy, saying since when."""
        from geosync.secondary.reachability import DESCRIPTIONS, TARGETS, stored_states

        states = stored_states(self.geo)
        fields: dict[str, Any] = {}
        for target in TARGETS:
            state = states.get(target)
            fields[f"{target}_reachable"] = None if state is None else int(state.reachable)
            away = None if state is None else state.unreachable_seconds(self.now)
            fields[f"{target}_unreachable_seconds"] = away
            if state is not None and not state.reachable:
                since = state.last_reachable_at or state.changed_at
                self.problems.append(
                    f"{DESCRIPTIONS[target].capitalize()} is unreachable (last reachable"
                    f" {iso(since)}, {away} s ago: {state.error}); syncs that need it are paused"
                    " and resume as soon as it answers"
                )
        return fields


def primary_counts(
    geo: Geo, main: Connection, replicator: type[Replicator], now: datetime
) -> dict[str, Any]:
    """A primary's counts of one replicator: its replicables and their checksums; verified
    means checksummed within the scrub period."""
    query = replicator.available_replicables()
    count = int(main.execute(select(func.count()).select_from(query.subquery())).scalar_one())
    counts: dict[str, Any] = dict.fromkeys(REPLICATOR_FIELDS)
    counts["count"] = count
    if replicator.verification_enabled:
        from geosync.verification import primary_verifiable

        target = primary_verifiable(geo, replicator)
        states = target.count_by_state(main)
        total = sum(n for state, n in states.items() if state != VerificationState.DISABLED)
        scrub = scrub_counts(main, target, geo.settings.scrub_period, now)
        recent = states[VerificationState.SUCCEEDED] - scrub["verification_stale_count"]
        counts.update(
            checksum_total_count=total,
            checksummed_count=states[VerificationState.SUCCEEDED],
            checksum_failed_count=states[VerificationState.FAILED],
            verified_in_percentage=percentage(recent, total),
            **scrub,
        )
    return counts


def registry_counts(
    geo: Geo, tracking: Connection, replicator: type[Replicator], now: datetime
) -> dict[str, Any]:
    """A secondary's counts of one replicator from its registry (state-indexed aggregates)."""
    registry = Registry(geo, replicator)
    by_states = registry.count_by_states(tracking)
    by_state = dict.fromkeys(SyncState, 0)
    for (state, _), n in by_states.items():
        by_state[state] += n
    total = sum(by_state.values())
    synced = by_state[SyncState.SYNCED]
    counts: dict[str, Any] = dict.fromkeys(REPLICATOR_FIELDS)
    counts.update(
        count=total,
        registry_count=total,
        synced_count=synced,
        failed_count=by_state[SyncState.FAILED],
        synced_in_percentage=percentage(synced, total),
        oldest_unsynced_age_seconds=_oldest_unsynced_age(registry, tracking, now),
    )
    if replicator.verification_enabled:
        from geosync.verification import registry_verifiable

        target = registry_verifiable(geo, replicator)
        # Verifiable on a secondary means synced (`Verifiable.eligible`): the same GROUP BY.
        verification = dict.fromkeys(VerificationState, 0)
        for (state, check), n in by_states.items():
            if state == SyncState.SYNCED:
                verification[check] += n
        verifiable = sum(
            n for state, n in verification.items() if state != VerificationState.DISABLED
        )
        # "Verified" means verified within the scrub period: older checks prove little.
        scrub = scrub_counts(tracking, target, geo.settings.scrub_period, now)
        verified = verification[VerificationState.SUCCEEDED] - scrub["verification_stale_count"]
        counts.update(
            verification_total_count=verifiable,
            verified_count=verified,
            verification_failed_count=verification[VerificationState.FAILED],
            verified_in_percentage=percentage(verified, verifiable),
            **scrub,
        )
    return counts


def _oldest_unsynced_age(registry: Registry, tracking: Connection, now: datetime) -> int | None:
    since = registry.oldest_unsynced_since(tracking)
    return None if since is None else max(0, int((now - since).total_seconds()))


def replication_lag_seconds(engine: Engine) -> int | None:
    """Replication lag of a PostgreSQL standby (§14), or None (SQLite, not a standby, unknown).

    0 when everything received has been replayed; otherwise the age of the last replayed
    transaction, rounded up so that a lagging standby never reads 0.
    """
    if is_sqlite(engine):
        return None
    with engine.connect() as conn:
        in_recovery, lag = conn.execute(_LAG_SQL).one()
    if not in_recovery or lag is None:
        return None
    return max(0, math.ceil(float(lag)))


@functools.cache
def _version() -> str:
    from geosync import __version__

    return __version__


@functools.cache
def _revision() -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short=11", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def _first_line(exc: BaseException) -> str:
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


# -- storing and reading -------------------------------------------------------------------------


def store_status(conn: Connection, status: NodeStatus, received_at: datetime) -> None:
    """Keep `status` as its node's latest (the primary's `geo_node_statuses`) and append its
    counts to the node's history (`status_history`)."""
    t = geo_node_statuses
    updated = conn.execute(
        update(t)
        .where(t.c.geo_node_id == status.geo_node_id)
        .values(status=status.values, updated_at=received_at)
    )
    if updated.rowcount == 0:
        # Every worker of a secondary reports: two first reports may race here. The loser's
        # insert does nothing and its update then lands (one statement each, no error).
        inserted = conn.execute(
            _insert_ignoring_duplicates(conn, t).values(
                geo_node_id=status.geo_node_id,
                status=status.values,
                created_at=received_at,
                updated_at=received_at,
            )
        )
        if inserted.rowcount == 0:
            conn.execute(
                update(t)
                .where(t.c.geo_node_id == status.geo_node_id)
                .values(status=status.values, updated_at=received_at)
            )
    status_history.record(conn, status.geo_node_id, status.values, received_at)


def _insert_ignoring_duplicates(conn: Connection, table: Table) -> Any:
    """An INSERT that skips a row whose unique key exists (ON CONFLICT DO NOTHING)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


def load_statuses(
    geo: Geo, conn: Connection, node_ids: Iterable[int] | None = None
) -> list[NodeStatus]:
    """Stored statuses (by node id), each aged at the site's clock: stale ones are unhealthy."""
    t = geo_node_statuses
    query = select(t.c.status, t.c.updated_at).order_by(t.c.geo_node_id)
    if node_ids is not None:
        query = query.where(t.c.geo_node_id.in_(list(node_ids)))
    now = geo.clock.now()
    return [NodeStatus(dict(row.status), row.updated_at).aged(now) for row in conn.execute(query)]


def load_status(geo: Geo, conn: Connection, node_id: int) -> NodeStatus | None:
    """One node's stored status, aged; None if it never reported."""
    found = load_statuses(geo, conn, [node_id])
    return found[0] if found else None


def node_statuses(geo: Geo, *, own_stored: bool = False) -> list[tuple[Node, NodeStatus | None]]:
    """Every node with its latest stored status (aged), None for nodes that never reported.

    This site's own status is computed now, or with `own_stored` taken from storage when
    there is one (the REST API shows what was last reported, as GitLab does).
    """
    from geosync.nodes import NodeStore

    with geo.main_engine.connect() as conn:
        nodes = NodeStore(geo, conn).list()
        stored = {s.geo_node_id: s for s in load_statuses(geo, conn)}
    result: list[tuple[Node, NodeStatus | None]] = []
    for node in nodes:
        status = stored.get(node.id)
        if node.name == geo.settings.node_name and (status is None or not own_stored):
            status = compute_status(geo)
        result.append((node, status))
    return result
