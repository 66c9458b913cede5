"""The promotion plan: what this secondary would lose if it were promoted now.

Praefect's `dataloss` in geosync's terms. Per data type, from the primary's rows (read through
this site's replica of the main database), this site's scope and its registry: the items in
scope with no synced copy here (the oldest among them, the failed ones grouped by reason), the
copies not verified within the scrub period (status does not count those as verified either),
the items outside this site's selective sync, and the events the log cursor has not read yet;
beside them the main database's replication lag. The verdict is `safe` only when every one of
them is nothing: a plan never calls safe what it did not check.

The per-type figures come from one ordered walk over the in-scope ids (`WALK_SIZE` a slice,
each slice's registry rows read by id range): the primary's rows and the registry live in two
databases, so "in scope without a synced row" cannot be one query, and aggregate counts alone
would miss a registry row left for a record that is gone.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Connection, func, select, text

from geosync.db.engines import is_sqlite
from geosync.db.tables import geo_events
from geosync.errors import ConfigurationError
from geosync.flags import flag_enabled
from geosync.scope import scoped_query
from geosync.scrub import verified_within
from geosync.secondary.cursor_state import reported_position
from geosync.states import SyncState, VerificationState

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.nodes import Node
    from geosync.replicator import Replicator

#: In-scope ids read per slice of the walk.
WALK_SIZE = 10_000
#: Failure reasons listed per type (the rest are counted under "other reasons").
MAX_REASONS = 10

SAFE = "safe"
DATA_LOSS = "data would be lost"
DatabaseKind = Literal["standby", "writable", "shared_sqlite"]

_STANDBY_SQL = text(
    "SELECT pg_is_in_recovery(),"
    " CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0"
    " ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) END"
)


@dataclass(frozen=True)
class FailureReason:
    """Failed items of one type that share a `last_sync_failure`."""

    reason: str
    count: int


@dataclass
class TypePlan:
    """What one data type would lose; the `*_count` fields are items, not bytes."""

    replicable_name: str
    replicable_name_plural: str
    replication_enabled: bool
    verification_enabled: bool
    primary_count: int = 0
    in_scope_count: int = 0
    synced_count: int = 0
    not_synced_count: int = 0
    untracked_count: int = 0
    oldest_not_synced_at: datetime | None = None
    failed_count: int = 0
    failures: list[FailureReason] = field(default_factory=list)
    not_verified_count: int = 0
    verified_outside_scrub_period_count: int = 0
    out_of_scope_count: int = 0
    unread_event_count: int = 0

    def losses(self) -> list[str]:
        """Each way this type would lose data, as one sentence (empty: nothing)."""
        p = self.replicable_name_plural
        if not self.replication_enabled:
            flag = f"geo_{self.replicable_name}_replication"
            return [
                f"{p}: replication is off ({flag}): {self.primary_count} exist only on the primary"
            ]
        found = []
        if self.not_synced_count:
            found.append(f"{p}: {self.not_synced_count} not synced{self._not_synced_detail()}")
        if self.not_verified_count:
            stale = self.verified_outside_scrub_period_count
            note = f", {stale} of them verified longer ago than the scrub period" if stale else ""
            found.append(f"{p}: {self.not_verified_count} synced but not verified{note}")
        if self.out_of_scope_count:
            found.append(f"{p}: {self.out_of_scope_count} outside this site's selective sync")
        if self.unread_event_count:
            found.append(f"{p}: {self.unread_event_count} events not yet read by the log cursor")
        return found

    def _not_synced_detail(self) -> str:
        parts = []
        if self.untracked_count:
            parts.append(f"{self.untracked_count} not yet in the registry")
        if self.failed_count:
            reasons = "; ".join(f"{r.count} x {r.reason}" for r in self.failures)
            parts.append(f"{self.failed_count} failed ({reasons})")
        if self.oldest_not_synced_at is not None:
            parts.append(f"oldest waiting since {_iso(self.oldest_not_synced_at)}")
        return f" ({', '.join(parts)})" if parts else ""

    def as_json(self) -> dict[str, Any]:
        """The JSON form (`geosync promote --plan --json`, the REST API)."""
        data = {k: v for k, v in vars(self).items() if k not in ("failures",)}
        data["oldest_not_synced_at"] = _iso(self.oldest_not_synced_at)
        data["failures"] = [vars(r) for r in self.failures]
        data["losses"] = self.losses()
        return data


@dataclass(frozen=True)
class DatabaseState:
    """The main database as a promotion finds it: a PostgreSQL standby (with its lag), a
    writable PostgreSQL (already promoted), or the demo topology's SQLite file, which the
    secondary shares with the primary (nothing replicates it, so nothing lags)."""

    kind: DatabaseKind
    replication_lag_seconds: int | None

    def losses(self) -> list[str]:
        """The database's share of the plan's losses."""
        if self.kind != "standby" or self.replication_lag_seconds == 0:
            return []
        if self.replication_lag_seconds is None:
            return ["database: replication lag unknown (the standby has not replayed anything yet)"]
        return [f"database: the standby lags {self.replication_lag_seconds} s behind the primary"]


@dataclass(frozen=True)
class PromotionPlan:
    """The whole plan of one site, with its verdict."""

    node_name: str
    computed_at: datetime
    database: DatabaseState
    last_event_id: int | None
    cursor_last_event_id: int | None
    unread_event_count: int
    types: list[TypePlan]

    def losses(self) -> list[str]:
        """Every way a promotion now would lose data, one sentence each."""
        found = [line for plan in self.types for line in plan.losses()]
        return found + self.database.losses()

    @property
    def safe(self) -> bool:
        """Whether a promotion now loses nothing this plan could see."""
        return not self.losses()

    @property
    def verdict(self) -> str:
        """`safe` or `data would be lost`."""
        return SAFE if self.safe else DATA_LOSS

    def as_json(self) -> dict[str, Any]:
        """The JSON form (`geosync promote --plan --json`, the REST API)."""
        return {
            "node_name": self.node_name,
            "computed_at": _iso(self.computed_at),
            "verdict": self.verdict,
            "safe": self.safe,
            "losses": self.losses(),
            "database": {
                "kind": self.database.kind,
                "replication_lag_seconds": self.database.replication_lag_seconds,
            },
            "event_log": {
                "last_event_id": self.last_event_id,
                "cursor_last_event_id": self.cursor_last_event_id,
                "unread_event_count": self.unread_event_count,
            },
            "types": [plan.as_json() for plan in self.types],
        }


def promotion_plan(geo: Geo) -> PromotionPlan:
    """This secondary's plan now; `ConfigurationError` on a site with no tracking database."""
    if not geo.has_tracking_database:
        raise ConfigurationError(
            "the promotion plan is a secondary's: this site has no tracking database"
        )
    node = geo.current_node()
    if node is None:
        raise ConfigurationError(f"node {geo.settings.node_name!r} is not registered")
    now = geo.clock.now()
    with geo.main_reads() as main, geo.tracking_engine.connect() as tracking:
        cursor = reported_position(tracking)
        unread = _unread_events(main, cursor)
        last_event = main.execute(select(func.max(geo_events.c.id))).scalar()
        types = [_type_plan(geo, main, tracking, r, node, now, unread) for r in geo.catalog]
    return PromotionPlan(
        node_name=node.name,
        computed_at=now,
        database=database_state(geo),
        last_event_id=None if last_event is None else int(last_event),
        cursor_last_event_id=cursor,
        unread_event_count=sum(unread.values()),
        types=types,
    )


def database_state(geo: Geo) -> DatabaseState:
    """What kind of main database this site has, and a standby's replication lag (ARCHITECTURE
    §14: 0 when all received WAL is replayed, None while unknown)."""
    engine = geo.main_engine
    if is_sqlite(engine):
        return DatabaseState("shared_sqlite", None)
    with engine.connect() as conn:
        in_recovery, lag = conn.execute(_STANDBY_SQL).one()
    if not in_recovery:
        return DatabaseState("writable", None)
    return DatabaseState("standby", None if lag is None else max(0, math.ceil(float(lag))))


def _unread_events(main: Connection, cursor: int | None) -> Counter[str]:
    """Events above the cursor, by replicable name (every event before the cursor's start)."""
    query = select(geo_events.c.replicable_name, func.count()).group_by(
        geo_events.c.replicable_name
    )
    if cursor is not None:
        query = query.where(geo_events.c.id > cursor)
    return Counter({str(name): int(n) for name, n in main.execute(query)})


def _type_plan(
    geo: Geo,
    main: Connection,
    tracking: Connection,
    replicator: type[Replicator],
    node: Node,
    now: datetime,
    unread: Counter[str],
) -> TypePlan:
    plan = TypePlan(
        replicator.replicable_name,
        replicator.replicable_name_plural,
        replication_enabled=flag_enabled(main, replicator),
        verification_enabled=replicator.verification_enabled,
        unread_event_count=unread.get(replicator.replicable_name, 0),
    )
    available = replicator.available_replicables().subquery()
    plan.primary_count = int(main.execute(select(func.count()).select_from(available)).scalar_one())
    if plan.replication_enabled:
        _walk(geo, main, tracking, replicator, node, now, plan)
        plan.out_of_scope_count = plan.primary_count - plan.in_scope_count
    return plan


def _walk(
    geo: Geo,
    main: Connection,
    tracking: Connection,
    replicator: type[Replicator],
    node: Node,
    now: datetime,
    plan: TypePlan,
) -> None:
    """Count, slice by slice, the in-scope items and how far each one's copy has come."""
    id_column = replicator.model.__table__.c.id
    scoped = scoped_query(replicator, node).order_by(id_column)
    stale_before = verified_within(geo.settings.scrub_period, now)
    reasons: Counter[str] = Counter()
    after = 0
    while True:
        ids = [
            int(i) for i in main.execute(scoped.where(id_column > after).limit(WALK_SIZE)).scalars()
        ]
        if not ids:
            break
        rows = _registry_rows(geo, tracking, replicator, ids[0], ids[-1])
        for model_id in ids:
            _count(plan, rows.get(model_id), stale_before, reasons)
        plan.in_scope_count += len(ids)
        after = ids[-1]
    listed = reasons.most_common(MAX_REASONS)
    rest = sum(reasons.values()) - sum(n for _, n in listed)
    plan.failures = [FailureReason(reason, n) for reason, n in listed]
    if rest:
        plan.failures.append(FailureReason("other reasons", rest))


def _registry_rows(
    geo: Geo, tracking: Connection, replicator: type[Replicator], low: int, high: int
) -> dict[int, Any]:
    table = geo.tables.registry(replicator)
    c = table.c
    key = c[replicator.registry_foreign_key]
    query = select(
        key.label("model_id"),
        c.state,
        c.verification_state,
        c.verified_at,
        c.last_sync_failure,
        func.coalesce(c.pending_since, c.created_at).label("waiting_since"),
    ).where(key >= low, key <= high)
    return {int(row.model_id): row for row in tracking.execute(query)}


def _count(plan: TypePlan, row: Any, stale_before: datetime, reasons: Counter[str]) -> None:
    """Add one in-scope item (its registry row, or None) to `plan`."""
    if row is None:
        plan.not_synced_count += 1
        plan.untracked_count += 1
        return
    if row.state != SyncState.SYNCED:
        plan.not_synced_count += 1
        since = _aware(row.waiting_since)
        if since is not None and (
            plan.oldest_not_synced_at is None or since < plan.oldest_not_synced_at
        ):
            plan.oldest_not_synced_at = since
        if row.state == SyncState.FAILED:
            plan.failed_count += 1
            reasons[row.last_sync_failure or "no reason recorded"] += 1
        return
    plan.synced_count += 1
    if not plan.verification_enabled:
        return
    verified = row.verification_state == VerificationState.SUCCEEDED
    verified_at = _aware(row.verified_at)
    if verified and verified_at is not None and verified_at >= stale_before:
        return
    plan.not_verified_count += 1
    if verified:
        plan.verified_outside_scrub_period_count += 1


def _aware(moment: Any) -> datetime | None:
    """A registry time as an aware UTC datetime (SQLite hands back text for expressions)."""
    if moment is None:
        return None
    found: datetime = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    return found if found.tzinfo is not None else found.replace(tzinfo=UTC)


def _iso(moment: datetime | None) -> str | None:
    from geosync.status import iso

    return None if moment is None else iso(moment)
