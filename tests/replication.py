"""Helpers shared by the in-process replication tests (blobs, repositories, contracts).

The loop runners live in `geosync.testing.workers` so that the contract suites shipped to
application engineers use exactly the same ones.
"""

from __future__ import annotations

from geosync.testing.workers import primary_worker, secondary_worker, wait_for

__all__ = ["primary_worker", "secondary_worker", "wait_for"]
