"""The log cursor: follows the primary's event log in id order and turns events into work.

One active cursor per secondary (a lease); the others stand by. Each batch of events and the
cursor position commit in one tracking transaction, so a crash replays at most one batch and
handlers are idempotent. Missing ids (PostgreSQL sequences commit out of order) are remembered
as gaps, re-read after a grace period, and dropped after an hour.

A row that is not a well-formed event (an unknown name, a payload that is not JSON or lacks its
fields, a timestamp that is not one) is skipped with one warning line naming its id and reason
and a `geo_events_skipped_total{reason}` increment; the cursor moves past it like any other.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Connection, Text, delete, func, insert, select, type_coerce
from sqlalchemy.exc import InterfaceError, OperationalError, PendingRollbackError

from geosync.db.tables import geo_event_gaps, geo_events
from geosync.errors import ConfigurationError, SkipEvent
from geosync.liveness import release_role, take_role
from geosync.log import get_logger
from geosync.secondary.cursor_state import (
    reported_position,
    start_at,
    store_position,
    stored_position,
)
from geosync.secondary.handlers import (
    Change,
    Event,
    HandlerContext,
    handle_changes,
    handle_event,
    parse_change,
)
from geosync.secondary.pruned_log import skip_pruned_events
from geosync.secondary.reachability import MAIN_DATABASE

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.worker import Worker

log = get_logger("log_cursor")

LEASE = "log_cursor"
BATCH_SIZE = 500
GAP_GRACE = timedelta(minutes=10)
GAP_OUTDATED = timedelta(hours=1)
MAX_GAPS_PER_BATCH = 1000
#: Seconds between the active cursor's looks at the newest event id when it is caught up.
#: A hot standby delivers no NOTIFY, so this cheap indexed query (the primary key's last
#: entry) is how the cursor learns of new events there; a full round (its lease renewed,
#: gaps re-read) still runs every `poll_interval`.
NEWEST_EVENT_POLL = 0.05
#: What decoding a row raises when a column holds what its type cannot read (SQLite keeps
#: whatever text it is given: a payload that is not JSON, a timestamp that is not one).
UNDECODABLE = (ValueError, TypeError)
#: Errors that mean a database went away (a restart, a cut connection), not that an event is
#: bad: they fail the round (nothing of the batch is stored) instead of skipping events.
DATABASE_AWAY = (OperationalError, InterfaceError, PendingRollbackError)
#: The time given to a row whose own time cannot be read (it is skipped, never applied).
_NO_TIME = datetime(1970, 1, 1, tzinfo=UTC)


def count_skipped(geo: Geo, reason: str) -> None:
    """Count a skipped event for the metrics."""
    from geosync.metrics import count_skipped_event

    count_skipped_event(reason, geo=geo)


class LogCursor:
    """Reads events after the stored cursor, applies them, and advances the cursor."""

    def __init__(self, geo: Geo, batch_size: int = BATCH_SIZE, holder: str | None = None) -> None:
        self.geo = geo
        self.batch_size = batch_size
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{id(self)}"
        #: After a round that held the cursor's lease: the newest event id it has read (or
        #: the stored cursor when there was none); None after a round that did not hold it.
        self.caught_up_at: int | None = None

    def position(self, conn: Connection) -> int | None:
        """The stored cursor, or None before the first start."""
        return stored_position(conn)

    def reported_position(self, conn: Connection) -> int | None:
        """`cursor_last_event_id` for status: min(oldest open gap - 1, cursor)."""
        return reported_position(conn)

    def process_batch(self) -> int:
        """Process at most one batch; returns how many events were applied or skipped."""
        node = self.geo.current_node()
        if node is None or node.primary:
            raise ConfigurationError(
                f"node {self.geo.settings.node_name!r} is not registered as a secondary"
            )
        self.caught_up_at = None
        with self.geo.tracking() as tracking, self.geo.main_engine.connect() as main:
            ttl = timedelta(seconds=self.geo.settings.lease_seconds)
            if not take_role(tracking, LEASE, self.holder, self.geo.clock.now(), ttl):
                return 0
            cursor = self.position(tracking)
            if cursor is None:
                cursor = self._first_start(tracking, main)
            cursor = skip_pruned_events(self.geo, tracking, main, cursor)
            ctx = HandlerContext(self.geo, node, main, tracking)
            handled = self._fill_gaps(ctx)
            events = self._read(main, cursor)
            self._record_gaps(tracking, cursor, events)
            self._apply_all(ctx, events)
            if events:
                self._store(tracking, events[-1].id)
            handled += len(events)
        self.caught_up_at = events[-1].id if events else cursor
        if ctx.new_work:
            self.notify()
        return handled

    def notify(self) -> None:
        """Hook for the worker: new sync work exists."""

    def _first_start(self, tracking: Connection, main: Connection) -> int:
        low, high = main.execute(select(func.min(geo_events.c.id), func.max(geo_events.c.id))).one()
        never_pruned = low is None or int(low) == 1
        start = 0 if never_pruned else int(high)
        now = self.geo.clock.now()
        start_at(tracking, start, not never_pruned, now)
        log.info("log cursor first start", event_id=start, from_oldest=never_pruned)
        return start

    def _read(self, main: Connection, cursor: int) -> list[Event]:
        return read_events(main, geo_events.c.id > cursor, self.batch_size)

    def _record_gaps(self, tracking: Connection, cursor: int, events: list[Event]) -> None:
        expected = cursor + 1
        now = self.geo.clock.now()
        missing: list[int] = []
        for event in events:
            missing.extend(range(expected, min(event.id, expected + MAX_GAPS_PER_BATCH)))
            expected = event.id + 1
        if missing:
            tracking.execute(
                insert(geo_event_gaps), [{"event_id": i, "created_at": now} for i in missing]
            )

    def _fill_gaps(self, ctx: HandlerContext) -> int:
        now = self.geo.clock.now()
        ctx.tracking.execute(
            delete(geo_event_gaps).where(geo_event_gaps.c.created_at < now - GAP_OUTDATED)
        )
        due = list(
            ctx.tracking.execute(
                select(geo_event_gaps.c.event_id).where(
                    geo_event_gaps.c.created_at <= now - GAP_GRACE
                )
            ).scalars()
        )
        if not due:
            return 0
        found = read_events(ctx.main, geo_events.c.id.in_(due))
        self._apply_all(ctx, found)
        if found:
            ctx.tracking.execute(
                delete(geo_event_gaps).where(geo_event_gaps.c.event_id.in_([e.id for e in found]))
            )
        return len(found)

    def _apply_all(self, ctx: HandlerContext, events: list[Event]) -> None:
        """Apply `events` with every record seeing its events in log order, set-wise by layers.

        Events about different records commute (each touches only its record's row, history
        and copy), so only each record's own order matters: layer k holds every record's k-th
        event of the batch, and the layers are applied in order, each set-wise (`handle_changes`,
        one savepoint). A batch costs a few statements per layer, kind and replicator; there
        are as many layers as the busiest record has events. An event that is not a well-formed
        change (`parse_change` gives None) changes nothing: it is skipped where it is met.
        """
        layers: list[list[Change]] = []
        seen: dict[tuple[str, int], int] = {}
        for event in events:
            change = parse_change(ctx, event)
            if change is None:
                self._apply(ctx, event)
                continue
            depth = seen.get(change.key, 0)
            seen[change.key] = depth + 1
            if depth == len(layers):
                layers.append([])
            layers[depth].append(change)
        for layer in layers:
            self._apply_group(ctx, layer)

    def _apply_group(self, ctx: HandlerContext, changes: list[Change]) -> None:
        """Apply changes about distinct records set-wise in one savepoint; if that fails, apply
        its events one by one (each in its own savepoint), so one bad event sinks no other."""
        if not changes:
            return
        try:
            with ctx.tracking.begin_nested():
                skipped = handle_changes(ctx, changes)
        except DATABASE_AWAY:
            raise  # not the events' fault: the round fails, the batch is read again later
        except Exception as exc:  # one bad event must not sink the others of its group
            log.warning(
                "set-wise event handling failed, handling the events one by one",
                first_event_id=changes[0].event.id,
                events=len(changes),
                error=f"{type(exc).__name__}: {exc}"[:500],
            )
            for change in changes:
                self._apply(ctx, change.event)
            return
        for event, skip in skipped:
            self._skipped(event, skip)

    def _apply(self, ctx: HandlerContext, event: Event) -> None:
        try:
            with ctx.tracking.begin_nested():
                handle_event(ctx, event)
        except SkipEvent as skip:
            self._skipped(event, skip)
        except DATABASE_AWAY:
            raise  # not the event's fault: the round fails, the batch is read again later
        except Exception:  # one bad event must never stop the cursor
            log.exception("event failed", event_id=event.id, event_name=event.event_name)
            count_skipped(self.geo, "handler_error")

    def _skipped(self, event: Event, skip: SkipEvent) -> None:
        quiet = ("out_of_scope", "flag_disabled", "left_to_object_storage")
        level = log.debug if skip.reason in quiet else log.warning
        level("event skipped", event_id=event.id, reason=skip.reason, detail=str(skip))
        count_skipped(self.geo, skip.reason)

    def _store(self, tracking: Connection, event_id: int) -> None:
        store_position(tracking, event_id, self.geo.clock.now())


def read_events(
    main: Connection, where: ColumnElement[bool], limit: int | None = None
) -> list[Event]:
    """The events matching `where`, in id order.

    A row that cannot be decoded becomes an event carrying its `problem` instead of failing the
    read (which would fail every later batch too: a stuck cursor). Only a batch holding such a
    row is read a second time, column by column.
    """
    query = select(geo_events).where(where).order_by(geo_events.c.id).limit(limit)
    try:
        return [Event(r.id, r.replicable_name, r.event_name, r.payload, r.created_at)
                for r in main.execute(query)]  # fmt: skip
    except UNDECODABLE:
        t = geo_events
        raw = select(
            t.c.id,
            t.c.replicable_name,
            t.c.event_name,
            type_coerce(t.c.payload, Text).label("payload"),
            type_coerce(t.c.created_at, Text).label("created_at"),
        )
        rows = main.execute(raw.where(where).order_by(t.c.id).limit(limit))
        return [_decoded(r.id, r.replicable_name, r.event_name, r.payload, r.created_at)
                for r in rows]  # fmt: skip


def _decoded(event_id: int, name: str, event: str, payload: Any, created_at: Any) -> Event:
    """One event from its raw columns; a column that cannot be read is the event's problem."""
    try:
        document = json.loads(payload) if isinstance(payload, str | bytes) else payload
    except UNDECODABLE as exc:
        problem = ("malformed_payload", f"event {event_id}: payload is not JSON ({exc})")
        return Event(event_id, name, event, None, _NO_TIME, problem)
    try:
        moment = _timestamp(created_at)
    except UNDECODABLE:
        problem = ("malformed_row", f"event {event_id}: created_at {str(created_at)[:40]!r}")
        return Event(event_id, name, event, document, _NO_TIME, problem)
    return Event(event_id, name, event, document, moment)


def _timestamp(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def newest_event_id(main: Connection) -> int:
    """The highest event id in the log (0 when it is empty): one step along its primary key."""
    return int(main.execute(select(func.max(geo_events.c.id))).scalar() or 0)


class LogCursorLoop:
    """The worker loop around `LogCursor`: a batch per round, sleeping when caught up.

    The worker holding the cursor's lease looks at the newest event id every
    `NEWEST_EVENT_POLL` seconds between full rounds and runs a round at once when it moved:
    the event log is on the primary's database (a standby, which cannot deliver NOTIFY), so
    this is how new events are noticed within a fraction of a second. Standby cursors (of
    workers without the lease) run a full round every `poll_interval`, to take over a lapsed
    lease.
    """

    name = "log_cursor"
    #: It reads the primary's event log: paused while the main database is away.
    needs = (MAIN_DATABASE,)

    def __init__(self, geo: Geo, worker: Worker) -> None:
        # The worker's own holder: a standby proves it dead by the worker's liveness lease.
        self.cursor = LogCursor(geo, holder=worker.holder)
        self.cursor.notify = lambda: worker.notify("scheduler")  # type: ignore[method-assign]
        self.geo = geo
        self._full_round_at = -math.inf

    def run_once(self) -> float:
        """Process a batch (go again at once if it was full); between full rounds, only look
        whether the newest event id moved past what the cursor has read."""
        poll = self.geo.settings.poll_interval
        seen = self.cursor.caught_up_at
        if seen is not None and time.monotonic() - self._full_round_at < poll:
            with self.geo.main_engine.connect() as main:
                if newest_event_id(main) <= seen:
                    return min(poll, NEWEST_EVENT_POLL)
        handled = self.cursor.process_batch()
        self._full_round_at = time.monotonic()
        if handled >= self.cursor.batch_size:
            return 0.0
        return poll if self.cursor.caught_up_at is None else min(poll, NEWEST_EVENT_POLL)

    def close(self) -> None:
        """Give the cursor's lease up when the worker stops: a standby takes it at once."""
        release_role(self.geo, LEASE, self.cursor.holder)
