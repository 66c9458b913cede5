"""Registries: the sync state of every replicable on a secondary, and its state machine.

Each transition is one conditional UPDATE whose WHERE clause names the states it may leave, so
an illegal transition changes nothing and raises; `synced` additionally requires the row to be
the very sync that was started (same `last_synced_at`), so it loses to any newer event.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntEnum
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Connection,
    DateTime,
    Integer,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    case,
    column,
    func,
    insert,
    literal,
    or_,
    select,
    union_all,
    update,
)

from geosync.db.engines import is_sqlite
from geosync.errors import ConfigurationError, InvalidTransition, NotFound, ValidationError

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.replicator import Replicator

MAX_MESSAGE = 255
#: The most rows `Registry.newest` returns at once.
MAX_LISTED = 1000
DEFAULT_CAP = timedelta(hours=1)
MISSING_ON_PRIMARY_CAP = timedelta(hours=4)


StateT = TypeVar("StateT", "SyncState", "VerificationState")


class SyncState(IntEnum):
    """Sync states, with GitLab's values."""

    PENDING = 0
    STARTED = 1
    SYNCED = 2
    FAILED = 3


class VerificationState(IntEnum):
    """Verification states, with GitLab's values."""

    PENDING = 0
    STARTED = 1
    SUCCEEDED = 2
    FAILED = 3
    DISABLED = 4


def state_named(states: type[StateT], name: str) -> StateT:
    """The member of `states` called `name` (any case), or `ValidationError` naming the choices."""
    try:
        return states[name.upper()]
    except KeyError:
        choices = ", ".join(member.name.lower() for member in states)
        what = "sync" if states is SyncState else "verification"
        raise ValidationError(f"unknown {what} state {name!r} (use: {choices})") from None


def cut(message: str, limit: int = MAX_MESSAGE) -> str:
    """`message` shortened to `limit` characters (database columns are bounded)."""
    return message if len(message) <= limit else message[: limit - 1] + "…"


@dataclass(frozen=True)
class Backoff:
    """Retry delays: `n**4 + 15 + r*(n+1)` seconds with r in [0, 29], capped (§5)."""

    rng: random.Random
    scale: float = 1.0

    def delay(self, n: int) -> timedelta:
        """The delay before retry number `n` (n ≥ 1)."""
        r = self.rng.randint(0, 29)
        return timedelta(seconds=(n**4 + 15 + r * (n + 1)) * self.scale)

    def next_retry_time(self, now: datetime, n: int, cap: timedelta = DEFAULT_CAP) -> datetime:
        """When retry number `n` is due: `min(now + delay(n), now + cap + delay(1))`."""
        capped = now + cap * self.scale + self.delay(1)
        if n > 20:  # n**4 alone exceeds any cap; avoid huge timedeltas
            return capped
        return min(now + self.delay(n), capped)


@dataclass(frozen=True)
class RegistryRow:
    """One registry row as read from the tracking database."""

    values: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def sync_state(self) -> SyncState:
        """The sync state as an enum."""
        return SyncState(self.values["state"])

    @property
    def verification(self) -> VerificationState:
        """The verification state as an enum."""
        return VerificationState(self.values["verification_state"])


@dataclass(frozen=True)
class _SyncedSource:
    """Where a synced UPDATE finds each finished sync's values: bound parameters for one row,
    the columns of a row source (arrays, a JSON document) for many."""

    key: Any
    started: Any
    missing: Any
    path: Any
    checksum: Any


@dataclass(frozen=True)
class SyncedRow:
    """One finished sync for `Registry.synced_rows` (the arguments of `synced_row`)."""

    model_record_id: int
    started_at: datetime
    verification: VerificationState = VerificationState.DISABLED
    checksum: str | None = None
    missing_on_primary: bool = False
    local_path: str | None = None


#: Hot statements, built once: by registry table name and what varies in their shape.
_STATEMENTS: dict[tuple[Any, ...], Any] = {}


def pending_values(pending_since: Any) -> dict[str, Any]:
    """The columns of the pending transition: retry fields cleared, verification disabled until
    the primary has a checksum; `pending_since` is a time or a SQL expression."""
    return {
        "state": SyncState.PENDING,
        "retry_at": None,
        "retry_count": 0,
        "last_synced_at": None,
        "verification_state": VerificationState.DISABLED,
        "pending_since": pending_since,
    }


class Registry:
    """The registry of one replicator on this secondary: reads, transitions and claims."""

    def __init__(self, geo: Geo, replicator: type[Replicator]) -> None:
        self.geo = geo
        self.replicator = replicator
        self.table: Table = geo.tables.registry(replicator)
        self.key = self.table.c[replicator.registry_foreign_key]
        self.backoff = Backoff(geo.random, geo.settings.backoff_scale)

    @classmethod
    def of_secondary(cls, geo: Geo, replicator: type[Replicator], command: str) -> Registry:
        """The registry of `replicator` for an operator's `command`, or `ConfigurationError`
        when this site has no tracking database (a primary keeps no registries)."""
        if not geo.has_tracking_database:
            raise ConfigurationError(
                f"{command} runs on a secondary: this site has no tracking database"
                " (run it with a secondary's configuration)"
            )
        return cls(geo, replicator)

    def __repr__(self) -> str:
        return f"<Registry {self.table.name}>"

    # -- reads -------------------------------------------------------------------------------

    def get(self, conn: Connection, model_record_id: int) -> RegistryRow | None:
        """The row of `model_record_id`, or None."""
        row = conn.execute(select(self.table).where(self.key == model_record_id)).first()
        return RegistryRow(dict(row._mapping)) if row else None

    def require(self, conn: Connection, model_record_id: int) -> RegistryRow:
        """The row of `model_record_id`, or `NotFound`."""
        row = self.get(conn, model_record_id)
        if row is None:
            raise NotFound(
                f"{self.replicator.replicable_name} registry {model_record_id} not found"
            )
        return row

    def count_by_state(self, conn: Connection) -> dict[SyncState, int]:
        """Row counts per sync state (uses the state index)."""
        rows = conn.execute(select(self.table.c.state, func.count()).group_by(self.table.c.state))
        counts = dict.fromkeys(SyncState, 0)
        for state, count in rows:
            counts[SyncState(state)] = int(count)
        return counts

    def newest(
        self,
        conn: Connection,
        limit: int,
        state: SyncState | None = None,
        verification: VerificationState | None = None,
    ) -> list[RegistryRow]:
        """Up to `limit` rows, newest (highest id) first, of one sync and/or verification state
        when given; a sync state filter reads along the state index."""
        if not 1 <= limit <= MAX_LISTED:
            raise ValidationError(f"limit must be between 1 and {MAX_LISTED}, got {limit}")
        c = self.table.c
        query = select(self.table).order_by(c.id.desc()).limit(limit)
        if state is not None:
            query = query.where(c.state == state)
        if verification is not None:
            query = query.where(c.verification_state == verification)
        return [RegistryRow(dict(row._mapping)) for row in conn.execute(query)]

    # -- creation ----------------------------------------------------------------------------

    def ensure_pending(
        self, conn: Connection, model_record_id: int, pending_since: datetime | None = None
    ) -> None:
        """Create the row as pending, or move an existing row to pending (a newer change)."""
        if self.get(conn, model_record_id) is None:
            self.insert_pending(conn, [model_record_id], pending_since)
        else:
            self.pending(conn, model_record_id, pending_since)

    def insert_pending(
        self, conn: Connection, ids: Sequence[int], pending_since: datetime | None = None
    ) -> int:
        """Bulk-insert new pending rows for `ids` (which must not have rows yet)."""
        now = self.geo.clock.now()
        return self.insert_pending_since(conn, dict.fromkeys(ids, pending_since or now))

    # -- set-wise (many rows a statement, for the log cursor) --------------------------------

    def existing_ids(self, conn: Connection, ids: Iterable[int]) -> set[int]:
        """The subset of `ids` that have a row, in one query."""
        wanted = list(ids)
        if not wanted:
            return set()
        return {
            int(i) for i in conn.execute(select(self.key).where(self.key.in_(wanted))).scalars()
        }

    def insert_pending_since(self, conn: Connection, since: Mapping[int, datetime]) -> int:
        """Bulk-insert new pending rows, each with its own `pending_since` (rows must not exist).

        Like `insert_pending`, but for events of different times in one statement.
        """
        if not since:
            return 0
        now = self.geo.clock.now()
        fk = self.replicator.registry_foreign_key
        conn.execute(
            insert(self.table),
            [
                {
                    fk: i,
                    "created_at": now,
                    "state": SyncState.PENDING,
                    "verification_state": VerificationState.DISABLED,
                    "pending_since": at,
                }
                for i, at in since.items()
            ],
        )
        return len(since)

    def pending_many(self, conn: Connection, since: Mapping[int, datetime]) -> None:
        """The `pending` transition (any state → pending) of many rows in one statement.

        Each row gets its own `pending_since`. Raises `InvalidTransition` when a row is missing,
        as `pending` does, and then changes nothing (the caller's savepoint rolls it back).
        """
        if not since:
            return
        pending_since_type = self.table.c.pending_since.type
        times = set(since.values())
        pending_since: Any = (
            literal(next(iter(times)), pending_since_type)
            if len(times) == 1
            else case(
                {i: literal(at, pending_since_type) for i, at in since.items()}, value=self.key
            )
        )
        changed = conn.execute(
            update(self.table)
            .where(self.key.in_(list(since)))
            .values(**pending_values(pending_since))
            .returning(self.key)
        )
        missing = set(since) - {int(i) for i in changed.scalars()}
        if missing:
            raise InvalidTransition(
                f"cannot make {self.replicator.replicable_name} registries {sorted(missing)}"
                " pending: they do not exist"
            )

    # -- transitions -------------------------------------------------------------------------

    def pending(
        self, conn: Connection, model_record_id: int, pending_since: datetime | None = None
    ) -> None:
        """Any state → pending: a newer change must be synced (retry fields cleared)."""
        self._transition(
            conn,
            model_record_id,
            "pending",
            tuple(SyncState),
            **pending_values(pending_since or self.geo.clock.now()),
        )

    def start(self, conn: Connection, model_record_id: int) -> datetime:
        """pending, synced or failed → started; returns the start time that `synced` needs."""
        now = self.geo.clock.now()
        self._transition(
            conn,
            model_record_id,
            "start",
            (SyncState.PENDING, SyncState.SYNCED, SyncState.FAILED),
            state=SyncState.STARTED,
            last_synced_at=now,
        )
        return now

    def synced(
        self,
        conn: Connection,
        model_record_id: int,
        started_at: datetime,
        *,
        verification: VerificationState = VerificationState.DISABLED,
        checksum: str | None = None,
        missing_on_primary: bool = False,
        local_path: str | None = None,
    ) -> bool:
        """started → synced, only if this is still the sync begun at `started_at`.

        Returns False (and changes nothing) when a newer event moved the row on meanwhile.
        """
        row = self.synced_row(
            conn,
            model_record_id,
            started_at,
            verification=verification,
            checksum=checksum,
            missing_on_primary=missing_on_primary,
            local_path=local_path,
        )
        return row is not None

    def synced_row(
        self,
        conn: Connection,
        model_record_id: int,
        started_at: datetime,
        *,
        verification: VerificationState = VerificationState.DISABLED,
        checksum: str | None = None,
        missing_on_primary: bool = False,
        local_path: str | None = None,
    ) -> RegistryRow | None:
        """`synced`, returning the row's `pending_since` as it was, or None if superseded."""
        now = self.geo.clock.now()
        succeeded = verification == VerificationState.SUCCEEDED
        row = conn.execute(
            self._synced_statement(verification),
            {
                "b_key": model_record_id,
                "b_started_at": started_at,
                "b_missing": missing_on_primary,
                "b_checksum": checksum if succeeded else None,
                "b_verified_at": now if succeeded else None,
                "b_local_path": local_path,
            },
        ).first()
        return RegistryRow(dict(row._mapping)) if row is not None else None

    def synced_rows(self, conn: Connection, syncs: Sequence[SyncedRow]) -> dict[int, RegistryRow]:
        """`synced_row` for many rows; the rows that became synced, by model id.

        One UPDATE ... FROM per verification outcome, its SQL the same whatever the count (so
        prepared once), fed by arrays on PostgreSQL (`unnest`) and by one JSON document on
        SQLite (`json_each`): one round trip and one statement's overhead for the group instead
        of one per row.
        """
        if len(syncs) > 1:
            return self._synced_rows_at_once(conn, syncs)
        done: dict[int, RegistryRow] = {}
        for sync in syncs:
            row = self.synced_row(
                conn,
                sync.model_record_id,
                sync.started_at,
                verification=sync.verification,
                checksum=sync.checksum,
                missing_on_primary=sync.missing_on_primary,
                local_path=sync.local_path,
            )
            if row is not None:
                done[sync.model_record_id] = row
        return done

    def _synced_rows_at_once(
        self, conn: Connection, syncs: Sequence[SyncedRow]
    ) -> dict[int, RegistryRow]:
        by_outcome: dict[VerificationState, list[SyncedRow]] = {}
        for sync in syncs:
            by_outcome.setdefault(sync.verification, []).append(sync)
        now = self.geo.clock.now()
        sqlite = is_sqlite(conn.engine)
        done: dict[int, RegistryRow] = {}
        for verification, group in by_outcome.items():
            succeeded = verification == VerificationState.SUCCEEDED
            params: dict[str, Any]
            if sqlite:
                statement = self._synced_many_sqlite(verification)
                params = {"b_given": self._given_json(conn, group, succeeded)}
            else:
                statement = self._synced_many_statement(verification)
                params = {
                    "b_keys": [s.model_record_id for s in group],
                    "b_started": [s.started_at for s in group],
                    "b_missing": [s.missing_on_primary for s in group],
                    "b_paths": [s.local_path for s in group],
                    "b_checksums": [s.checksum if succeeded else None for s in group],
                }
            params["b_verified_at"] = now if succeeded else None
            for row in conn.execute(statement, params):
                fields = dict(row._mapping)
                done[int(fields.pop("b_key"))] = RegistryRow(fields)
        return done

    def _synced_many_statement(self, verification: VerificationState) -> Any:
        """`_synced_statement` for many rows at once (PostgreSQL), built once per table."""
        cache_key = (self.table.name, "synced_many", verification)
        if (statement := self._built(cache_key)) is not None:
            return statement
        stamp = DateTime(timezone=True)
        given = (
            func.unnest(
                bindparam("b_keys", type_=ARRAY(BigInteger)),
                bindparam("b_started", type_=ARRAY(stamp)),
                bindparam("b_missing", type_=ARRAY(Boolean)),
                bindparam("b_paths", type_=ARRAY(Text)),
                bindparam("b_checksums", type_=ARRAY(Text)),
            )
            .table_valued(
                column("model_id", BigInteger),
                column("started", stamp),
                column("missing", Boolean),
                column("path", Text),
                column("checksum", Text),
            )
            .render_derived(name="given")
        ).c
        source = _SyncedSource(
            given.model_id, given.started, given.missing, given.path, given.checksum
        )
        # Leads the planner to the key's unique index even when its statistics still think no
        # row is started (a join filter over every started row).
        by_index = self.key == any_(bindparam("b_keys", type_=ARRAY(BigInteger)))
        statement = self._synced_update(verification, source, by_index).returning(
            self.key.label("b_key"), self.table.c.pending_since
        )
        _STATEMENTS[cache_key] = statement
        return statement

    def _given_json(self, conn: Connection, group: Sequence[SyncedRow], succeeded: bool) -> str:
        """The finished syncs of `group` as the JSON array `_synced_many_sqlite` reads; start
        times in the very form the registry stores them, so they compare as equal text."""
        column_type = self.table.c.last_synced_at.type.dialect_impl(conn.dialect)
        stored = column_type.bind_processor(conn.dialect)
        assert stored is not None
        return json.dumps(
            [
                {
                    "k": s.model_record_id,
                    "s": stored(s.started_at),
                    "m": s.missing_on_primary,
                    "p": s.local_path,
                    "c": s.checksum if succeeded else None,
                }
                for s in group
            ]
        )

    def _synced_many_sqlite(self, verification: VerificationState) -> Any:
        """`_synced_many_statement` for SQLite: the rows come from a JSON array (`json_each`)."""
        cache_key = (self.table.name, "synced_many_sqlite", verification)
        if (statement := self._built(cache_key)) is not None:
            return statement
        given = func.json_each(bindparam("b_given", type_=Text)).table_valued("value")

        def field(name: str) -> Any:
            return func.json_extract(given.c.value, f"$.{name}")

        source = _SyncedSource(field("k"), field("s"), field("m"), field("p"), field("c"))
        statement = self._synced_update(verification, source).returning(
            self.key.label("b_key"), self.table.c.pending_since
        )
        _STATEMENTS[cache_key] = statement
        return statement

    def _built(self, cache_key: tuple[Any, ...]) -> Any:
        """A hot statement built before for this very table, or None."""
        statement = _STATEMENTS.get(cache_key)
        return statement if statement is not None and statement.table is self.table else None

    def _synced_statement(self, verification: VerificationState) -> Any:
        """The `synced` UPDATE, built once per registry table and outcome: building it costs
        more than running it, and every finished sync runs it."""
        cache_key = (self.table.name, "synced", verification)
        if (statement := self._built(cache_key)) is not None:
            return statement
        c = self.table.c
        source = _SyncedSource(
            bindparam("b_key"),
            bindparam("b_started_at", type_=c.last_synced_at.type),
            bindparam("b_missing"),
            bindparam("b_local_path", type_=c.local_path.type),
            bindparam("b_checksum", type_=c.verification_checksum.type),
        )
        statement = self._synced_update(verification, source).returning(c.pending_since)
        _STATEMENTS[cache_key] = statement
        return statement

    def _synced_update(
        self, verification: VerificationState, given: _SyncedSource, *where: Any
    ) -> Any:
        """started -> synced for the row `given` names, only while it is still the sync begun
        at `given.started`; every form of the synced UPDATE (one row, many) is this one."""
        c = self.table.c
        values: dict[str, Any] = {
            **self._synced_values(verification),
            "missing_on_primary": given.missing,
            "local_path": func.coalesce(given.path, c.local_path),
        }
        if verification == VerificationState.SUCCEEDED:
            values.update(
                verification_checksum=given.checksum,
                verified_at=bindparam("b_verified_at", type_=c.verified_at.type),
            )
        return (
            update(self.table)
            .where(
                self.key == given.key,
                *where,
                c.state == SyncState.STARTED,
                c.last_synced_at == given.started,
            )
            .values(**values)
        )

    def _synced_values(self, verification: VerificationState) -> dict[str, Any]:
        """What every `synced` UPDATE sets, whatever the row's own values."""
        return {
            "state": SyncState.SYNCED,
            "retry_count": 0,
            "retry_at": None,
            "last_sync_failure": None,
            **self._verification_after_sync(verification),
            "verification_failure": None,
            "checksum_mismatch": False,
            "verification_checksum_mismatched": None,
        }

    def _verification_after_sync(self, verification: VerificationState) -> dict[str, Any]:
        # A `checksum_succeeded` that arrived during the sync left the row's verification
        # pending: keep it rather than disable it. A resync after a failed verification keeps
        # its retry count when verification goes pending again (mismatches keep backing off).
        c = self.table.c
        if verification == VerificationState.DISABLED:
            pending, disabled = int(VerificationState.PENDING), int(VerificationState.DISABLED)
            state: Any = case((c.verification_state == pending, pending), else_=disabled)
        else:
            state = verification
        from_failed = c.verification_state == VerificationState.FAILED
        keep = verification == VerificationState.PENDING
        return {
            "verification_state": state,
            "verification_retry_count": (
                case((from_failed, c.verification_retry_count), else_=0) if keep else 0
            ),
            "verification_retry_at": (
                case((from_failed, c.verification_retry_at), else_=None) if keep else None
            ),
        }

    def failed(
        self,
        conn: Connection,
        model_record_id: int,
        message: str,
        error: str | None = None,
        *,
        missing_on_primary: bool = False,
        retry_count: int | None = None,
    ) -> datetime:
        """Any state → failed, with a reason and the next retry time; returns that time."""
        row = self.require(conn, model_record_id)
        n = retry_count if retry_count is not None else row.retry_count + 1
        cap = MISSING_ON_PRIMARY_CAP if missing_on_primary else DEFAULT_CAP
        retry_at = self.backoff.next_retry_time(self.geo.clock.now(), n, cap)
        text = f"{message}: {error}" if error else message
        self._transition(
            conn,
            model_record_id,
            "fail",
            tuple(SyncState),
            state=SyncState.FAILED,
            retry_count=n,
            retry_at=retry_at,
            last_sync_failure=cut(text),
            missing_on_primary=missing_on_primary,
        )
        return retry_at

    def resync(self, conn: Connection, model_record_id: int) -> None:
        """synced or failed → pending, on an operator's request."""
        self._transition(
            conn,
            model_record_id,
            "resync",
            (SyncState.SYNCED, SyncState.FAILED),
            state=SyncState.PENDING,
            retry_at=None,
            retry_count=0,
            last_synced_at=None,
            verification_state=VerificationState.DISABLED,
        )

    def _transition(
        self,
        conn: Connection,
        model_record_id: int,
        action: str,
        allowed: Iterable[SyncState],
        **values: Any,
    ) -> None:
        allowed = tuple(allowed)
        result = conn.execute(
            update(self.table)
            .where(self.key == model_record_id, self.table.c.state.in_([int(s) for s in allowed]))
            .values(**values)
        )
        if result.rowcount == 0:
            row = self.require(conn, model_record_id)
            raise InvalidTransition(
                f"cannot {action} {self.replicator.replicable_name} registry {model_record_id}:"
                f" it is {row.sync_state.name.lower()}"
            )

    # -- work --------------------------------------------------------------------------------

    def due_condition(self, now: datetime | Any) -> Any:
        """Rows a worker may claim: pending, or failed with their retry due (`now`: a time or a
        bound parameter)."""
        c = self.table.c
        return or_(
            c.state == SyncState.PENDING,
            and_(c.state == SyncState.FAILED, c.retry_at <= now),
        )

    def claim(
        self, conn: Connection, limit: int, holder: str | None = None
    ) -> list[tuple[int, datetime]]:
        """Claim up to `limit` due rows in one statement and mark them started.

        Pending rows come first (their `retry_at` is null), then failed rows by due time.
        PostgreSQL skips rows other workers hold; SQLite's `BEGIN IMMEDIATE` serialises claims.
        """
        if limit <= 0:
            return []
        now = self.geo.clock.now()
        claimed = conn.execute(
            self._claim_statement(not is_sqlite(conn.engine)),
            {"b_now": now, "b_limit": limit, "b_holder": holder},
        )
        return [(int(model_id), now) for (model_id,) in claimed]

    def _claim_statement(self, skip_locked: bool) -> Any:
        """The claim UPDATE, built once per registry table (see `_synced_statement`)."""
        cache_key = (self.table.name, "claim", skip_locked)
        if (statement := self._built(cache_key)) is not None:
            return statement
        c = self.table.c
        now = bindparam("b_now", type_=c.retry_at.type)
        limit = bindparam("b_limit", type_=Integer())
        # Pending rows (their retry_at is null) by id, then failed ones by due time: two parts,
        # each read along an index (`ix_<registry>_pending`, `ix_<registry>_retry_at`), where
        # one ORDER BY retry_at NULLS FIRST made PostgreSQL sort every due row on each claim.
        parts = [
            (c.state == SyncState.PENDING, (c.id,)),
            (and_(c.state == SyncState.FAILED, c.retry_at <= now), (c.retry_at, c.id)),
        ]
        ranked = []
        for rank, (where, order) in enumerate(parts):
            part = (
                select(c.id.label("id"), c.retry_at.label("at"))
                .where(where)
                .order_by(*order)
                .limit(limit)
            )
            if skip_locked:
                part = part.with_for_update(skip_locked=True)
            rows = part.subquery(f"part_{rank}")
            ranked.append(select(rows.c.id, literal(rank).label("rank"), rows.c.at))
        union = union_all(*ranked).subquery("candidates")
        candidates = select(union.c.id).order_by(union.c.rank, union.c.at, union.c.id).limit(limit)
        statement = (
            update(self.table)
            .where(c.id.in_(candidates.scalar_subquery()))
            .values(state=SyncState.STARTED, last_synced_at=now, claimed_by=bindparam("b_holder"))
            .returning(self.key)
        )
        _STATEMENTS[cache_key] = statement
        return statement

    def started_count(self, conn: Connection) -> int:
        """How many rows are being synced right now (across every worker of the site)."""
        return int(
            conn.execute(
                select(func.count())
                .select_from(self.table)
                .where(self.table.c.state == SyncState.STARTED)
            ).scalar_one()
        )

    def fail_abandoned(self, conn: Connection, live_holders: set[str]) -> list[int]:
        """Fail started rows whose worker is gone (its lease expired); returns their ids (the
        stuck sweep removes what those workers left beside the copies)."""
        c = self.table.c
        query = select(self.key).where(c.state == SyncState.STARTED, c.claimed_by.is_not(None))
        if live_holders:
            query = query.where(c.claimed_by.not_in(sorted(live_holders)))
        return [
            int(model_record_id)
            for model_record_id in list(conn.execute(query).scalars())
            if self._fail_started(
                conn, model_record_id, "Sync interrupted: the worker running it stopped"
            )
        ]

    def _fail_started(self, conn: Connection, model_record_id: int, message: str) -> int:
        c = self.table.c
        now = self.geo.clock.now()
        result = conn.execute(
            update(self.table)
            .where(self.key == model_record_id, c.state == SyncState.STARTED)
            .values(
                state=SyncState.FAILED,
                retry_count=1,
                retry_at=self.backoff.next_retry_time(now, 1),
                last_sync_failure=message,
            )
        )
        return int(result.rowcount)

    def fail_stuck(self, conn: Connection) -> int:
        """Fail rows started longer ago than the sync timeout; returns how many."""
        timeout = self.replicator.sync_timeout
        hours = timeout.total_seconds() / 3600
        cutoff = self.geo.clock.now() - timeout
        c = self.table.c
        stuck = conn.execute(
            select(self.key).where(c.state == SyncState.STARTED, c.last_synced_at < cutoff)
        ).scalars()
        message = f"Sync timed out after {hours:g} hours"
        return sum(
            self._fail_started(conn, model_record_id, message) for model_record_id in list(stuck)
        )
