"""The consistency sweep against real sites: backfill of a late secondary without a single
event, orphans removed with their files, selective sync narrowed and widened.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from geosync.clock import FrozenClock
from geosync.db.tables import geo_event_log_state, geo_events
from geosync.demo.models import PackageFile, Snippet, Upload
from geosync.demo.replicators import PackageFileReplicator, SnippetReplicator, UploadReplicator
from geosync.flags import set_flag
from geosync.nodes import Node, NodeStore
from geosync.primary.pruning import prune_event_log
from geosync.registry import Registry
from geosync.replicator import Replicator
from geosync.secondary.consistency import ConsistencySweep, ConsistencySweepLoop
from geosync.secondary.scheduler import SchedulerLoop, StuckSweepLoop
from geosync.states import SyncState, VerificationState
from geosync.testing import DatabaseFactory, SitePair, build_site_pair
from geosync.testing.workers import primary_worker, run_worker, secondary_worker, wait_for
from geosync.verification import primary_verifiable
from geosync.worker import Worker
from tests import gitutil
from tests.conftest import DEMO_REPLICATORS

BLOB_TYPES: list[type[Replicator]] = [UploadReplicator, PackageFileReplicator]


# -- building data on the primary ---------------------------------------------------------------


def create_uploads(sites: SitePair, count: int, namespace: int = 1, tag: str = "u") -> list[int]:
    """`count` uploads with tiny distinct files, made through the ORM (events if a secondary
    exists, none before)."""
    storage = sites.primary.settings.blob_storage("uploads")
    with sites.primary.session() as session:
        records = [Upload(path="", namespace_id=namespace) for _ in range(count)]
        session.add_all(records)
        session.flush()
        for record in records:
            record.path = f"{tag}/{record.id}.bin"
            (storage / tag).mkdir(parents=True, exist_ok=True)
            (storage / record.path).write_bytes(f"upload {record.id}".encode())
        session.commit()
        return [int(r.id) for r in records]


def create_packages(sites: SitePair, count: int, namespace: int = 1) -> list[int]:
    """`count` package files with tiny files at their derived paths."""
    with sites.primary.session() as session:
        records = [PackageFile(file_name="pkg.tgz", namespace_id=namespace) for _ in range(count)]
        session.add_all(records)
        session.flush()
        for record in records:
            path = PackageFileReplicator(record, geo=sites.primary).file_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"package {record.id}".encode())
        session.commit()
        return [int(r.id) for r in records]


def create_snippets(sites: SitePair, count: int, namespace: int = 1) -> list[int]:
    """`count` snippets, each a bare repository with one real commit on `main`."""
    root = sites.primary.settings.repository_storage_root
    assert root is not None
    with sites.primary.session() as session:
        records = [Snippet(title="s", namespace_id=namespace) for _ in range(count)]
        session.add_all(records)
        session.flush()
        for record in records:
            repo = gitutil.make_bare(root / record.disk_path)
            gitutil.seed_branches(repo, [f"main-{record.id}"])
        session.commit()
        return [int(r.id) for r in records]


def register_secondary(sites: SitePair, **settings: Any) -> Node:
    """Register the secondary's node on the primary (a secondary added late)."""
    with sites.primary.main() as conn:
        return NodeStore(sites.primary, conn).add("secondary", "http://127.0.0.1:2/", **settings)


def select_namespaces(sites: SitePair, namespaces: list[int] | None) -> Node:
    """What `geosync node update` does: change the secondary's selective sync."""
    with sites.primary.main() as conn:
        store = NodeStore(sites.primary, conn)
        node = store.find("secondary")
        assert node is not None
        if namespaces is None:
            return store.update(node.id, selective_sync_type=None, selective_sync_namespace_ids=[])
        return store.update(
            node.id, selective_sync_type="namespaces", selective_sync_namespace_ids=namespaces
        )


# -- reading the secondary ----------------------------------------------------------------------


def registry_rows(sites: SitePair, replicator: type[Replicator]) -> dict[int, tuple[int, int]]:
    """Model id -> (sync state, verification state) of every registry row."""
    registry = Registry(sites.secondary, replicator)
    c = registry.table.c
    with sites.secondary.tracking_engine.connect() as conn:
        rows = conn.execute(select(registry.key, c.state, c.verification_state)).all()
    return {int(k): (int(s), int(v)) for k, s, v in rows}


def all_synced_and_verified(sites: SitePair, expected: dict[type[Replicator], list[int]]) -> bool:
    """Every expected id has a registry that is synced and verified, and nothing else exists."""
    done = (SyncState.SYNCED, VerificationState.SUCCEEDED)
    return all(
        registry_rows(sites, replicator) == dict.fromkeys(ids, done)
        for replicator, ids in expected.items()
    )


def done_count(sites: SitePair) -> int:
    """How many registries, over every type, are synced and verified (one cheap count each)."""
    done = 0
    with sites.secondary.tracking_engine.connect() as conn:
        for replicator in DEMO_REPLICATORS:
            c = Registry(sites.secondary, replicator).table.c
            done += conn.execute(
                select(func.count()).where(
                    c.state == SyncState.SYNCED,
                    c.verification_state == VerificationState.SUCCEEDED,
                )
            ).scalar_one()
    return done


def copy_of(sites: SitePair, replicator: type[Replicator], record_id: int) -> Path:
    """Where the secondary keeps its copy of one record."""
    record = sites.primary.load_record(replicator.model, record_id)
    assert record is not None
    bound = replicator(record, geo=sites.secondary)
    if replicator is SnippetReplicator:
        return bound.repository_dir()  # type: ignore[attr-defined,no-any-return]
    return bound.file_path()  # type: ignore[attr-defined,no-any-return]


def sweep_pass(sites: SitePair) -> int:
    """One complete sweep pass on the secondary; returns how many rows it created or removed."""
    node = sites.secondary.current_node()
    assert node is not None
    results = ConsistencySweep(sites.secondary).run_pass(node)
    return sum(r.created + r.removed for r in results)


@pytest.fixture
def late_sites(tmp_path: Path, databases: DatabaseFactory) -> Iterator[SitePair]:
    """A primary whose secondary is not registered yet (so no event is ever written)."""
    pair = build_site_pair(
        tmp_path / "sites",
        DEMO_REPLICATORS,
        databases,
        register_secondary=False,
        backoff_scale=0.01,
        poll_interval=0.2,
    )
    yield pair
    pair.dispose()


@pytest.fixture
def frozen_sites(
    tmp_path: Path, databases: DatabaseFactory, clock: FrozenClock
) -> Iterator[SitePair]:
    """A registered pair on a frozen clock (days can pass), with fast worker polling."""
    pair = build_site_pair(
        tmp_path / "sites", DEMO_REPLICATORS, databases, clock=clock, poll_interval=0.2
    )
    yield pair
    pair.dispose()


def sweeping_worker(sites: SitePair) -> Worker:
    """The secondary's sweep and sync loops, without the log cursor."""
    return Worker(sites.secondary, [ConsistencySweepLoop, SchedulerLoop, StuckSweepLoop])


# -- backfill -----------------------------------------------------------------------------------


def test_late_secondary_is_backfilled_complete_and_verified_without_any_event(
    late_sites: SitePair,
) -> None:
    sites = late_sites
    expected = {
        UploadReplicator: create_uploads(sites, 1500),
        PackageFileReplicator: create_packages(sites, 500),
        SnippetReplicator: create_snippets(sites, 20),
    }
    total = sum(len(ids) for ids in expected.values())
    with primary_worker(sites):  # the primary's checksums, so copies are verified on arrival
        wait_for(lambda: checksummed(sites) == total, timeout=120, what="primary checksums")
    register_secondary(sites, files_max_capacity=20, repos_max_capacity=10)

    with sites.primary_served(), run_worker(sweeping_worker(sites)):
        wait_for(lambda: done_count(sites) == total, timeout=240, what="backfill done")
    assert all_synced_and_verified(sites, expected)

    with sites.primary.main_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(geo_events)).scalar_one() == 0
    with sites.secondary.tracking_engine.connect() as conn:
        assert conn.execute(select(geo_event_log_state)).first() is None  # no cursor ever ran
    for replicator in BLOB_TYPES:
        for record_id in expected[replicator][::97]:
            record = sites.primary.load_record(replicator.model, record_id)
            primary_copy = replicator(record, geo=sites.primary).file_path()  # type: ignore[attr-defined]
            assert copy_of(sites, replicator, record_id).read_bytes() == primary_copy.read_bytes()
    for snippet_id in expected[SnippetReplicator]:
        mirror = copy_of(sites, SnippetReplicator, snippet_id)
        assert gitutil.for_each_ref(mirror) == gitutil.for_each_ref(primary_repo(sites, snippet_id))


def checksummed(sites: SitePair) -> int:
    """How many records the primary has checksummed, over every type."""
    total = 0
    with sites.primary.main_engine.connect() as conn:
        for replicator in DEMO_REPLICATORS:
            counts = primary_verifiable(sites.primary, replicator).count_by_state(conn)
            total += counts[VerificationState.SUCCEEDED]
    return total


def primary_repo(sites: SitePair, snippet_id: int) -> Path:
    """The primary's bare repository of one snippet."""
    record: Snippet | None = sites.primary.load_record(Snippet, snippet_id)
    assert record is not None and sites.primary.settings.repository_storage_root is not None
    return sites.primary.settings.repository_storage_root / record.disk_path


def test_sweep_walks_sparse_ids_in_ranges_and_wraps_around(sites: SitePair) -> None:
    ids = create_uploads(sites, 30)
    with sites.primary.session() as session:  # leave holes in the id space
        for record_id in ids[5:20]:
            session.delete(session.get(Upload, record_id))
        session.commit()
    remaining = ids[:5] + ids[20:]
    node = sites.secondary.current_node()
    assert node is not None
    sweep = ConsistencySweep(sites.secondary, range_size=4)

    first = sweep.run_pass(node)
    second = sweep.run_pass(node)

    assert sorted(registry_rows(sites, UploadReplicator)) == remaining
    assert sum(r.created for r in first) == len(remaining)
    # Ranges of 4 from the lowest id, jumping over the hole to the next id that exists.
    lows = [r.low for r in first if r.replicable_name == "upload"]
    assert lows == [ids[0], ids[0] + 4, ids[20], ids[20] + 4, ids[20] + 8]
    assert sum(r.created + r.removed for r in second) == 0  # a second pass finds nothing to do


def test_rows_a_running_sync_holds_are_left_for_the_next_pass(sites: SitePair) -> None:
    [kept, busy] = create_uploads(sites, 2)
    registry = Registry(sites.secondary, UploadReplicator)
    assert sweep_pass(sites) == 2
    with sites.secondary.tracking() as conn:
        registry.start(conn, busy)
    with sites.primary.session() as session:
        for record_id in (kept, busy):
            session.delete(session.get(Upload, record_id))
        session.commit()

    assert sweep_pass(sites) == 1
    assert list(registry_rows(sites, UploadReplicator)) == [busy]


# -- orphans --------------------------------------------------------------------------------------


def test_orphans_of_a_secondary_that_was_down_while_events_were_pruned_are_removed_with_files(
    frozen_sites: SitePair, clock: FrozenClock
) -> None:
    sites = frozen_sites
    uploads = create_uploads(sites, 12)
    snippets = create_snippets(sites, 3)
    with sites.primary_served(), secondary_worker(sites):
        wait_for(
            lambda: all(
                registry_rows(sites, r).keys() == set(ids)
                and {s for s, _ in registry_rows(sites, r).values()} == {SyncState.SYNCED}
                for r, ids in ((UploadReplicator, uploads), (SnippetReplicator, snippets))
            ),
            timeout=60,
            what="initial sync",
        )
    gone_uploads, gone_snippet = uploads[:5], snippets[0]
    gone_copies = [copy_of(sites, UploadReplicator, i) for i in gone_uploads]
    gone_copies.append(copy_of(sites, SnippetReplicator, gone_snippet))
    kept_copies = [copy_of(sites, UploadReplicator, i) for i in uploads[5:]]
    assert all(path.exists() for path in gone_copies + kept_copies)

    # The secondary is down: the records are deleted and, a week later, their events pruned.
    with sites.primary.session() as session:
        for record_id in gone_uploads:
            session.delete(session.get(Upload, record_id))
        session.delete(session.get(Snippet, gone_snippet))
        session.commit()
    clock.advance(timedelta(days=8))
    assert prune_event_log(sites.primary).deleted > 0
    with sites.primary.main_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(geo_events)).scalar_one() == 0

    assert sweep_pass(sites) == len(gone_uploads) + 1

    assert sorted(registry_rows(sites, UploadReplicator)) == uploads[5:]
    assert sorted(registry_rows(sites, SnippetReplicator)) == snippets[1:]
    assert not any(path.exists() for path in gone_copies)
    assert all(path.exists() for path in kept_copies)


# -- selective sync -------------------------------------------------------------------------------


def test_narrowing_removes_exactly_the_out_of_scope_copies_and_widening_brings_them_back(
    frozen_sites: SitePair,
) -> None:
    sites = frozen_sites
    items = {
        (UploadReplicator, 1): create_uploads(sites, 6, namespace=1, tag="one"),
        (UploadReplicator, 2): create_uploads(sites, 4, namespace=2, tag="two"),
        (PackageFileReplicator, 1): create_packages(sites, 2, namespace=1),
        (PackageFileReplicator, 2): create_packages(sites, 3, namespace=2),
        (SnippetReplicator, 1): create_snippets(sites, 1, namespace=1),
        (SnippetReplicator, 2): create_snippets(sites, 2, namespace=2),
    }
    everything = {
        r: [i for (rr, _), ids in items.items() if rr is r for i in ids] for r in BLOB_TYPES
    }
    everything[SnippetReplicator] = items[(SnippetReplicator, 1)] + items[(SnippetReplicator, 2)]
    with sites.primary_served(), secondary_worker(sites):
        wait_for(lambda: synced_exactly(sites, everything), timeout=60, what="initial sync")
    copies = {key: [copy_of(sites, key[0], i) for i in ids] for key, ids in items.items()}
    kept_mtimes = [p.stat().st_mtime_ns for (_, ns), ps in copies.items() if ns == 1 for p in ps]

    select_namespaces(sites, [1])
    removed = sweep_pass(sites)

    in_scope = {
        r: [i for (rr, ns), ids in items.items() if rr is r and ns == 1 for i in ids]
        for r in DEMO_REPLICATORS
    }
    assert removed == sum(len(ids) for (_, ns), ids in items.items() if ns == 2)
    assert synced_exactly(sites, in_scope)
    for (_, namespace), paths in copies.items():
        assert all(path.exists() == (namespace == 1) for path in paths)
    assert [p.stat().st_mtime_ns for (_, ns), ps in copies.items() if ns == 1 for p in ps] == (
        kept_mtimes
    )

    select_namespaces(sites, None)
    assert sweep_pass(sites) == removed  # the same items come back as pending rows
    with (
        sites.primary_served(),
        run_worker(Worker(sites.secondary, [SchedulerLoop, StuckSweepLoop])),
    ):
        wait_for(lambda: synced_exactly(sites, everything), timeout=60, what="widened sync")
    assert all(path.exists() for paths in copies.values() for path in paths)


def synced_exactly(sites: SitePair, expected: dict[type[Replicator], list[int]]) -> bool:
    """The registries hold exactly `expected`, every row synced."""
    for replicator, ids in expected.items():
        rows = registry_rows(sites, replicator)
        if sorted(rows) != sorted(ids) or any(s != SyncState.SYNCED for s, _ in rows.values()):
            return False
    return True


def test_flag_off_keeps_existing_rows_and_creates_none(sites: SitePair) -> None:
    first = create_uploads(sites, 3)
    assert sweep_pass(sites) == 3
    with sites.primary.main() as conn:
        set_flag(
            conn, sites.primary.catalog, "geo_upload_replication", False, sites.primary.clock.now()
        )
    create_uploads(sites, 2)
    with sites.primary.session() as session:
        session.delete(session.get(Upload, first[0]))
        session.commit()

    assert sweep_pass(sites) == 0
    assert sorted(registry_rows(sites, UploadReplicator)) == first
