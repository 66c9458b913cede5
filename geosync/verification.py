"""Verification: the state machine shared by the primary's records and secondaries' registries.

States (GitLab's values): pending 0 → started 1 → succeeded 2 | failed 3, and disabled 4. Every
transition is one conditional UPDATE naming the states it may leave; `succeeded`, `failed` and
`disabled` also require the very claim that started the row (same `verification_started_at`), so
a row re-queued while its checksum was computed stays pending and the stale result is dropped.

Where the state lives: on the primary either a `<name>_states` table keyed by the model id
(option 2, the default) or columns on the model's own table (option 1, `VerificationStateMixin`);
on a secondary the registry row. `Verifiable` hides the difference. `geosync.primary.changes`
makes a changed record pending; the loops live in `geosync.primary` and `geosync.secondary`.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Column,
    Connection,
    Table,
    and_,
    bindparam,
    case,
    func,
    select,
    text,
    true,
    update,
)

from geosync.db.engines import is_sqlite
from geosync.db.types import UTCDateTime
from geosync.errors import GeoError
from geosync.registry import Backoff, SyncState, VerificationState, cut

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.replicator import Replicator

BATCH_SIZE = 10
TIMEOUT = timedelta(hours=8)
REVERIFY_BATCH = 1000
_IN_CHUNK = 500
MISMATCH_FAILURE = "Checksum does not match the primary checksum"


@dataclass(frozen=True)
class Claim:
    """One row a worker claimed: which record, the start time its result must match, and the
    checksum it had (a re-verification compares with it; a changed record has none).
    """

    model_record_id: int
    started_at: datetime
    previous_checksum: str | None = None


class Verifiable:
    """The verification columns of one replicator in one table, with their transitions."""

    def __init__(
        self,
        geo: Geo,
        replicator: type[Replicator],
        table: Table,
        key: Column[Any],
        *,
        registry: bool,
    ) -> None:
        self.geo = geo
        self.replicator = replicator
        self.table = table
        self.key = key
        self.registry = registry
        self.backoff = Backoff(geo.random, geo.settings.backoff_scale)

    def __repr__(self) -> str:
        return f"<Verifiable {self.table.name}>"

    # -- reads -------------------------------------------------------------------------------

    def get(self, conn: Connection, model_record_id: int) -> dict[str, Any] | None:
        """The row of `model_record_id` as a dict, or None."""
        row = conn.execute(select(self.table).where(self.key == model_record_id)).first()
        return dict(row._mapping) if row else None

    def eligible(self) -> Any:
        """Rows that may be verified at all: on a secondary only synced registries."""
        return self.table.c.state == SyncState.SYNCED if self.registry else true()

    def count_by_state(self, conn: Connection) -> dict[VerificationState, int]:
        """Row counts per verification state."""
        c = self.table.c
        rows = conn.execute(
            select(c.verification_state, func.count()).group_by(c.verification_state)
        )
        counts = dict.fromkeys(VerificationState, 0)
        for state, count in rows:
            counts[VerificationState(state)] = int(count)
        return counts

    # -- claims ------------------------------------------------------------------------------

    def claim(self, conn: Connection, limit: int) -> list[Claim]:
        """Mark up to `limit` rows started: pending ones first, topped up with failed ones due."""
        if limit <= 0:
            return []
        now = self.geo.clock.now()
        claims = self._claim(conn, "pending", limit, now)
        if len(claims) < limit:
            claims += self._claim(conn, "failed", limit - len(claims), now)
        return claims

    def _claim(self, conn: Connection, which: str, limit: int, now: datetime) -> list[Claim]:
        statement = _claim_statement(
            self.table, self.key.name, self.registry, which, not is_sqlite(conn.engine)
        )
        claimed = conn.execute(statement, {"now": now, "limit": limit})
        claims = [Claim(int(key), now, checksum) for key, checksum in claimed]
        return sorted(claims, key=lambda claim: claim.model_record_id)

    def _mine(self, model_record_id: int, started_at: datetime) -> Any:
        c = self.table.c
        return and_(
            self.key == model_record_id,
            c.verification_state == VerificationState.STARTED,
            c.verification_started_at == started_at,
        )

    # -- transitions -------------------------------------------------------------------------

    def succeeded(
        self, conn: Connection, model_record_id: int, started_at: datetime, checksum: str
    ) -> bool:
        """started → succeeded with `checksum`; False when the claim was superseded meanwhile."""
        return bool(self.succeeded_many(conn, [(Claim(model_record_id, started_at), checksum)]))

    def succeeded_many(self, conn: Connection, results: Sequence[tuple[Claim, str]]) -> list[int]:
        """started → succeeded for many claims in two statements; returns the record ids whose
        claim still stood (the others were re-queued meanwhile and stay as they are).
        """
        mine = self.still_claimed(conn, [claim for claim, _checksum in results])
        rows = [(claim, checksum) for claim, checksum in results if claim.model_record_id in mine]
        if not rows:
            return []
        c = self.table.c
        values: dict[str, Any] = {
            "verification_state": VerificationState.SUCCEEDED,
            "verification_checksum": bindparam("_checksum"),
            "verified_at": self.geo.clock.now(),
            "verification_failure": None,
            "verification_retry_count": 0,
            "verification_retry_at": None,
        }
        if self.registry:
            values.update(checksum_mismatch=False, verification_checksum_mismatched=None)
        statement = (
            update(self.table)
            .where(
                self.key == bindparam("_key"),
                c.verification_state == VerificationState.STARTED,
                c.verification_started_at == bindparam("_started_at"),
            )
            .values(**values)
        )
        conn.execute(
            statement,
            [
                {"_key": claim.model_record_id, "_started_at": claim.started_at, "_checksum": sum_}
                for claim, sum_ in rows
            ],
        )
        return [claim.model_record_id for claim, _checksum in rows]

    def still_claimed(self, conn: Connection, claims: Sequence[Claim]) -> set[int]:
        """The record ids among `claims` whose claim still stands, locked until commit."""
        if not claims:
            return set()
        c = self.table.c
        query = select(self.key, c.verification_started_at).where(
            self.key.in_([claim.model_record_id for claim in claims]),
            c.verification_state == VerificationState.STARTED,
        )
        if not is_sqlite(conn.engine):
            query = query.with_for_update()
        current = {int(key): started for key, started in conn.execute(query)}
        return {
            claim.model_record_id
            for claim in claims
            if current.get(claim.model_record_id) == claim.started_at
        }

    def failed(
        self,
        conn: Connection,
        model_record_id: int,
        started_at: datetime,
        failure: str,
        *,
        mismatched: str | None = None,
        keep_checksum: bool = False,
    ) -> int | None:
        """started → failed with a reason and a backoff; returns the new retry count.

        None when the claim was superseded meanwhile (the row was re-queued or deleted).
        The checksum is cleared unless `keep_checksum`: content that must never change keeps
        its reference, so a corrupted file keeps failing instead of being accepted on retry.
        """
        c = self.table.c
        count = conn.execute(
            select(c.verification_retry_count).where(self._mine(model_record_id, started_at))
        ).scalar_one_or_none()
        if count is None:
            return None
        n = int(count) + 1
        now = self.geo.clock.now()
        values: dict[str, Any] = {
            "verification_state": VerificationState.FAILED,
            "verification_retry_count": n,
            "verification_retry_at": self.backoff.next_retry_time(now, n),
            "verified_at": now,
            "verification_failure": cut(failure),
        }
        if not keep_checksum:
            values["verification_checksum"] = None
        if self.registry:
            values.update(
                checksum_mismatch=mismatched is not None,
                verification_checksum_mismatched=mismatched,
            )
        result = conn.execute(
            update(self.table).where(self._mine(model_record_id, started_at)).values(**values)
        )
        return n if result.rowcount == 1 else None

    def disabled(self, conn: Connection, model_record_id: int, started_at: datetime) -> bool:
        """started → disabled: there is nothing to compare with (no primary checksum)."""
        values: dict[str, Any] = {
            "verification_state": VerificationState.DISABLED,
            "verification_failure": None,
            "verification_checksum": None,
            "verification_retry_count": 0,
            "verification_retry_at": None,
        }
        result = conn.execute(
            update(self.table).where(self._mine(model_record_id, started_at)).values(**values)
        )
        return result.rowcount == 1

    def pending(self, conn: Connection, model_record_id: int) -> bool:
        """Any state → pending; False when there is no row."""
        return self.pending_where(conn, self.key == model_record_id) == 1

    def pending_where(self, conn: Connection, where: Any, *, changed: bool = False) -> int:
        """Every row matching `where` → pending; returns how many rows changed.

        From failed the retry count and time are kept, so repeated failures keep backing off;
        from any other state they are cleared. `changed` (the content changed through the
        application) also forgets the checksum, so the next one is not compared with it.
        """
        c = self.table.c
        from_failed = c.verification_state == VerificationState.FAILED
        values: dict[str, Any] = {
            "verification_state": VerificationState.PENDING,
            "verification_failure": None,
            "verification_retry_count": case((from_failed, c.verification_retry_count), else_=0),
            "verification_retry_at": case((from_failed, c.verification_retry_at), else_=None),
        }
        if changed:
            values["verification_checksum"] = None
        if self.registry:
            values.update(checksum_mismatch=False, verification_checksum_mismatched=None)
        return int(conn.execute(update(self.table).where(where).values(**values)).rowcount)

    # -- sweeps ------------------------------------------------------------------------------

    def fail_timed_out(self, conn: Connection) -> list[tuple[int, int]]:
        """Fail rows started more than 8 hours ago; returns (record id, new retry count) pairs."""
        c = self.table.c
        cutoff = self.geo.clock.now() - TIMEOUT
        stuck = conn.execute(
            select(self.key, c.verification_started_at).where(
                c.verification_state == VerificationState.STARTED,
                c.verification_started_at < cutoff,
            )
        ).all()
        message = f"Verification timed out after {TIMEOUT.total_seconds() / 3600:g} hours"
        failed = []
        for key, started_at in stuck:
            count = self.failed(conn, int(key), started_at, message)
            if count is not None:
                failed.append((int(key), count))
        return failed

    def requeue_stale(self, conn: Connection, older_than: datetime, limit: int) -> int:
        """Succeeded rows verified before `older_than` → pending, oldest first, at most `limit`."""
        c = self.table.c
        succeeded = c.verification_state == VerificationState.SUCCEEDED
        stale = (
            select(self.key)
            .where(succeeded, c.verified_at < older_than)
            .order_by(c.verified_at, self.key)
            .limit(limit)
        )
        if not is_sqlite(conn.engine):
            stale = stale.with_for_update(skip_locked=True)
        return self.pending_where(conn, and_(succeeded, self.key.in_(stale.scalar_subquery())))

    # -- operator requests -------------------------------------------------------------------

    def reverify_condition(self, failed_only: bool) -> Any:
        """Rows `geosync reverify --all` re-queues."""
        condition = self.eligible()
        if failed_only:
            condition = and_(condition, self.table.c.verification_state == VerificationState.FAILED)
        return condition

    def count_where(self, conn: Connection, where: Any) -> int:
        """How many rows match `where`."""
        query = select(func.count()).select_from(self.table).where(where)
        return int(conn.execute(query).scalar_one())

    def next_keys(self, conn: Connection, where: Any, after: int, limit: int) -> list[int]:
        """Keyset page: up to `limit` keys above `after` matching `where`, in key order."""
        query = select(self.key).where(where, self.key > after).order_by(self.key).limit(limit)
        return [int(key) for key in conn.execute(query).scalars()]


@functools.lru_cache(maxsize=256)
def _claim_statement(
    table: Table, key_name: str, registry: bool, which: str, skip_locked: bool
) -> Any:
    """The claim of ARCHITECTURE.md §6 as one statement, built once per table and kind.

    `UPDATE … SET started WHERE key IN (SELECT key … ORDER BY … LIMIT n FOR UPDATE SKIP LOCKED)
    RETURNING key`: PostgreSQL skips rows another worker's claim holds; SQLite serialises
    writers with BEGIN IMMEDIATE, so two claims can never pick the same row.
    """
    c = table.c
    key = c[key_name]
    now = bindparam("now", type_=UTCDateTime())
    if which == "pending":
        where: Any = c.verification_state == VerificationState.PENDING
        order: Any = c.verified_at.asc().nulls_first()
    else:
        where = and_(
            c.verification_state == VerificationState.FAILED, c.verification_retry_at <= now
        )
        order = c.verification_retry_at.asc()
    if registry:
        where = and_(c.state == SyncState.SYNCED, where)
    candidates = select(key).where(where).order_by(order, key).limit(bindparam("limit"))
    if skip_locked:
        candidates = candidates.with_for_update(skip_locked=True)
    return (
        update(table)
        .where(key.in_(candidates.scalar_subquery()))
        .values(verification_state=VerificationState.STARTED, verification_started_at=now)
        .returning(key, c.verification_checksum)
    )


@functools.lru_cache(maxsize=64)
def _started_statement(tables: tuple[Table, ...]) -> Any:
    counts = [
        select(func.count())
        .select_from(table)
        .where(table.c.verification_state == VerificationState.STARTED)
        .scalar_subquery()
        for table in tables
    ]
    total: Any = counts[0]
    for count in counts[1:]:
        total = total + count
    return select(total)


# -- where the state lives ----------------------------------------------------------------------


def primary_verifiable(geo: Geo, replicator: type[Replicator]) -> Verifiable:
    """The primary's verification state of `replicator`: its states table or model columns."""
    states = geo.tables.state(replicator)
    if states is not None:
        return Verifiable(
            geo, replicator, states, states.c[replicator.registry_foreign_key], registry=False
        )
    model_table: Table = replicator.model.__table__
    if "verification_state" not in model_table.c:
        raise GeoError(
            f"{replicator.__name__} has no verification state: verification is disabled for it"
        )
    return Verifiable(geo, replicator, model_table, model_table.c.id, registry=False)


def registry_verifiable(geo: Geo, replicator: type[Replicator]) -> Verifiable:
    """A secondary's verification state of `replicator`: the columns of its registry."""
    table = geo.tables.registry(replicator)
    return Verifiable(
        geo, replicator, table, table.c[replicator.registry_foreign_key], registry=True
    )


def verifiable_replicators(geo: Geo) -> list[type[Replicator]]:
    """The catalog's replicators whose resources are verified."""
    return [r for r in geo.catalog if r.verification_enabled]


def lock_claims(conn: Connection, side: str) -> None:
    """Serialise capacity checks and claims site-wide (PostgreSQL; SQLite's writes already are)."""
    if not is_sqlite(conn.engine):
        key = zlib.crc32(f"geosync-verification-{side}".encode())
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def started_total(conn: Connection, targets: Sequence[Verifiable]) -> int:
    """Rows being checksummed right now across `targets`, in one query."""
    if not targets:
        return 0
    statement = _started_statement(tuple(target.table for target in targets))
    return int(conn.execute(statement).scalar_one())


def claim_within(
    conn: Connection, capacity: int, every: Sequence[Verifiable], targets: Sequence[Verifiable]
) -> list[tuple[Verifiable, list[Claim]]]:
    """Claim one batch of up to 10 rows, visiting `targets` in order (callers rotate them).

    Rows started in any of `every` (all of the site's verifiable types) count against
    `capacity`, so the limit holds across worker processes.
    """
    wanted = min(BATCH_SIZE, capacity - started_total(conn, every))
    batches = []
    for target in targets:
        if wanted <= 0:
            break
        claims = target.claim(conn, wanted)
        wanted -= len(claims)
        if claims:
            batches.append((target, claims))
    return batches


# -- the primary's checksum, as secondaries read it -------------------------------------------


def primary_checksums(
    geo: Geo, main_conn: Connection, replicator: type[Replicator], ids: Iterable[int]
) -> dict[int, str]:
    """The primary's succeeded checksums of `ids` (ids without one are absent)."""
    if not replicator.verification_enabled:
        return {}
    target = primary_verifiable(geo, replicator)
    c = target.table.c
    found: dict[int, str] = {}
    for chunk in in_chunks(list(ids)):
        rows = main_conn.execute(
            select(target.key, c.verification_checksum).where(
                target.key.in_(chunk),
                c.verification_state == VerificationState.SUCCEEDED,
                c.verification_checksum.is_not(None),
            )
        )
        found.update((int(key), str(checksum)) for key, checksum in rows)
    return found


def primary_checksum(
    geo: Geo, main_conn: Connection, replicator: type[Replicator], model_record_id: int
) -> str | None:
    """The primary's checksum of one record, only while its verification has succeeded."""
    return primary_checksums(geo, main_conn, replicator, [model_record_id]).get(model_record_id)


# -- helpers ------------------------------------------------------------------------------------


def in_chunks(ids: Sequence[int]) -> Iterator[list[int]]:
    """`ids` in slices small enough for an IN list on every database."""
    for start in range(0, len(ids), _IN_CHUNK):
        yield list(ids[start : start + _IN_CHUNK])
