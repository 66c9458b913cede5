"""Attempt history: appended in groups, the newest `KEEP` per item kept, forgotten with the
item's registry row."""

from __future__ import annotations

from datetime import timedelta

from geosync.attempts import KEEP, Attempt, recent_attempts, record_attempt, record_attempts
from geosync.demo.replicators import UploadReplicator
from geosync.registry import Registry
from geosync.secondary.consistency import delete_unused
from geosync.secondary.handlers import delete_registry
from geosync.testing import SitePair


def attempt(sites: SitePair, model_record_id: int, n: int, name: str = "upload") -> Attempt:
    """The `n`-th sync attempt of one item."""
    start = sites.secondary.clock.now() + timedelta(seconds=n)
    return Attempt(name, model_record_id, "sync", start, start, f"outcome-{n}", bytes=n)


def test_a_group_keeps_the_newest_of_each_item_and_leaves_others_alone(sites: SitePair) -> None:
    with sites.secondary.tracking() as conn:
        record_attempts(conn, [attempt(sites, 9, n, "package_file") for n in range(3)])
        for first in range(0, KEEP + 5, 10):
            group = [attempt(sites, i, n) for n in range(first, first + 10) for i in (1, 2)]
            record_attempts(conn, group)
    with sites.secondary.tracking() as conn:
        one = recent_attempts(conn, "upload", 1, limit=100)
        two = recent_attempts(conn, "upload", 2, limit=100)
        other = recent_attempts(conn, "package_file", 9, limit=100)
    assert [a.bytes for a in one] == list(range(KEEP + 9, 9, -1))
    assert [a.bytes for a in two] == [a.bytes for a in one]
    assert [a.outcome for a in other] == ["outcome-2", "outcome-1", "outcome-0"]


def test_a_new_item_with_more_than_keep_attempts_in_one_group_keeps_the_newest(
    sites: SitePair,
) -> None:
    with sites.secondary.tracking() as conn:
        record_attempts(conn, [attempt(sites, 5, n) for n in range(KEEP + 3)])
    with sites.secondary.tracking() as conn:
        kept = recent_attempts(conn, "upload", 5, limit=100)
    assert [a.bytes for a in kept] == list(range(KEEP + 2, 2, -1))


def test_one_attempt_at_a_time_keeps_the_newest(sites: SitePair) -> None:
    with sites.secondary.tracking() as conn:
        for n in range(KEEP + 2):
            record_attempt(conn, attempt(sites, 5, n))
        kept = recent_attempts(conn, "upload", 5, limit=100)
    assert len(kept) == KEEP
    assert kept[0].bytes == KEEP + 1 and kept[-1].bytes == 2


def test_an_empty_group_writes_nothing(sites: SitePair) -> None:
    with sites.secondary.tracking() as conn:
        record_attempts(conn, [])
        assert recent_attempts(conn, "upload", 1) == []


def test_deleting_a_registry_row_forgets_its_history_and_only_its_own(sites: SitePair) -> None:
    geo = sites.secondary
    uploads = Registry(geo, UploadReplicator)
    with geo.tracking() as conn:
        uploads.insert_pending(conn, [1, 2])
        record_attempts(conn, [attempt(sites, i, 0) for i in (1, 2)])
        record_attempt(conn, attempt(sites, 1, 0, "package_file"))
        delete_registry(conn, geo, UploadReplicator, 1)  # a `deleted` event
    with geo.tracking() as conn:
        assert recent_attempts(conn, "upload", 1) == []
        assert len(recent_attempts(conn, "upload", 2)) == 1
        assert len(recent_attempts(conn, "package_file", 1)) == 1


def test_the_consistency_sweep_forgets_the_history_of_the_rows_it_deletes(
    sites: SitePair,
) -> None:
    geo = sites.secondary
    uploads = Registry(geo, UploadReplicator)
    with geo.tracking() as conn:
        uploads.insert_pending(conn, [1, 2, 3])
        uploads.start(conn, 2)  # being synced: left for the next pass, history and all
        record_attempts(conn, [attempt(sites, i, 0) for i in (1, 2, 3)])
        assert delete_unused(conn, uploads, [1, 2]) == [None]
    with geo.tracking() as conn:
        assert [i for i in (1, 2, 3) if recent_attempts(conn, "upload", i)] == [2, 3]
