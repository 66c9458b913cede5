"""The scrub: every copy re-checksummed in the background, oldest verification first.

A copy verified once can rot, be truncated or vanish afterwards, and nothing else would look at
it again until the primary re-checksums it. The scrub claims verified rows whose verification is
older than half of `scrub_period` (oldest first) and verifies them again through the same batch
path as the verification loops (records and the primary's checksums read in one query, results
stored set-wise): on a secondary a mismatch or a missing copy fails the
verification and the sync, and the copy is downloaded again at once; on the primary a file that
changed without an update fails its verification. So every copy is re-verified at least once per
`scrub_period` while the scrub keeps up, and status counts a copy as verified only when its
verification is younger than the period (`verified_within`).

The scrub is bounded by `scrub_items_per_second` and `scrub_bytes_per_second`; it sleeps between
batches so that its average rate stays within both, and leaves the data path its speed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Connection,
    Integer,
    String,
    Table,
    and_,
    bindparam,
    func,
    select,
    update,
)

from geosync.checksums import Hashers
from geosync.db.engines import is_sqlite
from geosync.db.held import HeldConnection
from geosync.db.statements import built_once
from geosync.db.types import UTCDateTime
from geosync.flags import flag_enabled
from geosync.log import get_logger
from geosync.loops import HOUSEKEEPING_START
from geosync.object_sync import left_to_store, primary_object_storages
from geosync.records import load_records
from geosync.secondary.reachability import MAIN_DATABASE
from geosync.states import SyncState, VerificationState
from geosync.verification import (
    Claim,
    Verifiable,
    primary_verifiable,
    read_registry_batch,
    registry_verifiable,
    verifiable_replicators,
)

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.replicator import Replicator
    from geosync.worker import Worker

log = get_logger("scrub")

#: Rows one scrub round claims at most; a round takes about a fifth of a second of the
#: budget (10 rows at the default 50 items/s), so the scrub's pace stays even.
MAX_BATCH = 100
#: How long an idle scrub (nothing due) sleeps before it looks again, in seconds.
IDLE = 30.0


def due_before(period: timedelta, now: datetime) -> datetime:
    """Verifications older than this are due for the scrub: half the period, so the scrub
    has the other half to reach each copy before its verification stops counting."""
    return now - period / 2


def verified_within(period: timedelta, now: datetime) -> datetime:
    """Verifications at or after this moment count as "verified" in status."""
    return now - period


# -- claims ---------------------------------------------------------------------------------------


@built_once
def _claim_statement(table: Table, key_name: str, registry: bool, skip_locked: bool) -> Any:
    """succeeded → started for up to `:limit` rows verified before `:due`, oldest first."""
    c = table.c
    key = c[key_name]
    where: Any = and_(
        c.verification_state == VerificationState.SUCCEEDED,
        c.verified_at < bindparam("due", type_=UTCDateTime()),
    )
    if registry:
        where = and_(c.state == SyncState.SYNCED, where)
    chosen = (
        select(key).where(where).order_by(c.verified_at).limit(bindparam("limit", type_=Integer()))
    )
    if skip_locked:
        chosen = chosen.with_for_update(skip_locked=True)
    values: dict[str, Any] = {
        "verification_state": VerificationState.STARTED,
        "verification_started_at": bindparam("now", type_=UTCDateTime()),
    }
    if registry:  # a dead worker's claims are taken over by name (`geosync.liveness`)
        values["verification_claimed_by"] = bindparam("holder", type_=String())
    return (
        update(table)
        .where(key.in_(chosen.scalar_subquery()))
        .values(**values)
        .returning(key, c.verification_checksum)
    )


def claim_due(
    conn: Connection,
    target: Verifiable,
    due: datetime,
    now: datetime,
    limit: int,
    holder: str | None = None,
) -> list[Claim]:
    """Mark up to `limit` rows whose verification is older than `due` started (oldest first),
    for `holder` (the worker)."""
    if limit <= 0:
        return []
    statement = _claim_statement(
        target.table, target.key.name, target.registry, not is_sqlite(conn.engine)
    )
    params: dict[str, Any] = {"due": due, "now": now, "limit": limit}
    if target.registry:
        params["holder"] = holder
    rows = conn.execute(statement, params)
    claims = [Claim(int(key), now, checksum) for key, checksum in rows]
    return sorted(claims, key=lambda claim: claim.model_record_id)


def _ids(claims: list[Claim]) -> list[int]:
    return [claim.model_record_id for claim in claims]


def mark_found_bad(conn: Connection, target: Verifiable, ids: list[int], now: datetime) -> None:
    """Note the copies the scrub found bad (called as their failed verification is stored),
    and let a first failure be downloaded again now rather than after a backoff."""
    c = target.table.c
    mine = target.key.in_(ids)
    conn.execute(update(target.table).where(mine).values(scrub_found_bad_at=now))
    first = and_(mine, c.state == SyncState.FAILED, c.verification_retry_count == 1)
    conn.execute(update(target.table).where(first).values(retry_at=now))


# -- the budget -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """The scrub's rate limits: items and bytes per second (0 items turns the scrub off)."""

    items_per_second: float
    bytes_per_second: float

    @property
    def enabled(self) -> bool:
        """Whether the scrub runs at all."""
        return self.items_per_second > 0

    @property
    def batch(self) -> int:
        """Rows per round: a fifth of a second's worth, 1 to `MAX_BATCH`."""
        return max(1, min(MAX_BATCH, int(self.items_per_second / 5)))

    def pause(self, items: int, size: int, spent: float) -> float:
        """Seconds to sleep after a batch of `items` copies and `size` bytes that took `spent`
        seconds, so that the average rate stays within both limits."""
        needed = max(items / self.items_per_second, size / self.bytes_per_second)
        return max(0.0, needed - spent)


def copy_bytes(geo: Geo, replicator: type[Replicator], records: dict[int, Any]) -> int:
    """Bytes a re-checksum of these records' copies reads, as the strategy counts them."""
    total = 0
    for record in records.values():
        total += replicator(record, geo=geo).scrub_bytes()
    return total


# -- the loop -------------------------------------------------------------------------------------


class ScrubLoop:
    """Re-verifies this site's copies (or, on the primary, its own files) at a bounded rate."""

    name = "scrub"
    start_after = HOUSEKEEPING_START
    #: On a secondary it reads the primary's records: paused while the main database is away.
    needs = (MAIN_DATABASE,)

    def __init__(self, geo: Geo, worker: Worker | None = None) -> None:
        self.geo = geo
        self.worker = worker
        settings = geo.settings
        self.budget = Budget(settings.scrub_items_per_second, settings.scrub_bytes_per_second)
        self._offset = 0
        #: Items this loop re-checksummed and found bad since it started.
        self.scrubbed = 0
        self.found_bad = 0
        #: The same batched path as the verification loops (one thread: the scrub is paced).
        self.hashers = Hashers(1)
        self._main = HeldConnection(geo.main_engine)
        self._reads = HeldConnection(geo.main_engine, reads=True)
        self._tracking = (
            HeldConnection(geo.tracking_engine) if geo.settings.tracking_database_url else None
        )

    def run_once(self) -> float:
        """Scrub one batch of one type; returns the pause the budget asks for."""
        if not self.budget.enabled:
            return IDLE
        started = time.monotonic()
        with self._main.transaction() as main:
            node = self.geo.current_node(main)
            if node is None:
                return IDLE
            storages = primary_object_storages(main)
            enabled = [
                r
                for r in verifiable_replicators(self.geo)
                if flag_enabled(main, r) and not left_to_store(node, r, storages)
            ]
        if not node.primary and self._tracking is None:
            return IDLE
        for replicator in self._rotated(enabled):
            done = self._scrub(replicator, primary=node.primary)
            if done is not None:
                items, size = done
                return self.budget.pause(items, size, time.monotonic() - started)
        return IDLE

    def _scrub(self, replicator: type[Replicator], *, primary: bool) -> tuple[int, int] | None:
        """Scrub one batch of `replicator`; None when none of its copies is due."""
        now = self.geo.clock.now()
        due = due_before(self.geo.settings.scrub_period, now)
        held = self._main if primary else self._tracking
        assert held is not None
        target = primary_verifiable(self.geo, replicator) if primary else None
        target = target or registry_verifiable(self.geo, replicator)
        with held.transaction() as conn:
            holder = self.worker.holder if self.worker is not None else None
            claims = claim_due(conn, target, due, now, self.budget.batch, holder)
            # The primary reads its records in the claim's transaction, as its loop does.
            records = load_records(conn, replicator.model, _ids(claims)) if primary else {}
        if not claims:
            return None
        if primary:
            size = copy_bytes(self.geo, replicator, records)
            bad = self._verify_primary(target, claims, records)
        else:
            size, bad = self._verify_secondary(target, claims, now)
        self.scrubbed += len(claims)
        self.found_bad += bad
        from geosync.metrics import count_scrubbed  # metrics reads status, status reads us

        count_scrubbed(self.geo, replicator.replicable_name, len(claims) - bad, bad)
        return len(claims), size

    def _verify_primary(
        self, target: Verifiable, claims: list[Claim], records: dict[int, Any]
    ) -> int:
        """The primary's batch path: hash, then `record_results` (set-wise)."""
        from geosync.primary.verification import record_results

        pending = self.hashers.start(self.geo, target.replicator, _ids(claims), records)
        results = pending.results()
        with self._main.transaction() as conn:
            # An unchanged checksum is no news for the secondaries: publish nothing.
            good = record_results(self.geo, conn, target, claims, results, published=frozenset())
        return len(claims) - good

    def _verify_secondary(
        self, target: Verifiable, claims: list[Claim], now: datetime
    ) -> tuple[int, int]:
        """A secondary's batch path: records and the primary's checksums in one query, hash,
        then the verdicts set-wise; returns the bytes read and the copies found bad."""
        from geosync.secondary.verification import judge_batch, settle_verdicts

        assert self._tracking is not None
        replicator = target.replicator
        with self._reads.transaction() as main:
            records, expected = read_registry_batch(self.geo, main, replicator, _ids(claims))
        size = copy_bytes(self.geo, replicator, records)
        computed = self.hashers.start(self.geo, replicator, list(records), records).results()
        verdicts = judge_batch(claims, expected, computed)

        def found_bad(conn: Connection, ids: list[int]) -> None:
            mark_found_bad(conn, target, ids, now)

        with self._tracking.transaction() as conn:
            counts = settle_verdicts(self.geo, conn, target, verdicts, on_failed=found_bad)
        if not counts["failed"]:
            return size, 0
        log.warning(
            "scrub found bad copies", replicable=replicator.replicable_name, count=counts["failed"]
        )
        if self.worker is not None:
            self.worker.notify("scheduler")
        return size, counts["failed"]

    def _rotated(self, replicators: list[type[Replicator]]) -> list[type[Replicator]]:
        self._offset += 1
        if not replicators:
            return replicators
        turn = self._offset % len(replicators)
        return replicators[turn:] + replicators[:turn]

    def close(self) -> None:
        """Close the loop's connections."""
        self.hashers.close()
        self._reads.close()
        self._main.close()
        if self._tracking is not None:
            self._tracking.close()


# -- what status shows ----------------------------------------------------------------------------


def scrub_counts(
    conn: Connection, target: Verifiable, period: timedelta, now: datetime
) -> dict[str, Any]:
    """The scrub's figures for one type: the age of its oldest verification, the copies whose
    verification is older than the period (not counted as verified), those due for the scrub,
    and (on a secondary) those the scrub found bad within the period."""
    c = target.table.c
    verified: Any = c.verification_state == VerificationState.SUCCEEDED
    if target.registry:
        verified = and_(c.state == SyncState.SYNCED, verified)
    oldest = conn.execute(select(func.min(c.verified_at)).where(verified)).scalar()
    stale = _count(conn, target.table, and_(verified, c.verified_at < verified_within(period, now)))
    due = _count(conn, target.table, and_(verified, c.verified_at < due_before(period, now)))
    counts: dict[str, Any] = {
        "oldest_verification_age_seconds": (
            None if oldest is None else max(0, int((now - oldest).total_seconds()))
        ),
        "verification_stale_count": stale,
        "scrub_due_count": due,
        "scrub_found_bad_count": None,
    }
    if target.registry:
        bad = c.scrub_found_bad_at >= verified_within(period, now)
        counts["scrub_found_bad_count"] = _count(conn, target.table, bad)
    return counts


def _count(conn: Connection, table: Table, where: Any) -> int:
    return int(conn.execute(select(func.count()).select_from(table).where(where)).scalar_one())
