"""SIGKILL storms of the secondary's worker during blob and repository backfills."""

from __future__ import annotations

import pytest

from geosync.testing.faults import FaultContext, scenario

pytestmark = pytest.mark.slow


def test_a_blob_backfill_survives_a_storm_of_worker_kills(fault_context: FaultContext) -> None:
    kills = scenario("blob-kills")
    row = kills.run(fault_context, kills.small)
    assert row.passed, row.measured
    assert row.figures["kills"] >= 1 and row.figures["finished"] == 1
    for leftover in ("missing", "differing", "partial", "stray", "orphans"):
        assert row.figures[leftover] == 0, leftover
    # Printed, not judged here: how long a restarted worker waited for the dead one's rows.
    assert row.figures["first_transfer_max"] > 0


def test_a_repository_backfill_survives_a_storm_of_worker_kills(
    fault_context: FaultContext,
) -> None:
    kills = scenario("repository-kills")
    row = kills.run(fault_context, kills.small)
    assert row.passed, row.measured
    assert row.figures["kills"] >= 1
    for leftover in ("missing", "differing", "partial", "stray", "orphans"):
        assert row.figures[leftover] == 0, leftover
