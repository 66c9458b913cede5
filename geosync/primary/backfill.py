"""The primary's `<name>_states` rows kept in step with the model tables, for records written
without an event: Core `insert()`, raw SQL, migrations, rows older than geosync.

Two passes share the work, both driven by `PrimaryVerificationSweepLoop`:

- The new-record scan, every `poll_interval`: an anti-join on the two primary keys finds model
  ids above a floor that have no state row, `NEW_RECORDS_BATCH` a round, so a record written by
  bulk SQL has a pending state row within seconds. The floor is the highest model id seen when
  a scan began at least `NEW_RECORDS_GRACE` ago: a round reads only the ids of the last minute
  or so, and still sees a PostgreSQL transaction that took its ids before a higher one
  committed, if it commits within that minute. In a worker's first minute the floor is 0 and a
  scan reads the whole table, so scans are then spaced by ten times their duration.
- The range walk, once per `BACKFILL_PAUSE`, through id ranges of 1,000: it deletes the state
  rows of records that are gone (SQLite enforces no cascade without its pragma) and adds the
  rows the scan could not see (a transaction that committed later than that).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Table, exists, func, select

from geosync.verification import primary_verifiable

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.replicator import Replicator

BACKFILL_RANGE = 1000
BACKFILL_RANGES_PER_RUN = 10
BACKFILL_PAUSE = timedelta(minutes=10)
NEW_RECORDS_BATCH = 1000
NEW_RECORDS_GRACE = timedelta(minutes=1)
#: A new scan waits at least this many times the last scan's duration.
SCAN_SHARE = 10


# -- the new-record scan --------------------------------------------------------------------------


@dataclass
class NewRecordScan:
    """Where one type's search for records without a state row stands.

    `floor`: every id at or below it was covered by a scan that began `NEW_RECORDS_GRACE` ago;
    `cursor`: the last id handled by the scan under way (None between scans); `marks`: when each
    recent scan began and the highest model id then; `seconds`: how long the scan under way
    (or the last one) has taken.
    """

    floor: int = 0
    cursor: int | None = None
    marks: deque[tuple[datetime, int]] = field(default_factory=deque)
    seconds: float = 0.0

    def due(self, now: datetime, every: timedelta) -> bool:
        """Whether a new scan may begin: one every `every` at most, and not before ten times the
        last scan's duration has passed. The rounds a busy range walk runs back to back then do
        not repeat it, and the scans of a worker's first minute, which start at id 0 and read
        the whole table, take a tenth of the time at most.
        """
        if not self.marks:
            return True
        since = now - self.marks[-1][0]
        wait = max(every, timedelta(seconds=self.seconds * SCAN_SHARE))
        return since >= wait or since < timedelta()  # a clock set back must not stop it

    def begin(self, now: datetime, highest: int) -> None:
        """Start a scan at the floor of the newest scan that began a grace period ago."""
        self.marks.append((now, highest))
        old_enough = now - NEW_RECORDS_GRACE
        while len(self.marks) > 1 and self.marks[1][0] <= old_enough:
            self.marks.popleft()
        if self.marks[0][0] <= old_enough:
            self.floor = self.marks[0][1]
        self.cursor = self.floor
        self.seconds = 0.0


def missing_state_ids(
    conn: Connection, replicator: type[Replicator], states: Table, after: int, limit: int
) -> list[int]:
    """Up to `limit` model ids above `after` that have no state row, lowest first: an anti-join
    walking the model's primary key from `after` and probing the state table's.
    """
    model_id = replicator.model.__table__.c.id
    key = states.c[replicator.registry_foreign_key]
    statement = (
        select(model_id)
        .where(model_id > after, ~exists().where(key == model_id))
        .order_by(model_id)
        .limit(limit)
    )
    return [int(i) for i in conn.execute(statement).scalars()]


def scan_new_records(
    geo: Geo, conn: Connection, replicator: type[Replicator], scan: NewRecordScan
) -> int:
    """One round of the new-record scan: add pending state rows for up to `NEW_RECORDS_BATCH`
    records that lack one; returns how many (a full batch means more may be waiting). A new
    scan begins when `NewRecordScan.due` (once per `poll_interval` at most); a scan under way
    goes on every round.
    """
    states = geo.tables.state(replicator)
    if states is None:
        return 0
    if scan.cursor is None:
        now = geo.clock.now()
        if not scan.due(now, timedelta(seconds=geo.settings.poll_interval)):
            return 0
        model_id = replicator.model.__table__.c.id
        highest = conn.execute(select(func.max(model_id))).scalar_one_or_none()
        scan.begin(now, int(highest or 0))
    assert scan.cursor is not None
    started = time.perf_counter()
    ids = missing_state_ids(conn, replicator, states, scan.cursor, NEW_RECORDS_BATCH)
    scan.seconds += time.perf_counter() - started
    primary_verifiable(geo, replicator).add_pending(conn, ids)
    scan.cursor = ids[-1] if len(ids) == NEW_RECORDS_BATCH else None
    return len(ids)


# -- the range walk -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackfillStep:
    """What one id range of the backfill changed, and where the next range starts (None: done)."""

    inserted: int
    deleted: int
    next_low: int | None


def backfill_range(
    geo: Geo, conn: Connection, replicator: type[Replicator], low: int
) -> BackfillStep:
    """In ids [low, low + 1,000): add pending state rows for models lacking one and delete the
    rows of models that are gone (SQLite without enforced foreign keys keeps them otherwise).
    """
    states = geo.tables.state(replicator)
    if states is None:
        return BackfillStep(0, 0, None)
    model_id = replicator.model.__table__.c.id
    key = states.c[replicator.registry_foreign_key]
    high = low + BACKFILL_RANGE
    models = set(conn.execute(select(model_id).where(model_id >= low, model_id < high)).scalars())
    tracked = set(conn.execute(select(key).where(key >= low, key < high)).scalars())
    missing = sorted(models - tracked)
    orphans = sorted(tracked - models)
    target = primary_verifiable(geo, replicator)
    target.add_pending(conn, missing)
    target.forget(conn, orphans)
    return BackfillStep(len(missing), len(orphans), _next_low(conn, states, replicator, high))


def _next_low(
    conn: Connection, states: Table, replicator: type[Replicator], high: int
) -> int | None:
    # Jump over empty id ranges: the next range starts at the next id either table holds.
    model_id = replicator.model.__table__.c.id
    key = states.c[replicator.registry_foreign_key]
    candidates = [
        conn.execute(select(func.min(model_id)).where(model_id >= high)).scalar_one_or_none(),
        conn.execute(select(func.min(key)).where(key >= high)).scalar_one_or_none(),
    ]
    found = [int(value) for value in candidates if value is not None]
    return min(found) if found else None


def backfill_all(geo: Geo, replicator: type[Replicator]) -> tuple[int, int]:
    """One complete backfill pass, one transaction per range; returns (inserted, deleted)."""
    low: int | None = 0
    inserted = deleted = 0
    while low is not None:
        with geo.main() as conn:
            step = backfill_range(geo, conn, replicator, low)
        inserted += step.inserted
        deleted += step.deleted
        low = step.next_low
    return inserted, deleted


# -- pacing across sweep rounds -------------------------------------------------------------------


@dataclass(frozen=True)
class BackfillRound:
    """What one sweep round's backfill of one type did."""

    added_new: int
    changed_by_walk: int
    more: bool


class StateBackfill:
    """The backfill of one site's state tables, paced across the sweep's rounds: the new-record
    scan every round, the range walk in `BACKFILL_RANGES_PER_RUN` ranges a round until a pass is
    done, then not for `BACKFILL_PAUSE`.
    """

    def __init__(self, geo: Geo) -> None:
        self.geo = geo
        self._scans: dict[str, NewRecordScan] = {}
        self._walk_low: dict[str, int] = {}
        self._walk_resume: dict[str, datetime] = {}

    def run(self, replicator: type[Replicator]) -> BackfillRound:
        """One round for `replicator`; `more` while either pass has work waiting."""
        if self.geo.tables.state(replicator) is None:
            return BackfillRound(0, 0, False)
        scan = self._scans.setdefault(replicator.replicable_name, NewRecordScan())
        with self.geo.main() as conn:
            added = scan_new_records(self.geo, conn, replicator, scan)
        changed, walking = self._walk(replicator)
        return BackfillRound(added, changed, walking or added == NEW_RECORDS_BATCH)

    def _walk(self, replicator: type[Replicator]) -> tuple[int, bool]:
        """Some ranges of the walk; (rows changed, whether the pass is still under way)."""
        name = replicator.replicable_name
        now = self.geo.clock.now()
        if now < self._walk_resume.get(name, now):
            return 0, False
        low: int | None = self._walk_low.get(name, 0)
        changed = 0
        for _ in range(BACKFILL_RANGES_PER_RUN):
            assert low is not None
            with self.geo.main() as conn:
                step = backfill_range(self.geo, conn, replicator, low)
            changed += step.inserted + step.deleted
            low = step.next_low
            if low is None:
                break
        if low is None:
            self._walk_low.pop(name, None)
            self._walk_resume[name] = now + BACKFILL_PAUSE
            return changed, False
        self._walk_low[name] = low
        return changed, True
