"""Site reachability: whether this secondary's primary answers, decided once for every loop.

Two targets: `PRIMARY`, the primary's web server (blobs and git come from it), and
`MAIN_DATABASE`, this site's read-only copy of the primary's database (a streaming standby in
production). A site that is away is not an item's fault, so it is handled for the site:

- a sync that fails with a site-level error (connection refused, reset or timed out; 502, 503
  or 504; the main database not answering) asks `confirm_down`, which probes the target. If the
  probe fails too, the target is unreachable and the row goes back to the queue with its retry
  count kept and no backoff (attempt outcome `site_unreachable`). If the probe answers, the
  error was the item's own and the row fails as before;
- while a target is unreachable the loops that need it (`pause`) claim and read nothing; one
  probe at a time, across every process of the site, asks it again after 0.5 and 1 second, then
  every 2 seconds, and the first probe that is answered resumes the work at once.

The state lives in the tracking database (`geo_site_reachability`, one row per target; this
module owns it), so every worker process, `geosync status` and the web processes see one
probe's result. Each process also keeps the state it last read or wrote, which serves while
the tracking database itself is away.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Connection, insert, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from geosync.db.engines import error_line
from geosync.db.tables import geo_site_reachability
from geosync.errors import GeoError, PrimaryUnreachable
from geosync.log import get_logger
from geosync.states import cut

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.secondary.sync import Route

log = get_logger("reachability")

PRIMARY = "primary"
MAIN_DATABASE = "main_database"
TARGETS = (PRIMARY, MAIN_DATABASE)
#: What each target is, for log lines and health messages.
DESCRIPTIONS = {PRIMARY: "the primary", MAIN_DATABASE: "this site's copy of the primary's database"}
#: Seconds from an unreachable target's first failed probe to the next; doubled after each...
FIRST_PROBE = 0.5
#: ...up to this many seconds, so a target that is back is used within this long. A probe is
#: one small request (or query) per site every 2 s: nothing beside the traffic it replaces.
MAX_PROBE = 2.0
#: Seconds a process trusts its reading of the shared state.
REFRESH = 0.5
#: A probe this recent (seconds) answers a failed sync's question without a new one: a hundred
#: syncs cut at once by an outage probe once.
RECENT = 1.0
#: Seconds a probe of the primary may take to connect, and to answer.
PROBE_CONNECT_TIMEOUT = 3.0
PROBE_TIMEOUT = 5.0
#: The primary's answers that mean it cannot serve anyone now.
SITE_LEVEL_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True)
class TargetState:
    """What the last probe of one target found, as stored."""

    target: str
    reachable: bool
    changed_at: datetime
    last_reachable_at: datetime | None
    checked_at: datetime
    failed_probes: int = 0
    next_probe_at: datetime | None = None
    error: str | None = None

    def unreachable_seconds(self, now: datetime) -> int:
        """Seconds since the target was last reachable (since it went away); 0 while it is."""
        if self.reachable:
            return 0
        since = self.last_reachable_at or self.changed_at
        return max(0, int((now - since).total_seconds()))


def probe_interval(failed_probes: int) -> float:
    """Seconds until the next probe after `failed_probes` failed ones in a row."""
    return float(min(MAX_PROBE, FIRST_PROBE * 2 ** max(0, min(failed_probes - 1, 8))))


# -- the table -------------------------------------------------------------------------------


def read_states(conn: Connection) -> dict[str, TargetState]:
    """Every target's stored state (a target never probed has none)."""
    t = geo_site_reachability
    rows = conn.execute(select(t)).mappings()
    return {row["target"]: TargetState(**row) for row in rows}


def write_state(conn: Connection, state: TargetState) -> None:
    """Store `state` as its target's."""
    t = geo_site_reachability
    values = {k: v for k, v in state.__dict__.items() if k != "target"}
    if conn.execute(update(t).where(t.c.target == state.target).values(**values)).rowcount:
        return
    try:
        with conn.begin_nested():
            conn.execute(insert(t).values(target=state.target, **values))
    except IntegrityError:  # another process stored it first: ours is as new
        conn.execute(update(t).where(t.c.target == state.target).values(**values))


def claim_probe(conn: Connection, target: str, now: datetime, until: datetime) -> bool:
    """Take the next probe of unreachable `target` if it is due (True), moving its due time to
    `until` so that no other process probes meanwhile."""
    t = geo_site_reachability
    claimed = conn.execute(
        update(t)
        .where(
            t.c.target == target,
            t.c.reachable.is_(False),
            or_(t.c.next_probe_at.is_(None), t.c.next_probe_at <= now),
        )
        .values(next_probe_at=until)
    )
    return bool(claimed.rowcount)


# -- probes ------------------------------------------------------------------------------------


def probe_primary(geo: Geo, route: Route) -> str | None:
    """Ask the primary's ping endpoint; None if it answered, else why it did not."""
    import httpx

    from geosync.auth import node_header
    from geosync.wire import PING_PATH

    try:
        headers = {"Authorization": node_header(geo, PING_PATH, node=route.node)}
        timeout = httpx.Timeout(PROBE_TIMEOUT, connect=PROBE_CONNECT_TIMEOUT)
        url = route.primary_url.rstrip("/") + PING_PATH
        response = httpx.get(url, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    except (GeoError, SQLAlchemyError) as exc:  # this node's token cannot be made now
        return error_line(exc) if isinstance(exc, SQLAlchemyError) else str(exc)
    if response.status_code in SITE_LEVEL_STATUSES:
        return f"the primary answered {response.status_code}"
    return None


def probe_main_database(geo: Geo) -> str | None:
    """One query on the main database; None if it answered, else why it did not."""
    try:
        with geo.main_engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except SQLAlchemyError as exc:
        return error_line(exc)
    return None


def is_site_level(exc: BaseException) -> str | None:
    """The target a sync's failure may be the fault of, or None when it is the item's own."""
    from geosync.secondary.settlement import DATABASE_AWAY

    if isinstance(exc, PrimaryUnreachable):
        return PRIMARY
    if isinstance(exc, DATABASE_AWAY):
        return MAIN_DATABASE
    return None


# -- the process's view ------------------------------------------------------------------------


class Reachability:
    """One site's view of its targets in this process, shared by every loop and sync thread
    (`reachability_of`)."""

    def __init__(self, geo: Geo) -> None:
        self.geo = geo
        self._states: dict[str, TargetState] = {}
        self._read_at = -REFRESH
        self._lock = threading.Lock()
        self._probing = {target: threading.Lock() for target in TARGETS}
        #: When this process last probed each target (monotonic seconds).
        self._probed_at: dict[str, float] = {}
        #: Since when this process has waited for another's probe of each target (monotonic).
        self._waiting_since: dict[str, float] = {}
        self._route: Route | None = None

    # -- reading -------------------------------------------------------------------------------

    def states(self) -> dict[str, TargetState]:
        """Every target's state, read again from the tracking database every `REFRESH` s."""
        now = time.monotonic()
        if now - self._read_at >= REFRESH:
            try:
                with self.geo.tracking_engine.connect() as conn:
                    stored = read_states(conn)
            except SQLAlchemyError:
                stored = {}  # the tracking database is away: what this process knows serves
            else:
                self._read_at = now
            with self._lock:
                for target, state in stored.items():
                    mine = self._states.get(target)
                    if mine is None or state.checked_at >= mine.checked_at:
                        self._states[target] = state
        with self._lock:
            return dict(self._states)

    def down(self, targets: Iterable[str] = TARGETS) -> list[str]:
        """The targets of `targets` that are unreachable now."""
        states = self.states()
        return [t for t in targets if (s := states.get(t)) is not None and not s.reachable]

    # -- deciding ------------------------------------------------------------------------------

    def confirm_down(self, target: str, route: Route | None = None) -> bool:
        """A sync failed with a site-level error of `target`: is the target away? Probed now,
        unless a probe of this process answered within `RECENT` seconds (threads cut by one
        outage wait for one probe)."""
        asked = time.monotonic()
        if route is not None:
            self._route = route
        with self._probing[target]:
            probed_at = self._probed_at.get(target)
            with self._lock:
                state = self._states.get(target)
            # A probe begun after this failure was seen answers for it; so does a recent one
            # that found the target away.
            answered = probed_at is not None and (
                probed_at >= asked
                or (state is not None and not state.reachable and asked - probed_at <= RECENT)
            )
            if not answered:
                self._record(target, self._probe(target))
                with self._lock:
                    state = self._states.get(target)
        return state is not None and not state.reachable

    def pause(self, targets: Iterable[str], route: Route | None = None) -> float:
        """Seconds a loop that needs `targets` must wait before its round (0: go on now).

        For each unreachable target a probe is made when one is due, by whichever process
        takes it first; a probe that is answered ends the pause at once.
        """
        if route is not None:
            self._route = route
        waits = []
        targets = tuple(targets)
        down = self.down(targets)
        for target in targets:
            if target not in down:
                self._waiting_since.pop(target, None)
        for target in down:
            wait = self._probe_if_due(target)
            if wait > 0:
                waits.append(wait)
        return min(min(waits), 2 * REFRESH) if waits else 0.0

    def _probe_if_due(self, target: str) -> float:
        """Probe `target` if its probe is due and this process took it; the seconds until the
        next probe, or 0 if the target answered."""
        with self._lock:
            state = self._states[target]
        now = self.geo.clock.now()
        due = state.next_probe_at
        # However the clock moved, a process probes by itself when no probe came for long.
        mono = time.monotonic()
        waiting = self._waiting_since.setdefault(target, mono)
        overdue = mono - max(self._probed_at.get(target, waiting), waiting) >= 2 * MAX_PROBE
        if due is not None and due > now and not overdue:
            return min(MAX_PROBE, (due - now).total_seconds())
        until = now + timedelta(seconds=PROBE_TIMEOUT + PROBE_CONNECT_TIMEOUT)
        try:
            with self.geo.tracking() as conn:
                if not claim_probe(conn, target, now, until) and not overdue:
                    self._read_at = -REFRESH  # another process probes: read its result soon
                    return REFRESH
        except SQLAlchemyError:
            pass  # the tracking database is away too: this process probes for itself
        with self._probing[target]:
            self._record(target, self._probe(target))
        with self._lock:
            after = self._states[target]
        if after.reachable:
            self._waiting_since.pop(target, None)
            return 0.0
        assert after.next_probe_at is not None
        return max(0.0, (after.next_probe_at - self.geo.clock.now()).total_seconds())

    def _probe(self, target: str) -> str | None:
        self._probed_at[target] = time.monotonic()
        if target == MAIN_DATABASE:
            return probe_main_database(self.geo)
        from geosync.secondary.sync import Route

        try:  # read again each time: an operator may point the node elsewhere meanwhile
            self._route = Route.lookup(self.geo)
        except (GeoError, SQLAlchemyError) as exc:
            if self._route is None:
                return f"the primary's address is not known: {exc}"
        assert self._route is not None
        return probe_primary(self.geo, self._route)

    def _record(self, target: str, error: str | None) -> None:
        """Keep what a probe found, here and in the tracking database; log a change."""
        now = self.geo.clock.now()
        with self._lock:
            before = self._states.get(target)
            state = _after_probe(target, before, error, now)
            self._states[target] = state
        _log_change(before, state, now)
        try:
            with self.geo.tracking() as conn:
                write_state(conn, state)
        except SQLAlchemyError as exc:
            log.warning("reachability not stored", target=target, error=error_line(exc))


def _after_probe(
    target: str, before: TargetState | None, error: str | None, now: datetime
) -> TargetState:
    """The state after a probe of `target` that found `error` (None: it answered)."""
    if error is None:
        changed = now if before is None or not before.reachable else before.changed_at
        return TargetState(target, True, changed, now, now)
    if before is None or before.reachable:
        last = before.last_reachable_at if before is not None else None
        failed = 1
        base = TargetState(target, False, now, last, now)
    else:
        failed = before.failed_probes + 1
        base = before
    due = now + timedelta(seconds=probe_interval(failed))
    return replace(base, checked_at=now, failed_probes=failed, next_probe_at=due, error=cut(error))


def _log_change(before: TargetState | None, after: TargetState, now: datetime) -> None:
    what = DESCRIPTIONS[after.target]
    if not after.reachable and (before is None or before.reachable):
        log.warning(
            f"{what} is unreachable: work that needs it pauses, probing it until it answers",
            target=after.target,
            error=after.error,
        )
    elif after.reachable and before is not None and not before.reachable:
        log.info(
            f"{what} is reachable again: work resumes",
            target=after.target,
            unreachable_seconds=before.unreachable_seconds(now),
            probes=before.failed_probes,
        )


def paused_round(geo: Geo, needs: tuple[str, ...], run_once: Callable[[], float]) -> float:
    """One round of a loop that needs `needs`, or the pause while one of them is away.

    A round that fails because the main database does not answer (and a probe agrees) is a
    pause too, not a failure: the loop then waits for the next probe, never for the worker's
    growing retry delay, and resumes as soon as the database answers.
    """
    view = reachability_of(geo)
    wait = view.pause(needs)
    if wait > 0:
        return wait
    try:
        return run_once()
    except Exception as exc:
        if MAIN_DATABASE in needs and is_site_level(exc) == MAIN_DATABASE:
            if view.confirm_down(MAIN_DATABASE):
                return max(view.pause(needs), REFRESH)
        raise


_views: weakref.WeakKeyDictionary[Geo, Reachability] = weakref.WeakKeyDictionary()
_views_lock = threading.Lock()


def reachability_of(geo: Geo) -> Reachability:
    """The view of `geo`'s targets that every loop of this process shares."""
    with _views_lock:
        found = _views.get(geo)
        if found is None:
            found = _views[geo] = Reachability(geo)
        return found


def stored_states(geo: Geo) -> dict[str, TargetState]:
    """The stored state of every target (for status): what the workers' last probes found."""
    with geo.tracking_engine.connect() as conn:
        return read_states(conn)
