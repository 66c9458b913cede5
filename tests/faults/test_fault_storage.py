"""A full disk on the secondary, and damaged copies found by verification."""

from __future__ import annotations

from geosync.testing.faults import FaultContext, scenario
from geosync.testing.faults.storage import disk_full_on_secondary


def test_a_full_disk_fails_rows_cleanly_and_a_resync_recovers_them(
    fault_context: FaultContext,
) -> None:
    full = scenario("disk-full")
    row = full.run(fault_context, full.small)
    assert row.passed, row.measured
    assert row.figures["failed_when_full"] > 0 and row.figures["synced_when_full"] > 0
    assert row.figures["no_space_failures"] == row.figures["failed_when_full"]
    assert row.figures["permanent_failures"] == row.figures["failed_when_full"]
    assert row.figures["partial_when_full"] == row.figures["differing_when_full"] == 0
    assert row.figures["recovered"] == 1 and row.figures["partial"] == 0


def test_the_injected_full_disk_behaves_like_a_real_one(fault_context: FaultContext) -> None:
    row = disk_full_on_secondary(fault_context, 40, tmpfs=False)
    assert "injected ENOSPC" in row.done
    assert row.passed, row.measured
    assert row.figures["partial_when_full"] == 0


def test_the_scrub_finds_and_repairs_damaged_copies_by_itself(
    fault_context: FaultContext,
) -> None:
    corruption = scenario("corruption")
    row = corruption.run(fault_context, corruption.small)
    assert row.passed, row.measured
    assert "scrub" in row.done
    assert row.figures["found"] == row.figures["repaired"] == row.figures["damaged"] > 0
    assert row.figures["needless_downloads"] == 0
    # What status claimed while the copies were damaged, before anything looked again.
    assert row.figures["verified_percent_before"] == 100.0


def test_reverify_all_finds_and_repairs_damaged_copies(fault_context: FaultContext) -> None:
    corruption = scenario("corruption-reverify")
    row = corruption.run(fault_context, 40)
    assert row.passed, row.measured
    assert row.figures["found"] == row.figures["repaired"] == row.figures["damaged"] > 0
    assert row.figures["needless_downloads"] == 0
