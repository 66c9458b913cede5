"""Outages during a backfill: the primary's web server, the tracking database, the standby, the
primary's database. PostgreSQL's scenarios use clusters of their own or a proxy that is cut."""

from __future__ import annotations

import pytest

from geosync.testing.faults import FaultContext, scenario

pytestmark = pytest.mark.slow


def test_a_primary_web_server_outage_defers_syncs_without_counting_retries(
    fault_context: FaultContext,
) -> None:
    outage = scenario("web-outage")
    row = outage.run(fault_context, outage.small)
    assert row.passed, row.measured
    # The syncs cut by the outage were deferred, not failed: no row counted a retry.
    assert row.figures["deferred"] > 0
    assert row.figures["failed_attempts"] == row.figures["retry_growth"] == 0
    assert row.figures["failed_while_down"] == 0
    assert row.figures["status_unreachable"] == 1
    assert row.figures["worker_alive"] == 1 and row.figures["worker_tracebacks"] == 0
    assert row.figures["partial"] == row.figures["missing"] == row.figures["differing"] == 0


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
@pytest.mark.usefixtures("own_clusters")
def test_a_tracking_database_restart_loses_no_sync(fault_context: FaultContext) -> None:
    restart = scenario("tracking-restart")
    row = restart.run(fault_context, restart.small)
    assert row.passed, row.measured
    assert row.figures["recovered"] == 1 and row.figures["worker_tracebacks"] == 0
    assert row.figures["missing"] == row.figures["partial"] == 0


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
@pytest.mark.usefixtures("own_clusters")
def test_an_unreachable_standby_delays_the_backfill_only(fault_context: FaultContext) -> None:
    away = scenario("standby-unreachable")
    row = away.run(fault_context, away.small)
    assert row.passed, row.measured
    assert row.figures["recovered"] == 1 and row.figures["worker_tracebacks"] == 0
    assert row.figures["retry_growth"] == 0 and row.figures["status_unreachable"] == 1


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_primary_answering_503_for_its_database_is_unreachable_as_a_site(
    fault_context: FaultContext,
) -> None:
    away = scenario("primary-db-unreachable")
    row = away.run(fault_context, away.small)
    assert row.passed, row.measured
    assert row.figures["deferred"] > 0 and row.figures["retry_growth"] == 0
    assert row.figures["serve_tracebacks"] == 0
    assert "503" in row.measured
