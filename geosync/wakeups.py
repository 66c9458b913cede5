"""Wake-ups across processes: PostgreSQL LISTEN/NOTIFY between the processes of one site.

A loop that makes work for others (the log cursor's new pending rows, a bulk job, an operator's
resync, a dead worker's rows taken over) wakes the loops of its own process directly
(`Worker.notify`). The site's other processes learn of it here: the work's maker sends
`NOTIFY geosync_wakeup, '<holder> <loop name>'` on the site's writable PostgreSQL database
(a secondary's tracking database, a primary's main database), and every worker process keeps
one connection that `LISTEN`s on that channel and wakes its loop of that name.

The sender never waits for the database: names are queued and sent by a thread, many in one
transaction when they come fast, and a failed send is dropped (the receivers' polls find the
work all the same). A listener that loses its connection (the database restarted) connects
again with a growing pause and then wakes every loop, for whatever it may have missed.

SQLite has no such channel: processes sharing SQLite databases find new work at their next
poll, as before (`poll_interval`). A hot standby does not deliver notifications either: the
log cursor learns of new events on a standby by a cheap poll of the newest event id
(`geosync.secondary.log_cursor.NEWEST_EVENT_POLL`).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, text

from geosync.db.engines import error_line, is_sqlite
from geosync.log import get_logger

if TYPE_CHECKING:
    from geosync.app import Geo

log = get_logger("wakeups")

CHANNEL = "geosync_wakeup"
#: Seconds a listener waits for notifications before it looks whether it should stop.
LISTEN_TICK = 0.5
#: Seconds between a listener's attempts to reconnect: doubling from the first to the last.
RECONNECT_FIRST = 0.5
RECONNECT_MAX = 10.0
#: Seconds an idle sender thread waits for more names before it ends (a new one starts on demand).
SENDER_IDLE = 30.0


def wakeup_engine(geo: Geo) -> Engine | None:
    """The database this site's processes wake each other through: the tracking database of a
    secondary, the main database of a primary; None on SQLite or a read-only main database."""
    if geo.has_tracking_database:
        engine = geo.tracking_engine
    elif geo.main_readonly:
        return None
    else:
        engine = geo.main_engine
    return None if is_sqlite(engine) else engine


class Announcer:
    """Sends wake-ups for loop names from a thread of its own, coalescing what comes fast."""

    def __init__(self, engine: Engine, holder: str) -> None:
        self.engine = engine
        self.holder = holder
        self._names: set[str] = set()
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def announce(self, *loop_names: str) -> None:
        """Queue wake-ups for `loop_names`; returns at once."""
        if not loop_names:
            return
        with self._lock:
            if self._closed:
                return
            self._names.update(loop_names)
            self._lock.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wakeup-sender", daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Send what is queued, then stop sending."""
        with self._lock:
            self._closed = True
            self._lock.notify()
            thread = self._thread
        if thread is not None:
            thread.join(5.0)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._names and not self._closed:
                    self._lock.wait(SENDER_IDLE)
                names, self._names = sorted(self._names), set()
                if not names:
                    self._thread = None
                    return
            self._send(names)

    def _send(self, names: list[str]) -> None:
        try:
            with self.engine.connect() as conn:
                for name in names:
                    payload = f"{self.holder} {name}"
                    conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": payload})
                conn.commit()
        except Exception as exc:  # a lost wake-up costs a poll interval, never the work
            log.debug("wake-up not sent", loops=names, error=error_line(exc))


class Listener:
    """One connection that LISTENs for the site's wake-ups and hands each loop name (from
    other processes) to `wake`; `wake(None)` after a reconnect means "every loop"."""

    def __init__(self, engine: Engine, holder: str, wake: Callable[[str | None], None]) -> None:
        self.engine = engine
        self.holder = holder
        self.wake = wake
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wakeup-listener", daemon=True)
        #: Set once the first LISTEN is in place (tests and benchmarks wait for it).
        self.listening = threading.Event()

    def start(self) -> None:
        """Start listening in a thread of its own."""
        self._thread.start()

    def stop(self) -> None:
        """Stop listening (within `LISTEN_TICK`)."""
        self.stopping.set()
        self._thread.join(LISTEN_TICK * 4)

    def _run(self) -> None:
        pause = RECONNECT_FIRST
        first = True
        while not self.stopping.is_set():
            try:
                connection = self._connect()
            except Exception as exc:
                level = log.info if pause == RECONNECT_FIRST else log.debug
                level("wake-up listener cannot connect", error=error_line(exc))
                self.stopping.wait(pause)
                pause = min(RECONNECT_MAX, pause * 2)
                continue
            pause = RECONNECT_FIRST
            if not first:
                self.wake(None)  # notifications sent while it was away are lost: look again
            first = False
            self.listening.set()
            try:
                self._listen(connection)
            except Exception as exc:
                log.info("wake-up listener lost its connection", error=error_line(exc))
            finally:
                with contextlib.suppress(Exception):
                    connection.close()

    def _connect(self) -> Any:
        """A connection of the engine's own settings, taken out of its pool, in autocommit."""
        pooled = self.engine.raw_connection()
        connection = pooled.driver_connection
        pooled.detach()
        if connection is None:
            raise RuntimeError("the engine gave no driver connection")
        connection.rollback()
        connection.autocommit = True
        connection.execute(f"LISTEN {CHANNEL}")
        return connection

    def _listen(self, connection: Any) -> None:
        while not self.stopping.is_set():
            for notice in connection.notifies(timeout=LISTEN_TICK):
                holder, _, name = str(notice.payload).partition(" ")
                if holder != self.holder and name:
                    self.wake(name)
                if self.stopping.is_set():
                    return


_announcers: weakref.WeakKeyDictionary[Geo, Announcer] = weakref.WeakKeyDictionary()
_announcers_lock = threading.Lock()


def announcer_of(geo: Geo, holder: str = "") -> Announcer | None:
    """The announcer of `geo`'s process (made on first use), or None when the site has no
    wake-up channel (SQLite)."""
    engine = wakeup_engine(geo)
    if engine is None:
        return None
    with _announcers_lock:
        found = _announcers.get(geo)
        if found is None or found.engine is not engine:
            found = Announcer(engine, holder or f"process-{id(geo):x}")
            _announcers[geo] = found
        return found


def announce(geo: Geo, *loop_names: str) -> None:
    """Wake the loops named in the site's worker processes (nothing happens on SQLite)."""
    found = announcer_of(geo)
    if found is not None:
        found.announce(*loop_names)
