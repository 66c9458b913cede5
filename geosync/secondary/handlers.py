"""Turning events into registry work on a secondary (ARCHITECTURE.md §4, "Consumption").

`created`/`updated` make the registry row pending when the record is in scope and its flag on;
`deleted` removes the local copy and the row everywhere; `checksum_succeeded` re-queues the
secondary's verification. Local files are removed only inside their storage root.

Every well-formed event is a `Change`, and changes about distinct records are applied set-wise
(`handle_changes`: a few statements per replicator and kind, whatever their number); one event
alone is a set of one, so both paths share the same code and semantics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection
from sqlalchemy.exc import DataError

from geosync.errors import SkipEvent, ValidationError
from geosync.flags import flag_enabled
from geosync.log import get_logger
from geosync.object_sync import left_to_store, primary_object_storages
from geosync.registry import Registry
from geosync.replicator import CHECKSUM_SUCCEEDED, CREATED, DELETED, UPDATED
from geosync.scope import ids_in_scope

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.nodes import Node
    from geosync.replicator import Replicator

log = get_logger("handlers")

#: Ids are positive 64-bit integers: no database key holds a larger one.
MAX_ID = 2**63


@dataclass(frozen=True)
class Event:
    """One row of the primary's event log. `problem` is set for a row that could not be read
    as an event at all (its payload not JSON, say): the reason and detail it is skipped with."""

    id: int
    replicable_name: str
    event_name: str
    payload: Any
    created_at: datetime
    problem: tuple[str, str] | None = None

    def model_record_id(self) -> int:
        """The payload's record id, or `SkipEvent` for a malformed payload."""
        if self.problem is not None:
            raise SkipEvent(*self.problem)
        value = self.payload.get("model_record_id") if isinstance(self.payload, dict) else None
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value < MAX_ID:
            raise SkipEvent("malformed_payload", f"event {self.id}: no valid model_record_id")
        return value


@dataclass
class HandlerContext:
    """What handlers need: the site, its node, and the two open transactions."""

    geo: Geo
    node: Node
    main: Connection
    tracking: Connection
    #: Set when a handler created sync work, so the scheduler is woken.
    new_work: bool = False
    #: Replication flags read in this context, by replicable name (one read per batch).
    flags: dict[str, bool] = field(default_factory=dict)
    #: The primary's object-store blob storages (`geosync.object_sync`), read once per context.
    primary_storages: frozenset[str] | None = None
    storages_read: bool = False

    def left_to_store(self, replicator: type[Replicator]) -> bool:
        """Whether this secondary leaves `replicator`'s blobs to the object store's own
        replication (`sync_object_storage` off), read once per context."""
        if not self.storages_read:
            self.primary_storages = primary_object_storages(self.main)
            self.storages_read = True
        return left_to_store(self.node, replicator, self.primary_storages)

    def flag_on(self, replicator: type[Replicator]) -> bool:
        """Whether `replicator`'s flag is on, read once per context."""
        name = replicator.replicable_name
        if name not in self.flags:
            self.flags[name] = flag_enabled(self.main, replicator)
        return self.flags[name]


#: The events a secondary acts on; a replicator may declare others, which change nothing here.
APPLIED = (CREATED, UPDATED, DELETED, CHECKSUM_SUCCEEDED)


@dataclass(frozen=True)
class Change:
    """A well-formed event of a known replicator about one record, ready to apply: a `created`,
    `updated`, `deleted` or `checksum_succeeded` the replicator declares."""

    event: Event
    replicator: type[Replicator]
    model_record_id: int

    @property
    def key(self) -> tuple[str, int]:
        """The record the change is about: (replicable name, model record id)."""
        return (self.replicator.replicable_name, self.model_record_id)

    @property
    def name(self) -> str:
        """The event's name (`created`, `updated`, `deleted` or `checksum_succeeded`)."""
        return self.event.event_name

    @property
    def created(self) -> bool:
        """Whether this is a `created` event (idempotent when the row exists)."""
        return self.name == CREATED


#: An event a set-wise step skipped, with the reason to log and count.
Skipped = tuple[Event, SkipEvent]


def handle_event(ctx: HandlerContext, event: Event) -> None:
    """Apply one event to this secondary's registries, or raise `SkipEvent`."""
    if event.problem is not None:
        raise SkipEvent(*event.problem)
    try:
        replicator = ctx.geo.catalog.get(event.replicable_name)
    except Exception:
        raise SkipEvent("unknown_replicable", f"event {event.id}: unknown replicable") from None
    if event.event_name not in replicator.declared_events():
        raise SkipEvent("unknown_event", f"event {event.id}: unknown event {event.event_name!r}")
    model_record_id = event.model_record_id()
    if event.event_name in APPLIED:
        # A change alone is a set of one: the set-wise path holds the semantics.
        for _event, skip in handle_changes(ctx, [Change(event, replicator, model_record_id)]):
            raise skip


def _in_scope(ctx: HandlerContext, replicator: type[Replicator], ids: list[int]) -> set[int]:
    """`ids_in_scope`; on PostgreSQL in a savepoint, as a failed query (an id beyond the model's
    integer range) would otherwise abort the main transaction and every later event with it.

    An id the model's id column cannot hold names no record: alone, it is a malformed payload
    (`SkipEvent`); in a group, the error goes up and the group is applied event by event.
    """
    try:
        if ctx.main.dialect.name == "sqlite":
            return ids_in_scope(ctx.main, replicator, ctx.node, ids)
        with ctx.main.begin_nested():
            return ids_in_scope(ctx.main, replicator, ctx.node, ids)
    except DataError:
        if len(ids) != 1:
            raise
        detail = f"model_record_id {ids[0]} is out of range for {replicator.model.__name__} ids"
        raise SkipEvent("malformed_payload", detail) from None


def _flag_disabled(replicator: type[Replicator]) -> SkipEvent:
    return SkipEvent("flag_disabled", f"{replicator.replication_flag_name} is off")


def _left_to_store(replicator: type[Replicator]) -> SkipEvent:
    return SkipEvent(
        "left_to_object_storage",
        f"{replicator.replicable_name_plural} are in the primary's object storage"
        f" {getattr(replicator, 'storage', '')!r} and sync_object_storage is off",
    )


def _out_of_scope(replicator: type[Replicator], model_record_id: int) -> SkipEvent:
    return SkipEvent("out_of_scope", f"{replicator.replicable_name} {model_record_id}")


def parse_change(ctx: HandlerContext, event: Event) -> Change | None:
    """`event` as a `Change` if it is a well-formed event of `APPLIED` the replicator declares.

    Anything else (unknown names, malformed payloads, events a secondary ignores) gives None:
    such an event changes nothing, and `handle_event` says why it is skipped. Never raises.
    """
    if event.event_name not in APPLIED or event.problem is not None:
        return None
    try:
        replicator = ctx.geo.catalog.get(event.replicable_name)
        if event.event_name not in replicator.declared_events():
            return None
        return Change(event, replicator, event.model_record_id())
    except Exception:
        return None


def handle_changes(ctx: HandlerContext, changes: Sequence[Change]) -> list[Skipped]:
    """Apply changes about distinct records set-wise, with `handle_event`'s per-event semantics.

    Events about different records commute (each touches only its record's row, history and
    copy), so with distinct records the order among the changes does not matter. Per replicator
    and kind a few statements, whatever the number of events: `created`/`updated` one registry
    read, one flag read per context, one scope query, one multi-row insert and one update;
    `deleted` one delete of rows and one of their history (copies removed one by one);
    `checksum_succeeded` one update. Returns the events skipped (flag off, out of scope, an
    unsafe path) for the caller to log and count.
    """
    by_kind: dict[tuple[str, str], list[Change]] = {}
    for change in changes:
        kind = change.name if change.name in (DELETED, CHECKSUM_SUCCEEDED) else CREATED
        by_kind.setdefault((change.replicator.replicable_name, kind), []).append(change)
    skipped: list[Skipped] = []
    for (_name, kind), group in by_kind.items():
        skipped.extend(_APPLY[kind](ctx, group[0].replicator, group))
    return skipped


def _apply_deletes(
    ctx: HandlerContext, replicator: type[Replicator], changes: list[Change]
) -> list[Skipped]:
    """`deleted` events: each local copy removed (unless the object store's own replication
    owns it), then the rows and their history at once. An event whose copy may not be removed
    (an unsafe path) is skipped whole: its row stays."""
    skipped: list[Skipped] = []
    gone: list[int] = []
    # A blob left to the object store is deleted by the store's replication, not here.
    keep_copies = ctx.left_to_store(replicator)
    for change in changes:
        try:
            if not keep_copies:
                delete_local_copy(ctx.geo, replicator, change.event.payload)
        except SkipEvent as skip:
            skipped.append((change.event, skip))
        else:
            gone.append(change.model_record_id)
    Registry(ctx.geo, replicator).delete(ctx.tracking, gone)
    return skipped


def _apply_checksums(
    ctx: HandlerContext, replicator: type[Replicator], changes: list[Change]
) -> list[Skipped]:
    """`checksum_succeeded` events: the verification of every existing row re-queued at once
    (a record without a row has nothing to verify: nothing is skipped)."""
    from geosync.secondary.verification import handle_checksums_succeeded

    ids = [change.model_record_id for change in changes]
    handle_checksums_succeeded(ctx.geo, ctx.tracking, replicator, ids)
    return []


def _apply_changes(
    ctx: HandlerContext, replicator: type[Replicator], changes: list[Change]
) -> list[Skipped]:
    """`created`/`updated` events: rows made pending where in scope and the flag is on."""
    registry = Registry(ctx.geo, replicator)
    existing = registry.existing_ids(ctx.tracking, [c.model_record_id for c in changes])
    # `created` for a row that exists is a no-op: the consistency sweep got there first, and
    # re-queueing it would throw away a sync in flight or done. Only `updated` forces work.
    todo = [c for c in changes if not (c.created and c.model_record_id in existing)]
    if not todo:
        return []
    if not ctx.flag_on(replicator):
        return [(c.event, _flag_disabled(replicator)) for c in todo]
    if ctx.left_to_store(replicator):
        return [(c.event, _left_to_store(replicator)) for c in todo]
    in_scope = _in_scope(ctx, replicator, [c.model_record_id for c in todo])
    wanted = [c for c in todo if c.model_record_id in in_scope]
    registry.insert_pending_since(
        ctx.tracking,
        {
            c.model_record_id: c.event.created_at
            for c in wanted
            if c.model_record_id not in existing
        },
    )
    registry.pending_many(
        ctx.tracking,
        {c.model_record_id: c.event.created_at for c in wanted if c.model_record_id in existing},
    )
    if wanted:
        ctx.new_work = True
    return [
        (c.event, _out_of_scope(replicator, c.model_record_id))
        for c in todo
        if c.model_record_id not in in_scope
    ]


#: How `handle_changes` applies each kind of change (`created` and `updated` go together).
_APPLY: dict[str, Callable[[HandlerContext, type[Replicator], list[Change]], list[Skipped]]] = {
    CREATED: _apply_changes,
    DELETED: _apply_deletes,
    CHECKSUM_SUCCEEDED: _apply_checksums,
}


def delete_local_copy(geo: Geo, replicator: type[Replicator], payload: Any) -> bool:
    """Remove the local copy a `deleted` event's payload names, the strategy's safe way;
    missing is fine. Returns whether it was removed; `SkipEvent` for an unsafe path."""
    relative = replicator.path_in_payload(payload) if isinstance(payload, dict) else None
    if relative is None:
        return False
    try:
        return replicator.remove_copy(geo.settings, relative)
    except ValidationError as exc:
        raise SkipEvent("unsafe_path", str(exc)) from None


def delete_registry(
    conn: Connection, geo: Geo, replicator: type[Replicator], model_record_id: int
) -> None:
    """Delete the registry row of one replicable and its attempt history (no-op if absent)."""
    registry = Registry(geo, replicator)
    registry.delete(conn, [model_record_id])
