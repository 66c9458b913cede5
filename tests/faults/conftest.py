"""Fixtures of the fault suite: a context per test, on the test's backend, with a short lease
so that a killed worker's rows are taken over within a few seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from geosync.testing.faults import FaultContext
from geosync.testing.pg_standby import missing_reason
from tests.conftest import IN_CI, POSTGRES_URL

#: Seconds a dead worker's lease outlives it in these tests (the default is 30).
LEASE_SECONDS = 3.0


@pytest.fixture
def fault_context(backend: str, tmp_path: Path) -> FaultContext:
    """Where one scenario runs: the test's backend and scratch directory."""
    return FaultContext(backend, tmp_path, POSTGRES_URL, lease_seconds=LEASE_SECONDS)


@pytest.fixture
def own_clusters() -> None:
    """The scenario makes PostgreSQL clusters of its own (never restarting the shared server):
    skipped where the server binaries are missing, failed in CI."""
    reason = missing_reason()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"the fault suite's PostgreSQL scenarios must run in CI: {reason}")
        pytest.skip(reason)
