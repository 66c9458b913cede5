"""The consistency sweep (ARCHITECTURE.md §7): registries match the secondary's scope, always.

Per replicator, continuously, in id ranges of 10,000 wrapping around: in-scope model ids with no
registry row get new `pending` rows (one INSERT per range), and rows whose replicable is gone or
out of scope get their local copy deleted — the row says where it is — and the row removed. This
is the backfill of a new secondary, the repair of lost events and the effect of changing a
node's selective sync; it needs no event.

Flag off: a replicator whose feature flag is off is skipped entirely — no rows are created and
none are removed. A flag is a rollout switch, not a deletion request: turning it off by mistake
must not wipe a secondary's copies, and turning it back on resumes where it stopped. A blob type
left to the object store's own replication (`geosync.object_sync`) is skipped the same way.

Each round also lists one page of every object-store blob storage and removes the objects no
registry row knows (`geosync.secondary.orphans`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, Connection, bindparam, func, literal, select, true

from geosync.db.engines import is_sqlite
from geosync.db.types import UTCDateTime
from geosync.errors import GeoError, ValidationError
from geosync.flags import flag_enabled
from geosync.leases import DEFAULT_TTL
from geosync.liveness import release_role, take_role
from geosync.log import get_logger
from geosync.loops import HOUSEKEEPING_START
from geosync.object_sync import left_to_store, primary_object_storages
from geosync.registry import Registry
from geosync.scope import ids_in_range
from geosync.secondary.orphans import ORPHAN_PAGE, OrphanPage, scan_page, scanned_storages
from geosync.secondary.reachability import MAIN_DATABASE
from geosync.states import SyncState, VerificationState

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.nodes import Node
    from geosync.replicator import Replicator
    from geosync.worker import Worker

log = get_logger("consistency")

RANGE_SIZE = 10_000
#: Seconds between two complete passes over every replicator.
PASS_PAUSE = 60.0
LEASE = "consistency_sweep"
#: Unused rows deleted per transaction (with their copies), so the write lock is held briefly.
UNUSED_BATCH = 100


@dataclass(frozen=True)
class RangeResult:
    """What sweeping one id range `[low, high)` of one replicator changed."""

    replicable_name: str
    low: int
    high: int
    created: int
    removed: int
    files_removed: int


# -- the SQL of one range ---------------------------------------------------------------------


def tracked_ids(conn: Connection, registry: Registry, low: int, high: int) -> set[int]:
    """Model ids with a registry row in `[low, high)`."""
    query = select(registry.key).where(registry.key >= low, registry.key < high)
    return {int(value) for value in conn.execute(query).scalars()}


def _id_source(conn: Connection, ids: list[int]) -> Any:
    # One parameter for the whole range: an array on PostgreSQL, a JSON list on SQLite.
    if is_sqlite(conn.engine):
        return func.json_each(bindparam("ids", json.dumps(ids))).table_valued("value")
    from sqlalchemy.dialects import postgresql  # on this database only: it costs ~80 ms to load

    param = bindparam("ids", ids, type_=postgresql.ARRAY(BigInteger()))
    return func.unnest(param).table_valued("value").render_derived()


def insert_untracked(conn: Connection, registry: Registry, ids: list[int], now: datetime) -> int:
    """Insert pending rows for `ids` in one statement; ids that gained a row meanwhile (the log
    cursor) are skipped. Returns how many rows were created.
    """
    if not ids:
        return 0
    source = _id_source(conn, ids)
    at = literal(now, UTCDateTime())
    rows = select(
        source.c.value,
        at,
        literal(int(SyncState.PENDING)),
        # Like the `pending` transition: only a primary checksum enables verification.
        literal(int(VerificationState.DISABLED)),
        at,
    ).where(true())  # SQLite needs a WHERE before ON CONFLICT in INSERT ... SELECT
    columns = [registry.key.name, "created_at", "state", "verification_state", "pending_since"]
    if is_sqlite(conn.engine):
        from sqlalchemy.dialects import sqlite as dialect
    else:
        from sqlalchemy.dialects import postgresql as dialect  # type: ignore[no-redef]
    statement = (
        dialect.insert(registry.table)
        .from_select(columns, rows)
        .on_conflict_do_nothing(index_elements=[registry.key.name])
    )
    # An INSERT's row count is only kept on request (SQLAlchemy closes the cursor at once).
    result = conn.execute(statement, execution_options={"preserve_rowcount": True})
    return int(result.rowcount)


def delete_unused(conn: Connection, registry: Registry, ids: list[int]) -> list[str | None]:
    """Delete the rows of `ids` and return their `local_path`s; a row being synced right now is
    left for the next pass (deleting its file under a running download would orphan the copy).
    """
    if not ids:
        return []
    return list(registry.delete(conn, ids, unless_started=True).values())


# -- local copies -----------------------------------------------------------------------------


def remove_local_copy(geo: Geo, replicator: type[Replicator], local_path: str) -> bool:
    """Delete one copy the strategy's safe way; missing is fine; an unsafe path is logged."""
    try:
        return replicator.remove_copy(geo.settings, local_path)
    except ValidationError as exc:
        log.warning(
            "local copy not removed: unsafe path",
            replicable=replicator.replicable_name,
            error=str(exc),
        )
        return False


# -- one range --------------------------------------------------------------------------------


def sweep_range(
    geo: Geo, node: Node, replicator: type[Replicator], low: int, high: int
) -> RangeResult:
    """Make the registry of `[low, high)` match `node`'s scope on the primary."""
    registry = Registry(geo, replicator)
    # Registry first, then the model: a row the log cursor adds in between belongs to a record
    # that exists, so it is never mistaken for one that is gone.
    with geo.tracking_engine.connect() as tracking:
        tracked = tracked_ids(tracking, registry, low, high)
    with geo.main_engine.connect() as main:
        in_scope = ids_in_range(main, replicator, node, low, high)
    created = 0
    untracked = sorted(in_scope - tracked)
    if untracked:
        with geo.tracking() as tracking:
            created = insert_untracked(tracking, registry, untracked, geo.clock.now())
    removed, files = remove_unused(geo, registry, sorted(tracked - in_scope))
    result = RangeResult(replicator.replicable_name, low, high, created, removed, files)
    if created or removed:
        log.info(
            "registries made consistent",
            replicable=replicator.replicable_name,
            low=low,
            high=high,
            created=created,
            removed=removed,
            files_removed=files,
        )
    return result


def remove_unused(geo: Geo, registry: Registry, ids: list[int]) -> tuple[int, int]:
    """Delete the rows of `ids` with their local copies, in short transactions; returns how
    many rows and copies went.
    """
    rows = files = 0
    for start in range(0, len(ids), UNUSED_BATCH):
        with geo.tracking() as tracking:
            paths = delete_unused(tracking, registry, ids[start : start + UNUSED_BATCH])
            # Copies go before the commit: if it fails, the rows survive and the next pass
            # retries, so a copy is never left behind without the row that knows where it is.
            files += sum(remove_local_copy(geo, registry.replicator, p) for p in paths if p)
        rows += len(paths)
    return rows, files


def next_id(geo: Geo, replicator: type[Replicator], at_least: int) -> int | None:
    """The lowest id ≥ `at_least` among the model rows and the registry rows, or None; the
    sweep jumps over empty stretches of the id space with it.
    """
    registry = Registry(geo, replicator)
    model_id = replicator.model.__table__.c.id
    with geo.main_engine.connect() as main:
        model = main.execute(select(func.min(model_id)).where(model_id >= at_least)).scalar()
    with geo.tracking_engine.connect() as tracking:
        tracked = tracking.execute(
            select(func.min(registry.key)).where(registry.key >= at_least)
        ).scalar()
    found = [int(v) for v in (model, tracked) if v is not None]
    return min(found) if found else None


# -- the loop ---------------------------------------------------------------------------------


class ConsistencySweep:
    """The sweep's position: per replicator, the next range; a pass ends when all wrapped."""

    def __init__(
        self, geo: Geo, range_size: int = RANGE_SIZE, orphan_page: int = ORPHAN_PAGE
    ) -> None:
        self.geo = geo
        self.range_size = range_size
        self.orphan_page = orphan_page
        #: Per object storage, the key its orphan scan continues after (absent: from the start).
        self.orphan_after: dict[str, str] = {}
        self.next_low: dict[str, int] = {}
        self.finished: set[str] = set()
        #: Whether the last `step` ended a pass (every enabled replicator wrapped around).
        self.pass_complete = False
        #: The orphan scan's pages of the last `step`, one per object storage
        #: (`geosync.secondary.orphans`).
        self.orphan_pages: list[OrphanPage] = []

    def step(self, node: Node) -> list[RangeResult]:
        """Sweep the next range of every enabled replicator that has not finished this pass."""
        with self.geo.main_engine.connect() as main:
            storages = primary_object_storages(main)
            enabled = [
                r
                for r in self.geo.catalog
                if flag_enabled(main, r) and not left_to_store(node, r, storages)
            ]
        results = []
        for replicator in enabled:
            if replicator.replicable_name not in self.finished:
                results.extend(self._advance(node, replicator))
        self.orphan_pages = self._scan_orphan_pages(set(self.geo.catalog) - set(enabled))
        self.pass_complete = all(r.replicable_name in self.finished for r in enabled)
        if self.pass_complete:
            self.finished.clear()
            self.next_low.clear()
        return results

    def _advance(self, node: Node, replicator: type[Replicator]) -> list[RangeResult]:
        name = replicator.replicable_name
        low = next_id(self.geo, replicator, self.next_low.get(name, 0))
        if low is None:  # past the highest id: this replicator's pass is done
            self._wrap(name)
            return []
        high = low + self.range_size
        self.next_low[name] = high
        return [sweep_range(self.geo, node, replicator, low, high)]

    def _scan_orphan_pages(self, skipped: set[type[Replicator]]) -> list[OrphanPage]:
        """A page of every object storage's orphan scan; a store that fails is one warning
        line, and the registries' sweep goes on."""
        try:
            storages = scanned_storages(self.geo, list(self.geo.catalog), skipped)
        except GeoError as exc:
            log.warning("orphan scan skipped", error=str(exc))
            return []
        pages = []
        for name, types in storages.items():
            try:
                pages.append(self._scan_orphans(name, types))
            except (GeoError, OSError) as exc:
                log.warning("orphan scan failed", storage=name, error=str(exc))
        return pages

    def _scan_orphans(self, storage: str, types: list[type[Replicator]]) -> OrphanPage:
        """One page of `storage`'s orphan scan; it starts over once it reached the end."""
        found = scan_page(
            self.geo, storage, types, self.orphan_after.get(storage), self.orphan_page
        )
        if found.after is None:
            self.orphan_after.pop(storage, None)
        else:
            self.orphan_after[storage] = found.after
        return found

    def _wrap(self, name: str) -> None:
        self.next_low.pop(name, None)
        self.finished.add(name)

    def run_pass(self, node: Node) -> list[RangeResult]:
        """Sweep every range of every enabled replicator once (tests, benchmarks, the CLI)."""
        results = self.step(node)
        while not self.pass_complete:
            results.extend(self.step(node))
        return results


class ConsistencySweepLoop:
    """Background loop (secondary): one range per replicator per round, back to back within a
    pass, then a pause; wakes the scheduler when it created work.
    """

    name = "consistency_sweep"
    #: It reads the primary's records: paused while the main database is away.
    needs = (MAIN_DATABASE,)
    start_after = HOUSEKEEPING_START

    def __init__(self, geo: Geo, worker: Worker | None = None, pause: float = PASS_PAUSE):
        self.geo = geo
        self.worker = worker
        self.pause = pause
        self.sweep = ConsistencySweep(geo)
        self.holder = worker.holder if worker is not None else f"sweep:{id(self)}"

    def run_once(self) -> float:
        """Sweep one round; 0 while the pass goes on, the pause once it is complete."""
        node = self.geo.current_node()
        if node is None or node.primary:
            return self.pause
        with self.geo.tracking() as conn:
            if not take_role(conn, LEASE, self.holder, self.geo.clock.now(), DEFAULT_TTL):
                return self.pause
        results = self.sweep.step(node)
        if any(r.created for r in results) and self.worker is not None:
            self.worker.notify("scheduler")
        return self.pause if self.sweep.pass_complete else 0.0

    def close(self) -> None:
        """Give the sweep's lease up when the worker stops: a standby takes it at once."""
        release_role(self.geo, LEASE, self.holder)
