"""Malformed rows in the event log are skipped, never a stuck cursor; a replayed log changes
nothing."""

from __future__ import annotations

from geosync.testing.faults import FaultContext, scenario


def test_malformed_event_rows_are_skipped_one_line_each(fault_context: FaultContext) -> None:
    malformed = scenario("malformed-events")
    row = malformed.run(fault_context, malformed.small)
    assert row.passed, row.measured
    assert row.figures["stuck"] == 0
    assert row.figures["applied"] == row.figures["real_events"]
    assert row.figures["skip_lines"] == row.figures["malformed"]
    assert row.figures["handler_crashes"] == row.figures["canary_removed"] == 0


def test_replaying_the_event_log_leaves_the_same_state(fault_context: FaultContext) -> None:
    replay = scenario("replay")
    row = replay.run(fault_context, replay.small)
    assert row.passed, row.measured
    assert row.figures["rows_differing"] == row.figures["files_differing"] == 0
    assert row.figures["settled"] == 1
