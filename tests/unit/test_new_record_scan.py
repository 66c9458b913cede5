"""The pacing of the primary's new-record scan: its floor trails the ids by a grace period, and
scans that read much of the table are spaced out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from geosync.primary.backfill import NEW_RECORDS_GRACE, NewRecordScan

T0 = datetime(2026, 1, 1, tzinfo=UTC)
EVERY = timedelta(seconds=2)


def test_the_floor_is_the_highest_id_seen_a_grace_period_ago() -> None:
    scan = NewRecordScan()
    scan.begin(T0, 100)
    assert scan.cursor == 0
    scan.begin(T0 + timedelta(seconds=30), 150)
    assert scan.cursor == 0  # nothing seen a full grace period ago yet
    scan.begin(T0 + NEW_RECORDS_GRACE + timedelta(seconds=10), 300)
    assert (scan.floor, scan.cursor) == (100, 100)
    scan.begin(T0 + NEW_RECORDS_GRACE + timedelta(seconds=31), 320)
    assert scan.floor == 150
    assert len(scan.marks) == 3  # older marks are dropped


def test_a_new_scan_waits_for_the_poll_interval_and_ten_times_the_last_scan() -> None:
    scan = NewRecordScan()
    assert scan.due(T0, EVERY)
    scan.begin(T0, 10)
    assert not scan.due(T0 + timedelta(seconds=1), EVERY)
    assert scan.due(T0 + EVERY, EVERY)
    scan.seconds = 0.6  # a scan that read the whole table
    assert not scan.due(T0 + timedelta(seconds=5), EVERY)
    assert scan.due(T0 + timedelta(seconds=6), EVERY)


def test_a_clock_set_back_does_not_stop_the_scan() -> None:
    scan = NewRecordScan()
    scan.begin(T0, 10)
    assert scan.due(T0 - timedelta(hours=1), EVERY)
