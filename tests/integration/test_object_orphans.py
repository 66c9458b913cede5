"""The consistency sweep's orphan scan of a secondary's object-store storage (a real moto S3
server on loopback): one page per round, orphans removed once old, known objects kept."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from geosync.clock import FrozenClock
from geosync.demo.models import Upload
from geosync.demo.replicators import PackageFileReplicator, UploadReplicator
from geosync.explain import explain
from geosync.flags import set_flag
from geosync.registry import Registry
from geosync.secondary.consistency import ConsistencySweep
from geosync.secondary.orphans import ORPHAN_GRACE, OrphanPage
from geosync.testing import DatabaseFactory, SitePair, build_site_pair
from geosync.testing.object_storage import moto_endpoint, new_bucket


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_endpoint() as url:
        yield url


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime.now(UTC))  # the objects' LastModified is the server's time


@pytest.fixture
def s3_sites(
    tmp_path: Path, databases: DatabaseFactory, s3_endpoint: str, clock: FrozenClock
) -> Iterator[SitePair]:
    pair = build_site_pair(
        tmp_path / "sites",
        [UploadReplicator],
        databases,
        clock=clock,
        secondary_storages={"uploads": new_bucket(s3_endpoint)},
    )
    yield pair
    pair.dispose()


def create_uploads(sites: SitePair, count: int) -> list[int]:
    with sites.primary.session() as session:
        records = [Upload(path=f"u/{n}.bin", namespace_id=1) for n in range(count)]
        session.add_all(records)
        session.commit()
        return [int(r.id) for r in records]


def mark_synced(sites: SitePair, record_id: int, key: str) -> None:
    """A synced row whose copy is the object `key` (what a sync leaves)."""
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        registry.synced(conn, record_id, registry.start(conn, record_id), local_path=key)


def scan_to_the_end(sites: SitePair, sweep: ConsistencySweep) -> list[OrphanPage]:
    node = sites.secondary.current_node()
    assert node is not None
    pages: list[OrphanPage] = []
    for _ in range(50):  # bounded: a few pages are expected
        sweep.step(node)
        pages.extend(sweep.orphan_pages)
        if pages and pages[-1].after is None:
            return pages
    raise AssertionError("the orphan scan never reached the end of the listing")


def test_orphans_are_listed_in_pages_and_removed_once_old(
    s3_sites: SitePair, clock: FrozenClock
) -> None:
    sites = s3_sites
    store = UploadReplicator.store_of(sites.secondary.settings)
    synced, waiting = create_uploads(sites, 3), create_uploads(sites, 1)[0]
    ConsistencySweep(sites.secondary).run_pass(sites.secondary.current_node())  # type: ignore[arg-type]
    for record_id in synced:
        store.write(f"copies/{record_id}.bin", [b"copy"])
        mark_synced(sites, record_id, f"copies/{record_id}.bin")
    explained = explain(sites.secondary, "uploads", synced[0])
    assert explained.copy_location == f"object copies/{synced[0]}.bin in {store.describe()}"
    assert store.describe().startswith("s3://") and " at http://127.0.0.1:" in store.describe()
    store.write("u/0.bin", [b"seeded"])  # where the never-synced record's first sync writes
    orphans = [f"stray/{n}.bin" for n in range(7)]
    for key in orphans:
        store.write(key, [b"stray"])

    young = scan_to_the_end(sites, ConsistencySweep(sites.secondary, orphan_page=3))
    assert len(young) == 4  # 11 objects, 3 a page
    assert sum(p.listed for p in young) == 11
    assert sum(p.orphans for p in young) == 7 and sum(p.removed for p in young) == 0

    clock.advance(ORPHAN_GRACE + timedelta(minutes=1))
    old = scan_to_the_end(sites, ConsistencySweep(sites.secondary, orphan_page=3))

    assert sum(p.removed for p in old) == 7
    assert not any(store.exists(key) for key in orphans)
    assert all(store.exists(f"copies/{i}.bin") for i in synced)
    assert store.exists("u/0.bin")  # upload `waiting` has no copy yet: its object is kept
    with sites.secondary.tracking_engine.connect() as conn:
        row = Registry(sites.secondary, UploadReplicator).get(conn, waiting)
    assert row is not None and row.local_path is None


def test_a_storage_whose_type_is_turned_off_is_not_scanned(
    s3_sites: SitePair, clock: FrozenClock
) -> None:
    sites = s3_sites
    store = UploadReplicator.store_of(sites.secondary.settings)
    store.write("stray/0.bin", [b"stray"])
    with sites.primary.main() as conn:
        set_flag(
            conn, sites.primary.catalog, UploadReplicator.replication_flag_name, False, clock.now()
        )
    clock.advance(ORPHAN_GRACE * 2)
    node = sites.secondary.current_node()
    assert node is not None

    sweep = ConsistencySweep(sites.secondary, orphan_page=3)
    sweep.step(node)

    assert sweep.orphan_pages == []
    assert store.exists("stray/0.bin")


def test_storages_sharing_a_prefix_are_not_scanned(
    tmp_path: Path, databases: DatabaseFactory, s3_endpoint: str
) -> None:
    shared = new_bucket(s3_endpoint)  # both storages at s3://bucket/blobs: each holds the other's
    pair = build_site_pair(
        tmp_path / "shared",
        [UploadReplicator, PackageFileReplicator],
        databases,
        secondary_storages={"uploads": shared, "packages": shared},
    )
    try:
        store = UploadReplicator.store_of(pair.secondary.settings)
        store.write("stray/0.bin", [b"stray"])
        node = pair.secondary.current_node()
        assert node is not None

        sweep = ConsistencySweep(pair.secondary, orphan_page=3)
        sweep.step(node)

        assert sweep.orphan_pages == []
        assert store.exists("stray/0.bin")
    finally:
        pair.dispose()
