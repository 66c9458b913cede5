"""`geosync reattach`: bring a former primary back as a secondary without copying it all again.

A failed-over primary still holds its files and repositories. Re-attached as a secondary, its
registry starts empty, and the consistency sweep would queue every item for a transfer. This
seeds the registry instead, from what is already here: for every in-scope item without a row,
the copy in place is checksummed the strategy's way and compared with the new primary's
checksum; a match is marked synced and verified at once, with no transfer (§6's skip-download,
recorded in the attempt history as a sync that moved 0 bytes); anything else is queued pending,
for the sync workers to transfer. Rows that exist are left alone, so running it twice is harmless.

The log cursor, if it never ran, starts at the newest event read before the walk: changes made
during the walk are replayed by it, and history before it is this seed's.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, select

from geosync.db.tables import geo_events
from geosync.errors import ConfigurationError, GeoError, InvalidTransition
from geosync.flags import flag_enabled
from geosync.records import load_records
from geosync.registry import Registry
from geosync.scope import scoped_query
from geosync.secondary.cursor_state import start_at, stored_position
from geosync.secondary.settlement import Finished, Success, settle_group
from geosync.verification import primary_checksums

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.nodes import Node
    from geosync.replicator import Replicator


#: In-scope items seeded per transaction.
BATCH = 1000


@dataclass
class TypeSeed:
    """What the seed did for one data type."""

    replicable_name_plural: str
    synced_without_transfer: int = 0
    queued_for_transfer: int = 0
    already_tracked: int = 0


@dataclass
class ReattachReport:
    """What `reattach` did: per type, and where the log cursor starts."""

    types: list[TypeSeed] = field(default_factory=list)
    cursor_started_at: int | None = None

    def as_json(self) -> dict[str, Any]:
        """The JSON form (`geosync reattach --json`)."""
        return {"cursor_started_at": self.cursor_started_at, "types": [vars(t) for t in self.types]}

    def lines(self) -> list[str]:
        """One line per type and one for the cursor, for the terminal."""
        found = [
            f"{t.replicable_name_plural}: {t.synced_without_transfer} synced without a transfer,"
            f" {t.queued_for_transfer} queued for a transfer, {t.already_tracked} already tracked"
            for t in self.types
        ]
        if self.cursor_started_at is not None:
            found.append(f"log cursor starts after event {self.cursor_started_at}")
        return found


def reattach(geo: Geo, batch: int = BATCH) -> ReattachReport:
    """Seed this secondary's registries from the copies in place (see the module docstring)."""
    node = _secondary_node(geo)
    report = ReattachReport(cursor_started_at=_start_cursor(geo))
    for replicator in geo.catalog:
        with geo.main_reads() as main:
            enabled = flag_enabled(main, replicator)
        if enabled:
            report.types.append(_seed_type(geo, replicator, node, batch))
    return report


def _secondary_node(geo: Geo) -> Node:
    if not geo.has_tracking_database:
        raise ConfigurationError(
            "geosync reattach runs on a secondary: give this site a tracking_database_url and"
            " point its main_database_url at the new primary's database (or a standby of it)"
        )
    node = geo.current_node()
    if node is None:
        raise ConfigurationError(
            f"node {geo.settings.node_name!r} is not registered: add it on the primary"
        )
    if node.primary:
        raise InvalidTransition(
            f"node {node.name!r} is the primary: promote the other site first (`geosync promote`)"
        )
    return node


def _start_cursor(geo: Geo) -> int | None:
    """Start a cursor that never ran at the newest event; None when it already has a position."""
    with geo.main_reads() as main:
        newest = main.execute(select(func.max(geo_events.c.id))).scalar()
    with geo.tracking() as tracking:
        if stored_position(tracking) is not None:
            return None
        start_at(tracking, int(newest or 0), False, geo.clock.now())
    return int(newest or 0)


def _seed_type(geo: Geo, replicator: type[Replicator], node: Node, batch: int) -> TypeSeed:
    seed = TypeSeed(replicator.replicable_name_plural)
    registry = Registry(geo, replicator)
    for ids in _in_scope_batches(geo, replicator, node, batch):
        with geo.tracking_engine.connect() as tracking:
            existing = registry.existing_ids(tracking, ids)
        new = [i for i in ids if i not in existing]
        seed.already_tracked += len(existing)
        if new:
            matched = _matching_copies(geo, replicator, new)
            with geo.tracking() as tracking:
                _write_seed(geo, tracking, registry, new, matched)
            seed.synced_without_transfer += len(matched)
            seed.queued_for_transfer += len(new) - len(matched)
    return seed


def _in_scope_batches(
    geo: Geo, replicator: type[Replicator], node: Node, batch: int
) -> Iterator[list[int]]:
    id_column = replicator.model.__table__.c.id
    query = scoped_query(replicator, node).order_by(id_column).limit(batch)
    after = 0
    while True:
        with geo.main_reads() as main:
            ids = [int(i) for i in main.execute(query.where(id_column > after)).scalars()]
        if not ids:
            return
        yield ids
        after = ids[-1]


def _matching_copies(geo: Geo, replicator: type[Replicator], ids: list[int]) -> dict[int, Success]:
    """The items of `ids` whose copy here has the primary's checksum, as skipped syncs."""
    with geo.main_reads() as main:
        records = load_records(main, replicator.model, ids)
        expected = primary_checksums(geo, main, replicator, records)
    matched = {}
    for model_id, checksum in expected.items():
        bound = replicator(records[model_id], geo=geo)
        if _local_checksum(bound) == checksum:
            matched[model_id] = Success.skipped(bound.local_path(), checksum)
    return matched


def _local_checksum(bound: Replicator) -> str | None:
    """The checksum of this site's copy, or None when there is none to read."""
    try:
        return bound.checksum()
    except (OSError, GeoError, subprocess.SubprocessError):
        return None


def _write_seed(
    geo: Geo, tracking: Connection, registry: Registry, new: list[int], matched: dict[int, Success]
) -> None:
    """New pending rows for `new`; the matched ones then started and settled as skipped syncs,
    through the path every sync takes (conditional synced step, attempt history)."""
    now: datetime = geo.clock.now()
    registry.insert_pending(tracking, new, now)
    finished = [
        Finished(registry, model_id, registry.start(tracking, model_id), success)
        for model_id, success in matched.items()
    ]
    settle_group(tracking, finished, now)
