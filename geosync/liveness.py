"""Worker liveness: a worker's proof of life, and the proof that a worker is dead.

Every secondary worker holds a liveness lease, `worker:<holder>` (`geosync.leases`), renewed by
a heartbeat thread of its own, which dies with the process. The rows it claims carry its holder
(`claimed_by`), and so do its singleton leases (the log cursor, the consistency sweep). Other
workers take that work over once the holder is dead, which they know in one of two ways:

- **the lease lapsed**: `lease_seconds` without a heartbeat (or no lease at all). This holds
  across machines, but only after a whole lease;
- **the process is gone**, at once, when the holder ran on this machine: its lease names its
  process (boot id, pid namespace, pid and start time), and a process of the same kernel and
  pid namespace can tell that this process no longer exists — no such pid, a zombie, or another
  process that got the pid since.

A live holder is never proven dead: a slow, busy or stopped (SIGSTOP) process still exists, and
a process of another machine or pid namespace, or one whose state cannot be read (`/proc`
mounted with `hidepid`), is judged by its lease alone.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection

from geosync.db.engines import error_line
from geosync.leases import (
    acquire,
    holder_of,
    liveness_leases,
    liveness_name,
    release,
    take_from,
)
from geosync.log import get_logger
from geosync.loops import OUTAGES

if TYPE_CHECKING:
    from geosync.app import Geo

log = get_logger("liveness")

PROC = Path("/proc")
#: A heartbeat renews the liveness lease this many times per lease: a few renewals may fail
#: (a database that restarts) before the lease lapses.
BEATS_PER_LEASE = 5
#: Seconds a heartbeat that failed waits before it tries again.
BEAT_RETRY = 1.0
#: Why a holder is dead, as `dead_holders` says it.
LEASE_LAPSED = "its lease expired"
PROCESS_GONE = "its process is gone"


@dataclass(frozen=True)
class ProcessIdentity:
    """One process, named precisely enough for another process of the same machine to tell
    whether it still runs: where its pid means something (`scope`: the boot id and the pid
    namespace), its pid, and its start time (clock ticks after boot), which tells it from a
    later process that got the same pid."""

    scope: str
    pid: int
    start: int

    def text(self) -> str:
        """The form stored in `geo_leases.process`."""
        return f"{self.scope}/{self.pid}/{self.start}"

    @classmethod
    def parse(cls, text: str | None) -> ProcessIdentity | None:
        """The identity stored as `text`, or None when there is none (or it is not one)."""
        if not text:
            return None
        scope, _, rest = text.rpartition("/")
        scope, _, pid = scope.rpartition("/")
        try:
            identity = cls(scope, int(pid), int(rest))
        except ValueError:
            return None
        return identity if scope and identity.pid > 0 else None


_identities: dict[int, ProcessIdentity | None] = {}


def this_process() -> ProcessIdentity | None:
    """This process's identity; None where it cannot be known (no Linux `/proc`, or a `/proc`
    of another pid namespace), and then no holder is ever proven dead from here."""
    pid = os.getpid()
    if pid not in _identities:  # a forked child is another process
        _identities[pid] = _identity_of_self(pid)
    return _identities[pid]


def _identity_of_self(pid: int) -> ProcessIdentity | None:
    try:
        mine = os.readlink(PROC / "self") == str(pid)
    except OSError:
        return None
    return process_identity(pid) if mine else None


def process_identity(pid: int) -> ProcessIdentity | None:
    """The identity of process `pid` of this machine and pid namespace, or None when it cannot
    be read (no such process, no Linux `/proc`)."""
    try:
        boot = (PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
        namespace = os.readlink(PROC / "self" / "ns" / "pid")
    except OSError:
        return None
    stat = _stat(pid)
    if not boot or stat is None:
        return None
    return ProcessIdentity(f"{boot}:{namespace}", pid, stat[1])


def _stat(pid: int) -> tuple[str, int] | None:
    """The state letter and start time of process `pid`, from `/proc/<pid>/stat`."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()  # the command name may hold spaces and parens
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def proven_dead(holder: ProcessIdentity | None, here: ProcessIdentity | None = None) -> bool:
    """Whether `holder` certainly no longer runs; False whenever that cannot be known here."""
    here = here if here is not None else this_process()
    if holder is None or here is None or holder.scope != here.scope or holder.pid <= 1:
        return False
    if holder.pid == here.pid:
        return holder.start != here.start
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # a process of another user has the pid: its start time tells more
    except OSError:
        return False
    stat = _stat(holder.pid)
    if stat is None:
        return False  # it exists, but cannot be read from here
    state, start = stat
    if start != holder.start:
        return True  # the pid belongs to a later process
    return state in ("Z", "X") and not _threads_alive(holder.pid)


def _threads_alive(pid: int) -> bool:
    """Whether a zombie's other threads still run (its main thread ended before them)."""
    try:
        tasks = [task for task in os.listdir(PROC / str(pid) / "task") if task != str(pid)]
    except OSError:
        return True
    for task in tasks:
        stat = _stat_of_task(pid, task)
        if stat is None or stat not in ("Z", "X"):
            return True
    return False


def _stat_of_task(pid: int, task: str) -> str | None:
    try:
        text = (PROC / str(pid) / "task" / task / "stat").read_text()
    except FileNotFoundError:
        return "X"  # the thread is gone
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return fields[0] if fields else None


def dead_holders(conn: Connection, holders: Iterable[str], now: datetime) -> dict[str, str]:
    """Which of `holders` (the workers that claimed started rows) are dead, each with how that
    is known (`LEASE_LAPSED` or `PROCESS_GONE`).

    Read the holders of the rows before calling this: a worker's lease is written before its
    first claim, so every holder seen on a row already had its lease when this reads them.
    A holder whose lease names this very process is never dead here, even with its lease
    lapsed (its database was away longer than a lease, or a test's clock jumped): its threads
    run, and only other processes go by the lease.
    """
    wanted = set(holders)
    leases = liveness_leases(conn, wanted)
    here = this_process()
    dead: dict[str, str] = {}
    for holder in sorted(wanted):
        lease = leases.get(holder)
        identity = ProcessIdentity.parse(lease.process) if lease is not None else None
        if identity is not None and identity == here:
            continue  # this very process runs: a heartbeat that lagged proves nothing here
        if lease is None or lease.expires_at < now:
            dead[holder] = LEASE_LAPSED
        elif proven_dead(identity, here):
            dead[holder] = PROCESS_GONE
    return dead


def take_role(conn: Connection, name: str, holder: str, now: datetime, ttl: timedelta) -> bool:
    """Take or renew the singleton lease `name` for `holder` (`geosync.leases.acquire`), and
    take it at once from a holder whose process is proven gone, instead of waiting out its
    lease. A holder without a liveness lease (not a worker) is only ever waited out."""
    if acquire(conn, name, holder, now, ttl):
        return True
    current = holder_of(conn, name)
    if current is None:
        return False
    lease = liveness_leases(conn, [current]).get(current)
    if lease is None or not proven_dead(ProcessIdentity.parse(lease.process)):
        return False
    taken = take_from(conn, name, current, holder, now, ttl)
    if taken:
        log.info("lease taken over from a dead worker", lease=name, dead=current)
    return taken


def release_role(geo: Geo, name: str, holder: str) -> None:
    """Give the singleton lease `name` up as a worker stops cleanly, so a standby takes it at
    once; with the database away it is left to lapse."""
    try:
        with geo.tracking() as conn:
            release(conn, name, holder)
    except OUTAGES as exc:
        log.warning("lease not released", lease=name, error=error_line(exc))


class Heartbeat:
    """Keeps a worker's liveness lease while its process lives, from a thread of its own: a
    slow round of any loop, or a loop's retry pause, never lets the lease lapse."""

    def __init__(self, geo: Geo, holder: str) -> None:
        self.geo = geo
        self.holder = holder
        self.ttl = timedelta(seconds=geo.settings.lease_seconds)
        self.every = self.ttl.total_seconds() / BEATS_PER_LEASE
        identity = this_process()
        self.process = identity.text() if identity is not None else None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """Renew the lease once (take it, the first time)."""
        with self.geo.tracking() as conn:
            acquire(
                conn,
                liveness_name(self.holder),
                self.holder,
                self.geo.clock.now(),
                self.ttl,
                self.process,
            )

    def start(self) -> None:
        """Take the lease now (before the worker claims anything), then keep renewing it."""
        self.beat()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        wait = self.every
        while not self._stopping.wait(wait):
            try:
                self.beat()
                wait = self.every
            except OUTAGES as exc:
                log.warning("heartbeat failed", error=error_line(exc), retry_in=BEAT_RETRY)
                wait = min(BEAT_RETRY, self.every)

    def stop(self, *, release_lease: bool) -> None:
        """Stop renewing; with `release_lease` (the worker's work is all settled) give the
        lease up, so what is left of this worker's is taken over at once."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        if release_lease:
            release_role(self.geo, liveness_name(self.holder), self.holder)
