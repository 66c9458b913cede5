"""Registries: the sync state of every replicable on a secondary, and its state machine.

Each transition is one conditional UPDATE whose WHERE clause names the states it may leave, so
an illegal transition changes nothing and raises; `synced` additionally requires the row to be
the very sync that was started (the same claim generation), so it loses to any newer event, and
so does `failed`. A newer change of an item whose sync is in flight does not take the row from
that sync: the row stays started (its claim, and so its capacity slot, held) with
`resync_requested` set, and the sync's end, whatever it was, makes it pending
(`Registry.release_overtaken`), so an item is never transferred twice at once. Every write of a
registry row is a method here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    ColumnElement,
    Connection,
    Integer,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    case,
    column,
    delete,
    false,
    func,
    insert,
    literal,
    literal_column,
    null,
    select,
    true,
    tuple_,
    union_all,
    update,
)

from geosync.attempts import forget_attempts
from geosync.backoff import DEFAULT_CAP, MISSING_ON_PRIMARY_CAP, Backoff
from geosync.db import keyset
from geosync.db.derived import UNSYNCED_STATES
from geosync.db.engines import is_sqlite
from geosync.db.statements import built_once, statement
from geosync.errors import ConfigurationError, InvalidTransition, NotFound, ValidationError
from geosync.states import SyncState, VerificationState, cut

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.replicator import Replicator

#: The most rows `Registry.newest` returns at once.
MAX_LISTED = 1000


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

    @property
    def brand_new(self) -> bool:
        """Whether geosync never placed, failed or verified this copy (a first sync)."""
        return (
            self.values["retry_count"] == 0
            and self.values["verified_at"] is None
            and self.values["verification_checksum"] is None
            and self.values.get("local_path") is None
        )


@dataclass(frozen=True)
class SyncClaim:
    """The claim that started one sync of a row: when, and the row's claim generation.

    Every claim (and `start`) bumps the row's `claim_generation`, so a finished sync's
    `synced` or `failed` can tell its own claim from any later one exactly, even two claims of
    the same microsecond.
    """

    at: datetime
    generation: int


@dataclass(frozen=True)
class Interruption:
    """A started sync or verification given back to the queue because it was interrupted:
    which record, and when it started (None if unknown)."""

    model_record_id: int
    started_at: datetime | None


@dataclass(frozen=True)
class SyncedRow:
    """One finished sync for `Registry.synced_rows` (the arguments of `synced_row`)."""

    model_record_id: int
    claim: SyncClaim
    verification: VerificationState = VerificationState.DISABLED
    checksum: str | None = None
    missing_on_primary: bool = False
    local_path: str | None = None


@dataclass(frozen=True)
class _SyncedSource:
    """Where a synced UPDATE finds each finished sync's values: bound parameters for one row,
    the columns of a row source (arrays, a JSON document) for many."""

    key: Any
    generation: Any
    missing: Any
    path: Any
    checksum: Any


#: The forms of the synced UPDATE: one row by bound parameters, many rows from arrays
#: (PostgreSQL's `unnest`) or from one JSON document (SQLite's `json_each`).
SyncedForm = Literal["one", "unnest", "json_each"]


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
        "resync_requested": False,
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
        """Row counts per sync state (every state present)."""
        counts = dict.fromkeys(SyncState, 0)
        for (state, _), count in self.count_by_states(conn).items():
            counts[state] += count
        return counts

    def count_by_states(self, conn: Connection) -> dict[tuple[SyncState, VerificationState], int]:
        """Row counts per (sync state, verification state) pair present, in one GROUP BY read
        from the `ix_<registry>_states` index alone (an index-only scan on PostgreSQL): the
        status's sync and verification counts from one pass over the table instead of two."""
        c = self.table.c
        rows = conn.execute(
            select(c.state, c.verification_state, func.count()).group_by(
                c.state, c.verification_state
            )
        )
        return {
            (SyncState(state), VerificationState(verification)): int(count)
            for state, verification, count in rows
        }

    def oldest_unsynced_since(self, conn: Connection) -> datetime | None:
        """When the longest-waiting unsynced row began to wait (its change, else its row)."""
        c = self.table.c
        # MIN(COALESCE(pending_since, created_at)) as two MINs, each one step along its partial
        # index (`ix_<registry>_unsynced_since`, `..._unsynced_created`), whose conditions
        # these repeat with literal states: the planner proves an index's condition from the
        # query's only when it sees the values.
        unsynced = c.state.in_([literal_column(str(s)) for s in UNSYNCED_STATES])
        changed = select(func.min(c.pending_since)).where(unsynced).scalar_subquery()
        unchanged = (
            select(func.min(c.created_at))
            .where(unsynced, c.pending_since.is_(None))
            .scalar_subquery()
        )
        found = [t for t in conn.execute(select(changed, unchanged)).one() if t is not None]
        if not found:
            return None
        return min(_aware(t) for t in found)

    def resyncable_count(self, conn: Connection, failed_only: bool) -> int:
        """How many rows a bulk resync would move (see `resyncable`)."""
        query = select(func.count()).select_from(self.table).where(self.resyncable(failed_only))
        return int(conn.execute(query).scalar_one())

    def next_keys(self, conn: Connection, where: Any, after: int, limit: int) -> list[int]:
        """Keyset page: up to `limit` model ids above `after` of rows matching `where`."""
        return keyset.next_keys(conn, self.key, where, after, limit)

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
        missing = set(since) - self._make_pending(conn, since)
        if missing:
            raise InvalidTransition(
                f"cannot make {self.replicator.replicable_name} registries {sorted(missing)}"
                " pending: they do not exist"
            )

    def _make_pending(self, conn: Connection, since: Mapping[int, datetime]) -> set[int]:
        """One UPDATE: rows of `since` → pending, each with its own `pending_since`; returns
        the model ids changed. A row being synced right now stays started and claimed (its
        capacity slot held, nobody else may claim it) with `resync_requested` set: the end of
        its sync makes it pending (`release_overtaken`). One statement decides per row, so a
        claim or a settlement committed meanwhile is seen (PostgreSQL re-reads the row)."""
        pending_since_type = self.table.c.pending_since.type
        times = set(since.values())
        pending_since: Any = (
            literal(next(iter(times)), pending_since_type)
            if len(times) == 1
            else case(
                {i: literal(at, pending_since_type) for i, at in since.items()}, value=self.key
            )
        )
        c = self.table.c
        in_flight = c.state == SyncState.STARTED
        values = {
            name: case((in_flight, c[name]), else_=_typed(value, c[name]))
            for name, value in pending_values(None).items()
            if name not in ("pending_since", "resync_requested")
        }
        changed = conn.execute(
            update(self.table)
            .where(self.key.in_(list(since)))
            .values(
                **values,
                pending_since=pending_since,
                resync_requested=case((in_flight, true()), else_=false()),
            )
            .returning(self.key)
        )
        return {int(i) for i in changed.scalars()}

    # -- transitions -------------------------------------------------------------------------

    def pending(
        self, conn: Connection, model_record_id: int, pending_since: datetime | None = None
    ) -> None:
        """Any state → pending: a newer change must be synced (retry fields cleared); a row
        being synced stays started until its sync ends (`_make_pending`)."""
        at = pending_since or self.geo.clock.now()
        if not self._make_pending(conn, {model_record_id: at}):
            self._refuse(conn, model_record_id, "pending")

    def start(self, conn: Connection, model_record_id: int) -> SyncClaim:
        """pending, synced or failed → started; returns the claim that `synced` needs."""
        now = self.geo.clock.now()
        c = self.table.c
        allowed = [int(SyncState.PENDING), int(SyncState.SYNCED), int(SyncState.FAILED)]
        generation = conn.execute(
            update(self.table)
            .where(self.key == model_record_id, c.state.in_(allowed))
            .values(
                state=SyncState.STARTED,
                last_synced_at=now,
                claim_generation=c.claim_generation + 1,
                resync_requested=False,
            )
            .returning(c.claim_generation)
        ).scalar()
        if generation is None:
            self._refuse(conn, model_record_id, "start")
        return SyncClaim(now, int(generation))

    def synced(
        self,
        conn: Connection,
        model_record_id: int,
        claim: SyncClaim,
        *,
        verification: VerificationState = VerificationState.DISABLED,
        checksum: str | None = None,
        missing_on_primary: bool = False,
        local_path: str | None = None,
    ) -> bool:
        """started → synced, only if this is still the sync `claim` started.

        Returns False (and changes nothing) when a newer event moved the row on meanwhile.
        """
        row = self.synced_row(
            conn,
            model_record_id,
            claim,
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
        claim: SyncClaim,
        *,
        verification: VerificationState = VerificationState.DISABLED,
        checksum: str | None = None,
        missing_on_primary: bool = False,
        local_path: str | None = None,
    ) -> RegistryRow | None:
        """`synced`, returning the row's `pending_since` as it was, or None if superseded."""
        sync = SyncedRow(
            model_record_id, claim, verification, checksum, missing_on_primary, local_path
        )
        return self.synced_rows(conn, [sync]).get(model_record_id)

    def synced_rows(self, conn: Connection, syncs: Sequence[SyncedRow]) -> dict[int, RegistryRow]:
        """`synced_row` for many rows; the rows that became synced, by model id.

        One UPDATE per verification outcome. Many rows go in one UPDATE ... FROM whose SQL is
        the same whatever the count (so prepared once), fed by arrays on PostgreSQL (`unnest`)
        and by one JSON document on SQLite (`json_each`): one round trip and one statement's
        overhead for the group instead of one per row.
        """
        by_outcome: dict[VerificationState, list[SyncedRow]] = {}
        for sync in syncs:
            by_outcome.setdefault(sync.verification, []).append(sync)
        form: SyncedForm = (
            "one" if len(syncs) == 1 else "json_each" if is_sqlite(conn.engine) else "unnest"
        )
        now = self.geo.clock.now()
        done: dict[int, RegistryRow] = {}
        for verification, group in by_outcome.items():
            params = _synced_params(form, group, verification, now)
            for row in conn.execute(self._synced_statement(form, verification), params):
                fields = dict(row._mapping)
                done[int(fields.pop("b_key"))] = RegistryRow(fields)
        overtaken = {s.model_record_id: s.claim for s in syncs if s.model_record_id not in done}
        if overtaken:
            self.release_overtaken(conn, overtaken)
        return done

    def _synced_statement(self, form: SyncedForm, verification: VerificationState) -> Any:
        """The synced UPDATE of `form`, built once per registry table, form and outcome:
        building it costs more than running it, and every finished sync runs it."""

        def build() -> Any:
            source, *where = self._synced_source(form)
            return self._synced_update(verification, source, *where).returning(
                self.key.label("b_key"), self.table.c.pending_since
            )

        return self._hot(("synced", form, verification), build)

    def _synced_source(self, form: SyncedForm) -> tuple[Any, ...]:
        """Where the synced UPDATE of `form` reads each sync's values (see `_synced_params`),
        and any condition that form adds."""
        c = self.table.c
        if form == "one":
            return (
                _SyncedSource(
                    bindparam("b_key"),
                    bindparam("b_generation", type_=Integer()),
                    bindparam("b_missing"),
                    bindparam("b_path", type_=c.local_path.type),
                    bindparam("b_checksum", type_=c.verification_checksum.type),
                ),
            )
        if form == "json_each":
            given = func.json_each(bindparam("b_given", type_=Text)).table_valued("value")
            fields = [func.json_extract(given.c.value, f"$.{name}") for name in "kgmpc"]
            return (_SyncedSource(*fields),)
        keys = bindparam("b_keys", type_=ARRAY(BigInteger))
        arrays = func.unnest(
            keys,
            bindparam("b_generations", type_=ARRAY(Integer)),
            bindparam("b_missing", type_=ARRAY(Boolean)),
            bindparam("b_paths", type_=ARRAY(Text)),
            bindparam("b_checksums", type_=ARRAY(Text)),
        )
        given = arrays.table_valued(
            column("model_id", BigInteger),
            column("generation", Integer),
            column("missing", Boolean),
            column("path", Text),
            column("checksum", Text),
        ).render_derived(name="given")
        g = given.c
        # Leads the planner to the key's unique index even when its statistics still think no
        # row is started (a join filter over every started row).
        by_index = self.key == any_(keys)
        return _SyncedSource(g.model_id, g.generation, g.missing, g.path, g.checksum), by_index

    def _hot(self, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        """The hot statement `key` of this very table, built by `build` the first time."""
        return statement((self.table, *key), build)

    def _synced_update(
        self, verification: VerificationState, given: _SyncedSource, *where: Any
    ) -> Any:
        """started -> synced for the row `given` names, only while it is still the sync of the
        claim generation `given.generation`; every form of the synced UPDATE is this one."""
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
                c.claim_generation == given.generation,
                c.resync_requested == false(),
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
        claim: SyncClaim,
        message: str,
        error: str | None = None,
        *,
        missing_on_primary: bool = False,
        permanent: bool = False,
    ) -> datetime | None:
        """started → failed, only if this is still the sync `claim` started; returns the next
        retry time, or None (and changes nothing) when the row moved on or is gone. A
        `permanent` failure backs off further (`Backoff.next_permanent_retry_time`).

        One conditional UPDATE counts the retry in SQL (`retry_count + 1`), so a newer pending
        committed meanwhile wins, as it does against `synced`; the retry time, which needs that
        count, is set on the same row right after.
        """
        c = self.table.c
        guard = and_(
            self.key == model_record_id,
            c.state == SyncState.STARTED,
            c.claim_generation == claim.generation,
            c.resync_requested == false(),
        )
        retry_at = self._fail_where(
            conn, guard, message, error, c.retry_count + 1, missing_on_primary, permanent
        )
        if retry_at is None:
            self.release_overtaken(conn, {model_record_id: claim})
        return retry_at

    def release_overtaken(self, conn: Connection, claims: Mapping[int, SyncClaim]) -> set[int]:
        """The syncs of `claims` ended, overtaken by a newer change of their items
        (`resync_requested`): their rows → pending, the newer change's `pending_since` kept,
        for the next claim to transfer the item anew. Rows no longer started by those very
        claims are left alone. Returns the model ids released (one statement)."""
        if not claims:
            return set()
        c = self.table.c
        pairs = [(key, claim.generation) for key, claim in claims.items()]
        released = conn.execute(
            update(self.table)
            .where(
                tuple_(self.key, c.claim_generation).in_(pairs),
                c.state == SyncState.STARTED,
                c.resync_requested == true(),
            )
            .values(**pending_values(c.pending_since))
            .returning(self.key)
        )
        return {int(key) for key in released.scalars()}

    def fail_synced(
        self, conn: Connection, model_record_id: int, message: str, error: str, retry_count: int
    ) -> datetime | None:
        """synced → failed after its copy failed verification, so it is downloaded again;
        `retry_count` (the verification's) makes repeated failures back off further. Its
        lag counts from now: the copy was good until this check found it bad. Returns the
        next retry time, or None when the row is not synced (any more)."""
        guard = and_(self.key == model_record_id, self.table.c.state == SyncState.SYNCED)
        return self._fail_where(
            conn, guard, message, error, literal(retry_count), False, pending_since=True
        )

    def _fail_where(
        self,
        conn: Connection,
        guard: Any,
        message: str,
        error: str | None,
        retry_count: Any,
        missing_on_primary: bool,
        permanent: bool = False,
        *,
        pending_since: bool = False,
    ) -> datetime | None:
        c = self.table.c
        text = f"{message}: {error}" if error else message
        now = self.geo.clock.now()
        values: dict[str, Any] = {
            "state": SyncState.FAILED,
            "retry_count": retry_count,
            "last_sync_failure": cut(text),
            "missing_on_primary": missing_on_primary,
        }
        if pending_since:
            values["pending_since"] = now
        changed = conn.execute(
            update(self.table).where(guard).values(**values).returning(c.id, c.retry_count)
        ).first()
        if changed is None:
            return None
        count = int(changed[1])
        if permanent:
            retry_at = self.backoff.next_permanent_retry_time(now, count)
        else:
            cap = MISSING_ON_PRIMARY_CAP if missing_on_primary else DEFAULT_CAP
            retry_at = self.backoff.next_retry_time(now, count, cap)
        conn.execute(update(self.table).where(c.id == changed[0]).values(retry_at=retry_at))
        return retry_at

    def resync(self, conn: Connection, model_record_id: int) -> None:
        """synced or failed → pending, on an operator's request (`InvalidTransition` else)."""
        if not self.resync_many(conn, [model_record_id]):
            self._refuse(conn, model_record_id, "resync")

    def resync_many(
        self, conn: Connection, ids: Sequence[int], failed_only: bool = False, *, where: Any = None
    ) -> int:
        """The `resync` of every row of `ids` that is synced or failed (only failed with
        `failed_only`) and matches `where` when given (a bulk job's filters), in one statement;
        the others are left alone. Returns how many moved."""
        if not ids:
            return 0
        conditions = [self.key.in_(list(ids)), self.resyncable(failed_only)]
        if where is not None:
            conditions.append(where)
        result = conn.execute(
            update(self.table).where(*conditions).values(**pending_values(self.geo.clock.now()))
        )
        return int(result.rowcount)

    def resyncable(self, failed_only: bool = False) -> Any:
        """The rows `resync` may move: synced or failed ones (only failed with `failed_only`);
        rows being synced right now are left alone, so a resync never races a transfer."""
        states = [SyncState.FAILED] if failed_only else [SyncState.SYNCED, SyncState.FAILED]
        return self.table.c.state.in_([int(s) for s in states])

    def delete(
        self, conn: Connection, ids: Sequence[int], *, unless_started: bool = False
    ) -> dict[int, str | None]:
        """Delete the rows of `ids` and their attempt history; returns the `local_path` of each
        deleted row by model id. With `unless_started`, a row being synced right now stays."""
        if not ids:
            return {}
        c = self.table.c
        statement = delete(self.table).where(self.key.in_(list(ids)))
        if unless_started:
            statement = statement.where(c.state != SyncState.STARTED)
        deleted = conn.execute(statement.returning(self.key, c.local_path)).all()
        gone = {int(key): path for key, path in deleted}
        forget_attempts(conn, self.replicator.replicable_name, list(gone))
        return gone

    def _refuse(self, conn: Connection, model_record_id: int, action: str) -> NoReturn:
        """`NotFound` for a missing row, else `InvalidTransition` naming its state."""
        row = self.require(conn, model_record_id)
        raise InvalidTransition(
            f"cannot {action} {self.replicator.replicable_name} registry {model_record_id}:"
            f" it is {row.sync_state.name.lower()}"
        )

    # -- work --------------------------------------------------------------------------------

    def claim(
        self, conn: Connection, limit: int, holder: str | None = None
    ) -> list[tuple[int, SyncClaim]]:
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
        return [
            (int(model_id), SyncClaim(now, int(generation))) for model_id, generation in claimed
        ]

    def _claim_statement(self, skip_locked: bool) -> Any:
        """The claim UPDATE, built once per registry table (see `_synced_statement`)."""
        return self._hot(("claim", skip_locked), lambda: self._build_claim(skip_locked))

    def _build_claim(self, skip_locked: bool) -> Any:
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
        return (
            update(self.table)
            .where(c.id.in_(candidates.scalar_subquery()))
            .values(
                state=SyncState.STARTED,
                last_synced_at=now,
                claimed_by=bindparam("b_holder"),
                claim_generation=c.claim_generation + 1,
                resync_requested=False,
            )
            .returning(self.key, c.claim_generation)
        )

    def holders(self, conn: Connection) -> set[str]:
        """The workers holding started syncs of this registry (their `claimed_by`)."""
        c = self.table.c
        query = select(c.claimed_by).where(c.state == SyncState.STARTED, c.claimed_by.is_not(None))
        return set(conn.execute(query.distinct()).scalars())

    def interrupted_by(self, conn: Connection, holder: str, message: str) -> list[Interruption]:
        """The syncs `holder` (a dead worker) started go back to the queue (`_interrupt`)."""
        c = self.table.c
        return self._interrupt(
            conn, and_(c.state == SyncState.STARTED, c.claimed_by == holder), message
        )

    def interrupted(
        self, conn: Connection, model_record_id: int, claim: SyncClaim, message: str
    ) -> bool:
        """started → back to the queue (`_interrupt`), only if this is still the sync `claim`
        started: its worker stopped it (a shutdown). False when the row moved on or is gone."""
        c = self.table.c
        guard = and_(
            self.key == model_record_id,
            c.state == SyncState.STARTED,
            c.claim_generation == claim.generation,
        )
        return bool(self._interrupt(conn, guard, message))

    def _interrupt(self, conn: Connection, guard: Any, message: str) -> list[Interruption]:
        """Interrupted syncs go back to where their claim found them, due at once and with
        their retry count kept (an interruption is not the item's fault): a row that was
        pending (retry count 0) is pending again, a failed one is failed and due now.
        `last_sync_failure` says why; `pending_since` is kept, so the lag counts from the
        change, not from the interruption. Returns the rows and when their syncs started."""
        c = self.table.c
        was_pending = c.retry_count == 0
        now = self.geo.clock.now()
        rows = conn.execute(
            update(self.table)
            .where(guard)
            .values(
                **self._unless_overtaken(
                    {
                        "state": case(
                            (was_pending, int(SyncState.PENDING)), else_=int(SyncState.FAILED)
                        ),
                        "retry_at": case(
                            (was_pending, null()), else_=literal(now, c.retry_at.type)
                        ),
                    },
                    keep=("last_synced_at",),  # when the sync started, as for every interruption
                ),
                last_sync_failure=cut(message),
            )
            .returning(self.key, c.last_synced_at)
        ).all()
        return [Interruption(int(key), started_at) for key, started_at in rows]

    def _unless_overtaken(
        self, values: Mapping[str, Any], keep: Iterable[str] = ()
    ) -> dict[str, Any]:
        """The SET clause of a started row's end: `values` for a sync still current, the pending
        transition for one a newer change overtook (`resync_requested`; the columns `keep`
        names keep their value), decided per row."""
        c = self.table.c
        overtaken = pending_values(c.pending_since)
        for name in keep:
            overtaken[name] = c[name]
        chosen: dict[str, Any] = {}
        for name in dict.fromkeys([*values, *overtaken]):
            theirs = _typed(overtaken.get(name, c[name]), c[name])
            mine = _typed(values.get(name, c[name]), c[name])
            chosen[name] = case((c.resync_requested == true(), theirs), else_=mine)
        chosen["resync_requested"] = False
        return chosen

    def _fail_started(self, conn: Connection, model_record_id: int, message: str) -> int:
        c = self.table.c
        now = self.geo.clock.now()
        result = conn.execute(
            update(self.table)
            .where(self.key == model_record_id, c.state == SyncState.STARTED)
            .values(
                **self._unless_overtaken(
                    {
                        "state": SyncState.FAILED,
                        "retry_count": 1,
                        "retry_at": self.backoff.next_retry_time(now, 1),
                    }
                ),
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


def _aware(moment: datetime | str) -> datetime:
    """A time read back from an aggregate (SQLite returns it as text), in UTC if naive."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _typed(value: Any, target: Any) -> Any:
    """`value` as a SQL expression of `target`'s type (a column's), for CASE branches."""
    if isinstance(value, ColumnElement):
        return value
    return null() if value is None else literal(value, target.type)


def _synced_params(
    form: SyncedForm, group: Sequence[SyncedRow], verification: VerificationState, now: datetime
) -> dict[str, Any]:
    """The parameters of the synced UPDATE of `form` (see `Registry._synced_source`) for the
    finished syncs of `group`, which share `verification`."""
    succeeded = verification == VerificationState.SUCCEEDED
    params: dict[str, Any] = {"b_verified_at": now if succeeded else None}
    checksums = [s.checksum if succeeded else None for s in group]
    if form == "one":
        (sync,) = group
        keys = ["b_key", "b_generation", "b_missing", "b_path", "b_checksum"]
        values = [
            sync.model_record_id,
            sync.claim.generation,
            sync.missing_on_primary,
            sync.local_path,
            checksums[0],
        ]
        return params | dict(zip(keys, values, strict=True))
    if form == "json_each":
        given = [
            {
                "k": s.model_record_id,
                "g": s.claim.generation,
                "m": s.missing_on_primary,
                "p": s.local_path,
                "c": checksum,
            }
            for s, checksum in zip(group, checksums, strict=True)
        ]
        return params | {"b_given": json.dumps(given)}
    return params | {
        "b_keys": [s.model_record_id for s in group],
        "b_generations": [s.claim.generation for s in group],
        "b_missing": [s.missing_on_primary for s in group],
        "b_paths": [s.local_path for s in group],
        "b_checksums": checksums,
    }


def started_total(conn: Connection, registries: list[Registry]) -> int:
    """Rows in `started` across `registries` (every worker process of the site), one query."""
    if not registries:
        return 0
    statement = _started_counts(tuple(r.table for r in registries))
    return sum(int(n) for n in conn.execute(statement).scalars())


@built_once
def _started_counts(tables: tuple[Table, ...]) -> Any:
    counts = [
        select(func.count()).select_from(t).where(t.c.state == SyncState.STARTED) for t in tables
    ]
    return union_all(*counts)
