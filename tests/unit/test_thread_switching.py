"""A worker process hands the interpreter to threads waking from I/O sooner than by default."""

from __future__ import annotations

import sys

from geosync.worker import THREAD_SWITCH_INTERVAL, tune_thread_switching


def test_the_switch_interval_is_shortened() -> None:
    before = sys.getswitchinterval()
    try:
        tune_thread_switching()
        assert sys.getswitchinterval() == THREAD_SWITCH_INTERVAL
        assert THREAD_SWITCH_INTERVAL < before
    finally:
        sys.setswitchinterval(before)
