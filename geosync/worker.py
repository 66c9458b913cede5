"""`geosync worker`: runs a site's background loops, by role, until told to stop.

Each loop runs in its own thread. SIGTERM/SIGINT stop every loop from taking new work; work in
flight finishes (or is failed cleanly by its owner) and the process exits 0.

A worker started before its databases answer waits for them; a round that fails (a database or
the primary gone away) is one warning line, and the loop tries again after 1, 2, 4, ... up to
30 seconds, so the worker recovers by itself, within half a minute, once they are back.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import sys
import threading
import weakref
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from geosync.db.engines import error_line
from geosync.liveness import Heartbeat
from geosync.log import get_logger
from geosync.loops import OUTAGES, Loop, Wakeup
from geosync.wakeups import Announcer, Listener, wakeup_engine

if TYPE_CHECKING:
    from geosync.app import Geo

log = get_logger("worker")
LoopFactory = Callable[["Geo", "Worker"], Loop]

#: Seconds a thread may hold the interpreter while another waits for it (Python's default: 5 ms).
#: A worker's sync threads mostly wait on the network, the disk and the database; each time one
#: wakes it needs the interpreter back, and behind a busy thread (the log cursor applying a
#: backlog, a status computation) it waited up to the full default every time.
THREAD_SWITCH_INTERVAL = 0.001


def tune_thread_switching() -> None:
    """Let threads that wake from I/O take the interpreter sooner (a `geosync worker` process
    is mostly such threads); the price is more frequent switches between busy threads."""
    sys.setswitchinterval(THREAD_SWITCH_INTERVAL)


def _secondary_loops() -> list[LoopFactory]:
    from geosync.jobs import BulkJobLoop
    from geosync.scrub import ScrubLoop
    from geosync.secondary.consistency import ConsistencySweepLoop
    from geosync.secondary.log_cursor import LogCursorLoop
    from geosync.secondary.scheduler import SchedulerLoop, StuckSweepLoop
    from geosync.secondary.verification import SecondaryVerificationLoop
    from geosync.status_reporting import StatusLoop

    return [
        LogCursorLoop,
        SchedulerLoop,
        StuckSweepLoop,
        SecondaryVerificationLoop,
        ScrubLoop,
        StatusLoop,
        ConsistencySweepLoop,
        BulkJobLoop,
    ]


def _primary_loops() -> list[LoopFactory]:
    from geosync.jobs import BulkJobLoop
    from geosync.primary.pruning import EventLogPruningLoop
    from geosync.primary.verification import PrimaryVerificationLoop, PrimaryVerificationSweepLoop
    from geosync.scrub import ScrubLoop
    from geosync.status_history import StatusHistoryPruningLoop
    from geosync.status_reporting import StatusLoop

    return [
        PrimaryVerificationLoop,
        PrimaryVerificationSweepLoop,
        ScrubLoop,
        StatusLoop,
        EventLogPruningLoop,
        StatusHistoryPruningLoop,
        BulkJobLoop,
    ]


_running: weakref.WeakSet[Worker] = weakref.WeakSet()
_running_lock = threading.Lock()


def notify_local_workers(geo: Geo, *loop_names: str) -> None:
    """Tell the workers of `geo` that new work exists for the named loops (called after a
    commit that made records pending): those running in this process at once, those of the
    site's other processes through PostgreSQL's LISTEN/NOTIFY (`geosync.wakeups`); on SQLite
    they find it at their next poll.
    """
    from geosync.wakeups import announce

    with _running_lock:
        workers = [worker for worker in _running if worker.geo is geo]
    for worker in workers:
        worker.notify_here(*loop_names)
    announce(geo, *loop_names)


#: Loop factories per role; each part of geosync that needs a background loop adds it here.
ROLE_LOOPS: dict[str, Callable[[], list[LoopFactory]]] = {
    "primary": _primary_loops,
    "secondary": _secondary_loops,
}


#: Seconds a failed loop waits before its first retry; each further failure doubles the wait...
FIRST_RETRY = 1.0
#: ...up to this many seconds, so a database that comes back is used within half a minute.
MAX_RETRY = 30.0


def retry_delay(failures: int) -> float:
    """Seconds to wait after the `failures`-th failure in a row: 1, 2, 4, ... `MAX_RETRY`."""
    return float(min(MAX_RETRY, FIRST_RETRY * 2 ** min(failures - 1, 16)))


def _log_failure(loop: str, exc: Exception, failures: int, retry_in: float) -> None:
    """One structured line per failed round; a traceback only for an unexpected error's first."""
    fields = {
        "loop": loop,
        "error": error_line(exc),
        "error_class": type(exc).__name__,
        "failures": failures,
        "retry_in": retry_in,
    }
    if failures == 1 and not isinstance(exc, OUTAGES):
        log.error("loop crashed, retrying", exc_info=exc, **fields)
    else:
        log.warning("loop failed, retrying", **fields)


class Worker:
    """Runs loops in threads; `stop()` (or a signal) ends them all."""

    def __init__(self, geo: Geo, factories: list[LoopFactory] | None = None) -> None:
        self.geo = geo
        self.stopping = threading.Event()
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        role = "secondary" if geo.has_tracking_database else "primary"
        self.role = role
        chosen = factories if factories is not None else ROLE_LOOPS[role]()
        self.loops: list[Loop] = [factory(geo, self) for factory in chosen]
        self.wakeups = {loop.name: Wakeup() for loop in self.loops}
        self._by_name = {loop.name: loop for loop in self.loops}
        self._threads: list[threading.Thread] = []
        #: A secondary worker's proof of life: its rows are taken over when it stops.
        self.heartbeat = Heartbeat(geo, self.holder) if role == "secondary" else None
        #: The site's other processes hear of new work through these (PostgreSQL only).
        self.announcer: Announcer | None = None
        self.listener: Listener | None = None

    def start(self) -> None:
        """Take the liveness lease (before any loop may claim work), then start every loop's
        thread."""
        if self.heartbeat is not None:
            self.heartbeat.start()
        engine = wakeup_engine(self.geo)
        if engine is not None:
            self.announcer = Announcer(engine, self.holder)
            self.listener = Listener(engine, self.holder, self._heard)
            self.listener.start()
        for loop in self.loops:
            thread = threading.Thread(target=self._run, args=(loop,), name=loop.name, daemon=True)
            thread.start()
            self._threads.append(thread)
        with _running_lock:
            _running.add(self)
        log.info("worker started", role=self.role, loops=[loop.name for loop in self.loops])

    def _run(self, loop: Loop) -> None:
        pause = float(getattr(loop, "start_after", 0.0))
        if pause > 0:
            self.stopping.wait(pause)
        failures = 0
        while not self.stopping.is_set():
            try:
                delay = self._round(loop)
            except Exception as exc:  # a loop boundary: one line, a growing pause, go on
                failures += 1
                retry_in = retry_delay(failures)
                _log_failure(loop.name, exc, failures, retry_in)
                self.stopping.wait(retry_in)
                continue
            if failures:
                log.info("loop recovered", loop=loop.name, failures=failures)
                failures = 0
            if delay > 0 and not self.stopping.is_set():
                self.wakeups[loop.name].wait(min(delay, self.geo.settings.poll_interval * 15))
        closer = getattr(loop, "close", None)
        if callable(closer):
            closer()

    def _round(self, loop: Loop) -> float:
        """One round of `loop`; a secondary's loop that names the sites it `needs` (the
        primary, the main database) pauses instead while one is unreachable
        (`geosync.secondary.reachability`)."""
        needs: tuple[str, ...] = getattr(loop, "needs", ())
        if not needs or self.role != "secondary":
            return loop.run_once()
        from geosync.secondary.reachability import paused_round

        return paused_round(self.geo, needs, loop.run_once)

    def notify(self, *loop_names: str) -> None:
        """New work exists for the named loops: wake them here and, on PostgreSQL, in the
        site's other worker processes (`notify_here` when none is named: every loop here)."""
        self.notify_here(*loop_names)
        if loop_names and self.announcer is not None:
            self.announcer.announce(*loop_names)

    def _heard(self, loop_name: str | None) -> None:
        """Another process announced work (None: the listener reconnected, anything may be new)."""
        if loop_name is None:
            self.notify_here()
        else:
            self.notify_here(loop_name)

    def notify_here(self, *loop_names: str) -> None:
        """New work exists: tell the named loops of this process (every loop when none is
        named) and wake them.

        A loop that keeps note of having run dry (the scheduler) hears of the new work through
        its `work_arrived()`, so it looks again at once instead of after its drained pause.
        """
        for name in loop_names or tuple(self.wakeups):
            loop = self._by_name.get(name)
            arrived = getattr(loop, "work_arrived", None)
            if callable(arrived):
                arrived()
            self.wake(name)

    def wake(self, loop_name: str) -> None:
        """Wake one loop for another round, without telling it of new work (a finished sync
        frees a slot: the scheduler looks again, but not at queues it just found empty).

        Finished syncs wake only the scheduler: waking every loop on each file made the status,
        sweep and verification loops run hundreds of times a minute for nothing.
        """
        wakeup = self.wakeups.get(loop_name)
        if wakeup is not None:
            wakeup.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking work, let loops finish their round, and wait for them."""
        self.stopping.set()
        with _running_lock:
            _running.discard(self)
        self.notify_here()
        if self.listener is not None:
            self.listener.stop()
        for thread in self._threads:
            thread.join(timeout)
        if self.announcer is not None:
            self.announcer.close()
        if self.heartbeat is not None:
            # Give the lease up only once no loop runs: whatever they left is then taken
            # over at once; a loop still running keeps its rows until the lease lapses.
            ended = not any(thread.is_alive() for thread in self._threads)
            self.heartbeat.stop(release_lease=ended)
        log.info("worker stopped", role=self.role)

    def run_forever(self) -> None:
        """Start, then block until SIGTERM or SIGINT, then stop cleanly."""

        def _signal(signum: int, _frame: FrameType | None) -> None:
            log.info("signal received, stopping", signal=signal.Signals(signum).name)
            self.stopping.set()
            self.notify_here()

        signal.signal(signal.SIGTERM, _signal)
        signal.signal(signal.SIGINT, _signal)
        self.start()
        while not self.stopping.wait(1.0):
            if not any(t.is_alive() for t in self._threads):
                break
        self.stop()


def database_problems(geo: Geo) -> dict[str, str]:
    """The site's databases that do not answer a query now, each with its error's first line."""
    engines = {"main": geo.main_engine}
    if geo.has_tracking_database:
        engines["tracking"] = geo.tracking_engine
    problems = {}
    for name, engine in engines.items():
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        except SQLAlchemyError as exc:
            problems[name] = error_line(exc)
    return problems


def wait_for_databases(geo: Geo, stopping: threading.Event) -> bool:
    """Wait until every database of the site answers, with one warning per database and try
    and a growing pause (`retry_delay`); False when `stopping` was set first."""
    failures = 0
    while not stopping.is_set():
        problems = database_problems(geo)
        if not problems:
            if failures:
                log.info("databases reachable", failures=failures)
            return True
        failures += 1
        retry_in = retry_delay(failures)
        for name, error in problems.items():
            log.warning(
                "database not reachable, the worker keeps retrying",
                database=name,
                error=error,
                failures=failures,
                retry_in=retry_in,
            )
        stopping.wait(retry_in)
    return False


def run_until_stopped(geo: Geo) -> None:
    """`geosync worker`: wait for the site's databases (a service started before its database
    waits for it, saying so), then run the loops until SIGTERM or SIGINT."""
    stopping = threading.Event()

    def _signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal received, stopping", signal=signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, _signal)
    signal.signal(signal.SIGINT, _signal)
    if not wait_for_databases(geo, stopping):
        log.info("worker stopped before it started")
        return
    worker = Worker(geo)
    if stopping.is_set():
        worker.stopping.set()
    worker.run_forever()
