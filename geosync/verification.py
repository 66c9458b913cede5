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

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Column,
    Connection,
    Integer,
    String,
    Table,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from geosync.backoff import Backoff
from geosync.db import keyset
from geosync.db.engines import is_sqlite
from geosync.db.row_sets import RowSet
from geosync.db.statements import built_once
from geosync.db.types import UTCDateTime
from geosync.errors import GeoError
from geosync.records import in_chunks
from geosync.states import SyncState, VerificationState, cut

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.replicator import Replicator

#: Rows per claimed batch at most (a batch is half the capacity: two are in flight).
BATCH_SIZE = 100
TIMEOUT = timedelta(hours=8)
REVERIFY_BATCH = 1000
MISMATCH_FAILURE = "Checksum does not match the primary checksum"
_NOW = bindparam("now", type_=UTCDateTime())


@dataclass(frozen=True)
class Claim:
    """One row a worker claimed: which record, the start time its result must match, and the
    checksum it had (a re-verification compares with it; a changed record has none).
    """

    model_record_id: int
    started_at: datetime
    previous_checksum: str | None = None


@dataclass(frozen=True)
class Failure:
    """A claimed row's failed verification: why, and (a registry's mismatch) the checksum this
    site found instead of the primary's."""

    claim: Claim
    failure: str
    mismatched: str | None = None


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

    def count_by_state(
        self, conn: Connection, *, eligible_only: bool = False
    ) -> dict[VerificationState, int]:
        """Row counts per verification state (every state present); with `eligible_only`, of
        the rows that may be verified at all (on a secondary, the synced ones)."""
        c = self.table.c
        query = select(c.verification_state, func.count()).group_by(c.verification_state)
        rows = conn.execute(query.where(self.eligible()) if eligible_only else query)
        counts = dict.fromkeys(VerificationState, 0)
        for state, count in rows:
            counts[VerificationState(state)] = int(count)
        return counts

    # -- claims ------------------------------------------------------------------------------

    def claim(
        self,
        conn: Connection,
        limit: int,
        holder: str | None = None,
        now: datetime | None = None,
        room: tuple[int, Sequence[Verifiable]] | None = None,
    ) -> list[Claim]:
        """Mark up to `limit` rows started, in one statement: pending ones first (never verified,
        then oldest verification first), topped up with failed ones whose retry is due.

        On a registry the claim names `holder` (the worker), so a dead worker's verifications
        are taken over at once (`interrupted_by`) instead of after the 8-hour timeout. `now`
        (the clock's by default) is the claim time a batch's rows share. `room` (PostgreSQL
        only): a capacity and the verifiable types whose started rows count against it, checked
        by the claim statement itself.
        """
        if limit <= 0:
            return []
        now = now or self.geo.clock.now()
        room_of = tuple(target.table for target in room[1]) if room else ()
        statement = _claim_statement(
            self.table, self.key.name, self.registry, not is_sqlite(conn.engine), room_of
        )
        params: dict[str, Any] = {"now": now, "limit": limit}
        if room:
            params["capacity"] = room[0]
        if self.registry:
            params["holder"] = holder
        claimed = conn.execute(statement, params)
        claims = [Claim(int(key), now, checksum) for key, checksum in claimed]
        return sorted(claims, key=lambda claim: claim.model_record_id)

    # -- transitions -------------------------------------------------------------------------

    def succeeded(
        self, conn: Connection, model_record_id: int, started_at: datetime, checksum: str
    ) -> bool:
        """started → succeeded with `checksum`; False when the claim was superseded meanwhile."""
        return bool(self.succeeded_many(conn, [(Claim(model_record_id, started_at), checksum)]))

    def succeeded_many(self, conn: Connection, results: Sequence[tuple[Claim, str]]) -> list[int]:
        """started → succeeded for many claims; returns the record ids whose claim still stood
        (the others were re-queued meanwhile and stay as they are).

        One `UPDATE … FROM rows WHERE key = rows.key AND started at rows.started_at RETURNING
        key` for the whole set, the rows one JSON parameter (`geosync.db.row_sets`): checking
        that each claim still stands and storing its result are one statement, and the rows
        stay locked until commit.
        """
        if not results:
            return []
        rows = [(claim.model_record_id, claim.started_at, checksum) for claim, checksum in results]
        statement, row_set = _succeeded_statement(
            self.table, self.key.name, self.registry, conn.dialect.name
        )
        done = self._settle(conn, statement, row_set, rows)
        return [claim.model_record_id for claim, _sum in results if claim.model_record_id in done]

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
        failure_row = Failure(Claim(model_record_id, started_at), failure, mismatched)
        return self.failed_many(conn, [failure_row], keep_checksum=keep_checksum).get(
            model_record_id
        )

    def failed_many(
        self, conn: Connection, failures: Sequence[Failure], *, keep_checksum: bool = False
    ) -> dict[int, int]:
        """started → failed for many claims, each with its reason and a backoff of its own;
        returns the new retry count of each row whose claim still stood.

        Two statements for the whole set: one reads the standing claims' retry counts (the
        backoff's jitter is drawn here, per row), one stores every row's failure with the same
        claim check as `succeeded_many`.
        """
        if not failures:
            return {}
        dialect = conn.dialect.name
        counts_statement, claims_set = _retry_counts_statement(self.table, self.key.name, dialect)
        claims = [(f.claim.model_record_id, f.claim.started_at) for f in failures]
        counts = dict(
            conn.execute(
                counts_statement, {claims_set.name: claims_set.value(conn.dialect, claims)}
            ).all()
        )
        now = self.geo.clock.now()
        rows = []
        for item in failures:
            key = item.claim.model_record_id
            if key in counts:
                n = int(counts[key]) + 1
                retry_at = self.backoff.next_retry_time(now, n)
                mismatched = item.mismatched if self.registry else None
                rows.append(
                    (key, item.claim.started_at, n, retry_at, cut(item.failure), mismatched)
                )
        if not rows:
            return {}
        statement, row_set = _failed_statement(
            self.table, self.key.name, self.registry, keep_checksum, dialect
        )
        done = self._settle(conn, statement, row_set, rows, now)
        return {row[0]: row[2] for row in rows if row[0] in done}

    def disabled(self, conn: Connection, model_record_id: int, started_at: datetime) -> bool:
        """started → disabled: there is nothing to compare with (no primary checksum)."""
        return bool(self.disabled_many(conn, [Claim(model_record_id, started_at)]))

    def disabled_many(self, conn: Connection, claims: Sequence[Claim]) -> list[int]:
        """started → disabled for many claims, in one statement; returns the record ids whose
        claim still stood."""
        if not claims:
            return []
        rows = [(claim.model_record_id, claim.started_at) for claim in claims]
        statement, row_set = _disabled_statement(self.table, self.key.name, conn.dialect.name)
        done = self._settle(conn, statement, row_set, rows)
        return [claim.model_record_id for claim in claims if claim.model_record_id in done]

    def _settle(
        self,
        conn: Connection,
        statement: Any,
        row_set: RowSet,
        rows: Sequence[Sequence[Any]],
        now: datetime | None = None,
    ) -> set[int]:
        params = {
            "now": now or self.geo.clock.now(),
            row_set.name: row_set.value(conn.dialect, rows),
        }
        return {int(key) for key in conn.execute(statement, params).scalars()}

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

    def holders(self, conn: Connection) -> set[str]:
        """The workers holding started verifications of this registry."""
        c = self.table.c
        query = select(c.verification_claimed_by).where(
            c.verification_state == VerificationState.STARTED,
            c.verification_claimed_by.is_not(None),
        )
        return set(conn.execute(query.distinct()).scalars())

    def interrupted_by(self, conn: Connection, holder: str) -> list[tuple[int, datetime | None]]:
        """The verifications `holder` (a dead worker) started go back to pending, their retry
        count and time kept; returns the rows and when their verifications started. Registries
        only: the primary's rows name no holder and wait for the timeout."""
        c = self.table.c
        rows = conn.execute(
            update(self.table)
            .where(
                c.verification_state == VerificationState.STARTED,
                c.verification_claimed_by == holder,
            )
            .values(verification_state=VerificationState.PENDING)
            .returning(self.key, c.verification_started_at)
        ).all()
        return [(int(key), started_at) for key, started_at in rows]

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
        failures = [Failure(Claim(int(key), started_at), message) for key, started_at in stuck]
        failed = self.failed_many(conn, failures)
        return [(int(key), failed[int(key)]) for key, _at in stuck if int(key) in failed]

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
        return keyset.next_keys(conn, self.key, where, after, limit)

    # -- the primary's state rows (a `<name>_states` table) ---------------------------------

    def add_pending(self, conn: Connection, ids: Sequence[int]) -> None:
        """Add a pending state row for each of `ids` to a states table; a row another
        transaction added meanwhile (the backfill beside a change published by the
        application) is left as it is."""
        if not ids:
            return
        self._require_states_table("add state rows to")
        pending = int(VerificationState.PENDING)
        conn.execute(
            _insert_ignoring_duplicates(conn, self.table),
            [{self.key.name: i, "verification_state": pending} for i in ids],
        )

    def forget(self, conn: Connection, ids: Sequence[int]) -> None:
        """Delete the state rows of `ids` (records that are gone) from a states table."""
        self._require_states_table("delete state rows of")
        for chunk in in_chunks(sorted(set(ids))):
            conn.execute(delete(self.table).where(self.key.in_(chunk)))

    def _require_states_table(self, action: str) -> None:
        if self.registry or self.table is self.replicator.model.__table__:
            raise GeoError(f"cannot {action} {self.table.name}: it is not a states table")


def _insert_ignoring_duplicates(conn: Connection, table: Table) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    return insert(table)


@built_once
def _claim_statement(
    table: Table,
    key_name: str,
    registry: bool,
    skip_locked: bool,
    room_of: tuple[Table, ...] = (),
) -> Any:
    """The claim of ARCHITECTURE.md §6 as one statement, built once per table.

    `UPDATE … SET started WHERE key IN (candidates LIMIT n) RETURNING key`. The candidates come
    from three parts, each its own `LIMIT n` read along an index, taken in this order: pending
    rows never verified, pending rows by oldest verification, failed rows by retry time (due
    ones only). A single `ORDER BY verified_at NULLS FIRST` would not do: PostgreSQL cannot read
    that order from an ascending index and would sort every pending row on each claim.
    PostgreSQL skips rows another worker's claim holds (`FOR UPDATE SKIP LOCKED`); SQLite
    serialises writers with BEGIN IMMEDIATE, so two claims can never pick the same row.
    With `room_of` (PostgreSQL), the statement also keeps within `:capacity`: it takes no more
    rows than the capacity leaves beside the rows started in those tables.
    """
    c = table.c
    key = c[key_name]
    limit = bindparam("limit", type_=Integer())
    pending = c.verification_state == VerificationState.PENDING
    parts: list[tuple[Any, Any]] = [
        (and_(pending, c.verified_at.is_(None)), c.verified_at),
        (and_(pending, c.verified_at.is_not(None)), c.verified_at),
        (_failed_due(table), c.verification_retry_at),
    ]
    ranked = []
    for rank, (where, order) in enumerate(parts):
        if registry:
            where = and_(c.state == SyncState.SYNCED, where)
        part = select(key.label("key"), order.label("at")).where(where).order_by(order)
        part = part.limit(limit)
        if skip_locked:
            part = part.with_for_update(skip_locked=True)
        rows = part.subquery(f"part_{rank}")
        ranked.append(select(rows.c.key, literal(rank).label("rank"), rows.c.at))
    candidates = union_all(*ranked).subquery("candidates")
    room: Any = limit
    if room_of:
        left = bindparam("capacity", type_=Integer()) - _started_in(room_of)
        room = func.greatest(0, func.least(limit, left))
    chosen = (
        select(candidates.c.key)
        .order_by(candidates.c.rank, candidates.c.at)
        .limit(room)
        .scalar_subquery()
    )
    values: dict[str, Any] = {
        "verification_state": VerificationState.STARTED,
        "verification_started_at": _NOW,
    }
    if registry:
        values["verification_claimed_by"] = bindparam("holder", type_=String())
    return (
        update(table)
        .where(key.in_(chosen))
        .values(**values)
        .returning(key, c.verification_checksum)
    )


def _failed_due(table: Table) -> Any:
    """Failed rows whose retry time has come (`:now`)."""
    c = table.c
    return and_(c.verification_state == VerificationState.FAILED, c.verification_retry_at <= _NOW)


def _claimable(table: Table, registry: bool) -> Any:
    """Whether `table` has a row a claim would take at `:now` (pending, or failed and due)."""
    c = table.c
    synced: Any = c.state == SyncState.SYNCED if registry else true()
    pending = c.verification_state == VerificationState.PENDING
    return or_(exists().where(synced, pending), exists().where(synced, _failed_due(table)))


def _claim_rows(name: str, key: Column[Any], *more: tuple[str, Any]) -> RowSet:
    """A set of claimed rows: the key, the claim time, and `more` columns."""
    return RowSet(name, [("key", key.type), ("started_at", UTCDateTime()), *more])


def _still_claimed(table: Table, rows: Any) -> Any:
    """The row is started at its claim's time (`rows.started_at`).

    "Started at this claim time" as one expression no index can serve: PostgreSQL then finds
    the rows by key alone instead of also reading the state index, whose entries for started
    rows churn with every claim (and stay until a vacuum removes them).
    """
    c = table.c
    claimed_at = case(
        (c.verification_state == VerificationState.STARTED, c.verification_started_at)
    )
    return claimed_at == rows.c.started_at


@built_once
def _succeeded_statement(
    table: Table, key_name: str, registry: bool, dialect: str
) -> tuple[Any, RowSet]:
    """started → succeeded for a set of (key, claim time, checksum) rows, built once per
    table; returns the keys whose claim still stood."""
    c = table.c
    key = c[key_name]
    row_set = _claim_rows("succeeded_rows", key, ("checksum", String(64)))
    rows = row_set.table(dialect)
    values: dict[str, Any] = {
        "verification_state": VerificationState.SUCCEEDED,
        "verification_checksum": rows.c.checksum,
        "verified_at": _NOW,
        "verification_failure": None,
        "verification_retry_count": 0,
        "verification_retry_at": None,
    }
    if registry:
        values.update(checksum_mismatch=False, verification_checksum_mismatched=None)
    statement = (
        update(table)
        .where(key == rows.c.key, _still_claimed(table, rows))
        .values(**values)
        .returning(key)
    )
    return statement, row_set


@built_once
def _retry_counts_statement(table: Table, key_name: str, dialect: str) -> tuple[Any, RowSet]:
    """(key, retry count) of the rows of a set of claims that still stand."""
    c = table.c
    key = c[key_name]
    row_set = _claim_rows("claimed_rows", key)
    rows = row_set.table(dialect)
    statement = (
        select(key, c.verification_retry_count)
        .select_from(table)
        .join(rows, key == rows.c.key)
        .where(_still_claimed(table, rows))
    )
    return statement, row_set


@built_once
def _failed_statement(
    table: Table, key_name: str, registry: bool, keep_checksum: bool, dialect: str
) -> tuple[Any, RowSet]:
    """started → failed for a set of (key, claim time, retry count, retry time, failure,
    mismatched checksum) rows; returns the keys whose claim still stood."""
    c = table.c
    key = c[key_name]
    row_set = _claim_rows(
        "failed_rows",
        key,
        ("retry_count", Integer()),
        ("retry_at", UTCDateTime()),
        ("failure", String(255)),
        ("mismatched", String(64)),
    )
    rows = row_set.table(dialect)
    values: dict[str, Any] = {
        "verification_state": VerificationState.FAILED,
        "verification_retry_count": rows.c.retry_count,
        "verification_retry_at": rows.c.retry_at,
        "verified_at": _NOW,
        "verification_failure": rows.c.failure,
    }
    if not keep_checksum:
        values["verification_checksum"] = None
    if registry:
        values.update(
            checksum_mismatch=rows.c.mismatched.is_not(None),
            verification_checksum_mismatched=rows.c.mismatched,
        )
    statement = (
        update(table)
        .where(key == rows.c.key, _still_claimed(table, rows))
        .values(**values)
        .returning(key)
    )
    return statement, row_set


@built_once
def _disabled_statement(table: Table, key_name: str, dialect: str) -> tuple[Any, RowSet]:
    """started → disabled for a set of (key, claim time) rows; returns the keys whose claim
    still stood."""
    c = table.c
    key = c[key_name]
    row_set = _claim_rows("disabled_rows", key)
    rows = row_set.table(dialect)
    statement = (
        update(table)
        .where(key == rows.c.key, _still_claimed(table, rows))
        .values(
            verification_state=VerificationState.DISABLED,
            verification_failure=None,
            verification_checksum=None,
            verification_retry_count=0,
            verification_retry_at=None,
        )
        .returning(key)
    )
    return statement, row_set


@built_once
def _round_statement(tables: tuple[Table, ...], targets: tuple[tuple[Table, bool], ...]) -> Any:
    """Rows started across `tables`, then for each (table, registry) of `targets` whether it
    has rows to claim at `:now`, in one query.
    """
    claimable = [_claimable(table, registry) for table, registry in targets]
    return select(_started_in(tables), *claimable)


def _started_in(tables: tuple[Table, ...]) -> Any:
    """The number of rows started across `tables`, as one expression."""
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
    return total


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


def lock_claims(conn: Connection, side: str, *, claims_only: bool = True) -> None:
    """Serialise capacity checks and claims site-wide (PostgreSQL; SQLite's writes already are).

    The same statement sets two things for the rest of the claim transaction only. With
    `claims_only` it commits without waiting for the WAL flush: a claim lost in a server crash
    leaves its rows pending, as if never claimed, and the result stored later commits durably
    (flushing the claim with it); a transaction that also stores results (the pipeline's) passes
    False. And it reads through plain index scans, no bitmap scans: every claim leaves dead
    index entries behind for the rows it moves, and a plain index scan marks the ones it passes
    as dead for good, where a bitmap scan would read all of them again on every round until a
    vacuum.
    """
    if not is_sqlite(conn.engine):
        key = zlib.crc32(f"geosync-verification-{side}".encode())
        conn.execute(_LOCK_CLAIMS if claims_only else _LOCK_DURABLE, {"key": key})


_LOCK_CLAIMS = text(
    "SELECT pg_advisory_xact_lock(:key), set_config('synchronous_commit', 'off', true),"
    " set_config('enable_bitmapscan', 'off', true)"
)
_LOCK_DURABLE = text(
    "SELECT pg_advisory_xact_lock(:key), set_config('enable_bitmapscan', 'off', true)"
)


Batch = list[tuple[Verifiable, list[Claim]]]


def batch_size(capacity: int) -> int:
    """Rows per batch for `capacity`: half of it, so that two batches in flight (one hashed
    while the other is stored) fill it, 1 to `BATCH_SIZE`."""
    return max(1, min(BATCH_SIZE, capacity // 2))


def claim_within(
    conn: Connection,
    capacity: int,
    every: Sequence[Verifiable],
    targets: Sequence[Verifiable],
    holder: str | None = None,
) -> Batch:
    """Claim one batch (`batch_size` rows at most) for `holder`, visiting `targets` in order
    (callers rotate them); [] when there is no room or no work.

    Rows started in any of `every` (all of the site's verifiable types) count against
    `capacity`, so the limit holds across worker processes.
    """
    return claim_next(conn, capacity, every, targets, holder) or []


def claim_next(
    conn: Connection,
    capacity: int,
    every: Sequence[Verifiable],
    targets: Sequence[Verifiable],
    holder: str | None = None,
    size: int | None = None,
) -> Batch | None:
    """Claim the next batch of up to `size` rows (`batch_size(capacity)` by default) for
    `holder`, visiting `targets` in order: None when the capacity leaves no room, [] when no
    target has work.

    Rows started in any of `every` (all of the site's verifiable types) count against
    `capacity`, so the limit holds across worker processes. One query tells both how many rows
    are started and which targets have rows to claim, so claims go only where work is; every
    row of the batch shares one claim time.
    """
    if not targets or not every:
        return []
    now = targets[0].geo.clock.now()
    room, waiting = _room(conn, capacity, every, targets, now)
    if room <= 0:
        return None
    if not waiting:
        return []
    wanted = min(size or batch_size(capacity), room)
    batch, _claimed = _claim_batch(conn, waiting, wanted, holder, now)
    return batch


class RoundClaims:
    """The claims of one round of a verification loop, batch after batch.

    The round's first claim reads the room the capacity leaves and which types have work in
    one query, as `claim_next` does. On PostgreSQL the later claims of the round skip that
    query: they go to the types that had work, and each claim statement checks the capacity
    itself, so the limit still holds across worker processes. A later claim that finds nothing
    asks the full question again (the room may be gone, or the work).
    """

    def __init__(
        self,
        capacity: int,
        every: Sequence[Verifiable],
        targets: Sequence[Verifiable],
        holder: str | None = None,
    ) -> None:
        self.capacity = capacity
        self.every = list(every)
        self.targets = list(targets)
        self.holder = holder
        self._waiting: list[Verifiable] = []

    def next(self, conn: Connection) -> Batch | None:
        """The next batch: None when the capacity leaves no room, [] when nothing is left."""
        if not self.targets or not self.every:
            return []
        now = self.targets[0].geo.clock.now()
        wanted = batch_size(self.capacity)
        if self._waiting and not is_sqlite(conn.engine):
            room = (self.capacity, self.every)
            batch, _claimed = _claim_batch(conn, self._waiting, wanted, self.holder, now, room)
            if batch:
                return batch
        left, self._waiting = _room(conn, self.capacity, self.every, self.targets, now)
        if left <= 0:
            return None
        if not self._waiting:
            return []
        batch, _claimed = _claim_batch(conn, self._waiting, min(wanted, left), self.holder, now)
        return batch


def claim_batches(
    conn: Connection,
    capacity: int,
    every: Sequence[Verifiable],
    targets: Sequence[Verifiable],
    count: int,
    holder: str | None = None,
    size: int | None = None,
) -> list[Batch]:
    """Claim up to `count` batches of up to `size` rows each (`batch_size(capacity)` by
    default; one claim statement per batch and type) for `holder`, visiting `targets` in
    order; each further batch starts with the next type.

    Rows started in any of `every` count against `capacity`, as for `claim_next`.
    """
    if not targets or not every or count <= 0:
        return []
    now = targets[0].geo.clock.now()
    room, waiting = _room(conn, capacity, every, targets, now)
    size = size or batch_size(capacity)
    batches: list[Batch] = []
    while len(batches) < count and room > 0 and waiting:
        batch, claimed = _claim_batch(conn, waiting, min(size, room), holder, now)
        if not batch:
            break
        batches.append(batch)
        room -= claimed
        waiting = waiting[1:] + waiting[:1]
    return batches


def _room(
    conn: Connection,
    capacity: int,
    every: Sequence[Verifiable],
    targets: Sequence[Verifiable],
    now: datetime,
) -> tuple[int, list[Verifiable]]:
    """The capacity left and the targets with rows to claim, in one query."""
    statement = _round_statement(
        tuple(target.table for target in every),
        tuple((target.table, target.registry) for target in targets),
    )
    started, *ready = conn.execute(statement, {"now": now}).one()
    waiting = [target for target, has_work in zip(targets, ready, strict=True) if has_work]
    return capacity - int(started), waiting


def _claim_batch(
    conn: Connection,
    waiting: list[Verifiable],
    wanted: int,
    holder: str | None,
    now: datetime,
    room: tuple[int, Sequence[Verifiable]] | None = None,
) -> tuple[Batch, int]:
    """One batch of up to `wanted` rows from the types in `waiting`, in order; a type that
    gives fewer rows than asked has no more and leaves `waiting`. Returns the batch and its size.
    """
    batch: Batch = []
    claimed = 0
    for target in list(waiting):
        if claimed >= wanted:
            break
        claims = target.claim(conn, wanted - claimed, holder, now, room)
        if len(claims) < wanted - claimed:
            waiting.remove(target)
        claimed += len(claims)
        if claims:
            batch.append((target, claims))
    return batch, claimed


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


def read_registry_batch(
    geo: Geo, main_conn: Connection, replicator: type[Replicator], ids: Sequence[int]
) -> tuple[dict[int, Any], dict[int, str]]:
    """The records of a claimed batch of copies and the primary's checksums of them, read in
    one query: records without a checksum are left out (nothing to compare them with).

    The primary's verification state is replicated with the records (its `<name>_states` rows
    or the model's own columns), so one join reads both.
    """
    if not replicator.verification_enabled or not ids:
        return {}, {}
    model = replicator.model
    target = primary_verifiable(geo, replicator)
    records: dict[int, Any] = {}
    expected: dict[int, str] = {}
    for chunk in in_chunks(list(ids)):
        statement = _batch_with_checksums(model, target.table, target.key)
        with Session(main_conn, expire_on_commit=False) as session:
            for record, checksum in session.execute(statement, {"ids": chunk}):
                records[int(record.id)] = record
                expected[int(record.id)] = str(checksum)
            session.expunge_all()
    return records, expected


@built_once
def _batch_with_checksums(model: type[Any], table: Table, key: Column[Any]) -> Any:
    """`SELECT model, checksum … WHERE id IN :ids` for the records whose primary verification
    succeeded, built once per model."""
    c = table.c
    model_key = model.__mapper__.primary_key[0]
    statement = select(model, c.verification_checksum)
    if table is not model.__table__:
        statement = statement.join(table, key == model_key)
    return statement.where(
        model_key.in_(bindparam("ids", expanding=True)),
        c.verification_state == VerificationState.SUCCEEDED,
        c.verification_checksum.is_not(None),
    )


# -- helpers ------------------------------------------------------------------------------------
