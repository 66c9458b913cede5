"""Forged and mis-scoped tokens and traversal paths get no byte; clocks that disagree within the
token leeway sync, beyond it they are refused and recover once corrected."""

from __future__ import annotations

from geosync.testing.faults import FaultContext, scenario


def test_forged_tokens_and_traversal_paths_are_served_no_byte(
    fault_context: FaultContext,
) -> None:
    tokens = scenario("tokens")
    row = tokens.run(fault_context, tokens.small)
    assert row.passed, row.measured
    assert row.figures["bytes_served"] == 0 and row.figures["leaks"] == 0
    assert row.figures["refused"] == row.figures["requests"] == tokens.small
    assert row.figures["server_errors"] == row.figures["without_message"] == 0
    assert row.figures["control_ok"] == 1


def test_clock_skew_within_the_leeway_still_syncs(fault_context: FaultContext) -> None:
    skew = scenario("skew-within")
    row = skew.run(fault_context, skew.small)
    assert row.passed, row.measured
    assert row.figures["synced_skewed"] == skew.small


def test_clock_skew_beyond_the_leeway_is_refused_and_recovers(
    fault_context: FaultContext,
) -> None:
    skew = scenario("skew-beyond")
    row = skew.run(fault_context, skew.small)
    assert row.passed, row.measured
    assert row.figures["synced_skewed"] == 0 and row.figures["bytes_served_skewed"] == 0
    assert row.figures["recovered"] == 1
