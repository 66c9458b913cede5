"""Background loops: the unit of work a worker process runs, by site role.

A loop does one bounded round of work per `run_once` call and says how long it may sleep before
the next round; a worker wakes it early when new work is signalled.
"""

from __future__ import annotations

import threading
from typing import Protocol


class Loop(Protocol):
    """One background activity (log cursor, scheduler, verification, sweep, status, pruning)."""

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
