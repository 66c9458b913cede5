"""Status history on the primary: one row per node and minute, appended when a status is stored,
pruned past `status_history_hours` in bounded batches (SQLite and PostgreSQL, frozen clock).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from geosync.clock import FrozenClock
from geosync.db.tables import geo_node_status_history
from geosync.status import NodeStatus, store_status
from geosync.status_history import (
    PRUNE_INTERVAL,
    StatusHistoryPruningLoop,
    history_counts,
    history_since,
    minute_of,
)
from geosync.status_reporting import store_own_status
from geosync.testing import SitePair
from geosync.worker import ROLE_LOOPS


def report(sites: SitePair, node_id: int, **values: Any) -> None:
    """What the primary does with a status it receives: store it at the primary's clock."""
    now = sites.primary.clock.now()
    with sites.primary.main() as conn:
        store_status(conn, NodeStatus({"geo_node_id": node_id, **values}, now), now)


def row_count(sites: SitePair) -> int:
    """Rows in the primary's status history."""
    with sites.primary.main_engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(geo_node_status_history)) or 0)


def test_a_stored_status_appends_its_counts(sites: SitePair, clock: FrozenClock) -> None:
    node = sites.secondary_node.id
    report(sites, node, uploads_synced_count=7, uploads_failed_count=2, uploads_count=10)

    with sites.primary.main_engine.connect() as conn:
        points = history_since(conn, clock.now() - timedelta(hours=1))[node]

    assert len(points) == 1
    assert points[0].recorded_at == minute_of(clock.now())
    assert points[0].value("uploads_synced_count") == 7
    assert points[0].value("uploads_failed_count") == 2
    assert points[0].value("uploads_count") == 10


def test_a_second_status_in_the_same_minute_adds_no_row(
    sites: SitePair, clock: FrozenClock
) -> None:
    node = sites.secondary_node.id
    clock.advance(5)
    report(sites, node, uploads_synced_count=1)
    clock.advance(30)
    report(sites, node, uploads_synced_count=2)
    assert row_count(sites) == 1

    clock.advance(60)
    report(sites, node, uploads_synced_count=3)

    with sites.primary.main_engine.connect() as conn:
        points = history_since(conn, clock.now() - timedelta(hours=1))[node]
    assert [p.value("uploads_synced_count") for p in points] == [1, 3]


def test_the_primarys_own_status_is_recorded_too(sites: SitePair, clock: FrozenClock) -> None:
    values = {"geo_node_id": sites.primary_node.id, "uploads_count": 4, "uploads_synced_count": 4}
    own = NodeStatus(values, clock.now())

    store_own_status(sites.primary, own)

    with sites.primary.main_engine.connect() as conn:
        points = history_since(conn, clock.now() - timedelta(minutes=1))
    assert points[sites.primary_node.id][0].value("uploads_count") == 4


def test_only_integer_counts_of_the_charted_fields_are_kept() -> None:
    values = {
        "geo_node_id": 2,
        "health": "Healthy",
        "uploads_synced_count": 3,
        "uploads_failed_count": None,
        "uploads_synced_in_percentage": 50.0,
        "uploads_checksum_total_count": 9,
        "package_files_synced_count": 1,
        "package_files_verification_failed_count": 2,
        "bulk_jobs_failed_count": 5,
        "uploads_verified_count": True,
    }

    assert history_counts(values) == {
        "package_files_synced_count": 1,
        "package_files_verification_failed_count": 2,
        "uploads_synced_count": 3,
    }


def test_rows_past_the_retention_are_pruned_in_batches(sites: SitePair, clock: FrozenClock) -> None:
    node = sites.secondary_node.id
    for _ in range(5):
        report(sites, node, uploads_synced_count=1)
        clock.advance(60)
    clock.advance(timedelta(hours=24) - timedelta(minutes=2))
    # Now the two newest rows are within 24 hours, the three oldest are not.
    loop = StatusHistoryPruningLoop(sites.primary, limit=2)

    assert loop.run_once() == 0.0
    assert row_count(sites) == 3
    assert loop.run_once() == PRUNE_INTERVAL
    assert row_count(sites) == 2
    assert loop.run_once() == PRUNE_INTERVAL
    assert row_count(sites) == 2


def test_pruning_runs_only_on_the_primary(sites: SitePair) -> None:
    assert StatusHistoryPruningLoop(sites.secondary).run_once() == PRUNE_INTERVAL
    assert StatusHistoryPruningLoop in ROLE_LOOPS["primary"]()


def test_a_secondary_reads_the_history_from_the_primarys_main_database(
    sites: SitePair, clock: FrozenClock
) -> None:
    report(sites, sites.secondary_node.id, uploads_synced_count=6)

    with sites.secondary.main_engine.connect() as conn:
        points = history_since(conn, clock.now() - timedelta(hours=1))

    assert points[sites.secondary_node.id][0].value("uploads_synced_count") == 6
