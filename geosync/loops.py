"""Background loops: the unit of work a worker process runs, by site role.

A loop does one bounded round of work per `run_once` call and says how long it may sleep before
the next round; a worker wakes it early when new work is signalled.
"""

from __future__ import annotations

import threading
from typing import Protocol

import httpx
from sqlalchemy.exc import SQLAlchemyError

from geosync.errors import GeoError

#: Seconds a secondary's housekeeping loops (status, sweeps, verification) let pass before their
#: first round: a starting worker's first syncs then do not queue behind them for the database
#: and the interpreter. A loop opts in with `start_after = HOUSEKEEPING_START`.
HOUSEKEEPING_START = 1.0


#: Failures of the world around a loop (a database, the primary, the disk or the network away):
#: logged as one warning line, never a traceback. Anything else is a bug, worth a traceback.
OUTAGES: tuple[type[BaseException], ...] = (SQLAlchemyError, GeoError, OSError, httpx.HTTPError)


class Loop(Protocol):
    """One background activity (log cursor, scheduler, verification, sweep, status, pruning).

    A loop may also have `start_after`: seconds the worker waits before its first round; and
    `needs`: the targets it cannot work without on a secondary (`geosync.secondary.
    reachability`), while one of which is unreachable its rounds pause and probe.
    """

    name: str

    def run_once(self) -> float:
        """Do one bounded round of work; return seconds to sleep (0 means "more is waiting")."""
        ...


class Wakeup:
    """An in-process signal that new work exists (SQLite; PostgreSQL adds LISTEN/NOTIFY)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        """Wake every loop waiting on this signal."""
        self._event.set()

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` seconds or until woken; returns whether woken."""
        woken = self._event.wait(timeout)
        self._event.clear()
        return woken
