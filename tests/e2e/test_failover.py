"""Failover on the production topology: a PostgreSQL primary and its streaming standby.

The secondary reads the primary's main database through the standby. The primary fails with
data the secondary never synced; the plan names it; a promotion is refused for it, then forced:
the standby is promoted with `pg_promote()`, the secondary becomes the primary and writes. The
old primary comes back as a secondary, is re-attached with skip-download and catches up, having
transferred only what it lacked. A planned failover makes the old primary read-only and waits
for a clean plan instead.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from geosync.app import Geo
from geosync.db.schema import upgrade
from geosync.db.tables import geo_sync_attempts
from geosync.demo.models import Snippet
from geosync.demo.replicators import SnippetReplicator, UploadReplicator
from geosync.errors import PromotionRefused
from geosync.nodes import NodeStore
from geosync.promotion import promote
from geosync.promotion_plan import promotion_plan
from geosync.reattach import reattach
from geosync.registry import Registry
from geosync.replicator import Replicator
from geosync.states import SyncState
from geosync.testing import DatabaseFactory, SitePair
from geosync.testing.pg_standby import StandbyPair, missing_reason, stop_cluster, streaming_standby
from geosync.testing.sites import site_settings
from geosync.testing.workers import checksum_on_primary, secondary_worker, wait_for
from tests import gitutil
from tests import verifyutil as vu

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPLICATORS = [UploadReplicator, SnippetReplicator]
#: Tracking databases live on the test server: the pair's own clusters are stopped and promoted.
ON_POSTGRES = pytest.mark.parametrize("backend", ["postgres"])
FAST = {"backoff_scale": 0.01, "poll_interval": 0.2}


@pytest.fixture
def standby() -> Iterator[StandbyPair]:
    """A fresh primary + standby pair (about 3 s to make)."""
    reason = missing_reason()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"the failover tests must run in CI: {reason}")
        pytest.skip(reason)
    with streaming_standby() as pair:
        pair.primary.scalar("CREATE DATABASE geo_main")
        yield pair


def make_sites(pair: StandbyPair, databases: DatabaseFactory, root: Path) -> SitePair:
    """Site "primary" on the pair's primary, site "secondary" reading the standby."""
    secret = secrets.token_urlsafe(32)
    main = pair.primary.url("geo_main")
    primary = Geo(
        site_settings("primary", root, REPLICATORS, main, None, secret, **FAST), REPLICATORS
    )
    for replicator in primary.catalog:
        replicator.model.__table__.create(primary.main_engine, checkfirst=True)
    upgrade(primary)
    with primary.main() as conn:
        store = NodeStore(primary, conn)
        primary_node = store.add("primary", "http://127.0.0.1:1/", primary=True)
        secondary_node = store.add("secondary", "http://127.0.0.1:2/")
    pair.wait_for_replay()
    secondary = Geo(
        site_settings(
            "secondary",
            root,
            REPLICATORS,
            pair.standby.url("geo_main"),
            databases.url("tracking_secondary"),
            secret,
            **FAST,
        ),
        REPLICATORS,
    )
    upgrade(secondary)
    return SitePair(primary, secondary, primary_node, secondary_node, root)


def repositories(geo: Geo) -> Path:
    root = geo.settings.repository_storage_root
    assert root is not None
    return root


def add_snippet(geo: Geo) -> int:
    record_id = vu.add_snippet(geo)
    repo = gitutil.make_bare(repositories(geo) / Snippet(id=record_id).disk_path)
    gitutil.seed_branches(repo, ["main", "topic"])
    return record_id


def all_synced(geo: Geo, replicator: type[Replicator], count: int) -> bool:
    with geo.tracking_engine.connect() as conn:
        states = Registry(geo, replicator).count_by_state(conn)
    return states[SyncState.SYNCED] == count


def sync_everything(sites: SitePair, uploads: int, snippets: int) -> None:
    checksum_on_primary(sites)
    with sites.primary_served(), secondary_worker(sites, verification=True):
        wait_for(
            lambda: (
                all_synced(sites.secondary, UploadReplicator, uploads)
                and all_synced(sites.secondary, SnippetReplicator, snippets)
            ),
            what="the secondary synced everything",
        )


def as_primary(geo: Geo) -> Geo:
    """The promoted site as it runs after the operator removed its tracking database."""
    settings = geo.settings.model_copy(update={"tracking_database_url": None})
    return Geo(settings, REPLICATORS)


def as_secondary(geo: Geo, main_url: str, tracking_url: str) -> Geo:
    """The old primary brought back as a secondary of the new primary's database."""
    update = {"main_database_url": main_url, "tracking_database_url": tracking_url}
    return Geo(geo.settings.model_copy(update=update), REPLICATORS)


@ON_POSTGRES
def test_failover_to_the_standby_and_back_with_skip_download(
    standby: StandbyPair, databases: DatabaseFactory, tmp_path: Path
) -> None:
    sites = make_sites(standby, databases, tmp_path / "sites")
    kept = [vu.add_upload(sites.primary, b"kept %d" % i) for i in range(4)]
    snippet = add_snippet(sites.primary)
    sync_everything(sites, uploads=4, snippets=1)
    unsynced = [vu.add_upload(sites.primary, b"never synced %d" % i) for i in range(2)]
    standby.wait_for_replay()
    stop_cluster(standby.primary)  # the primary fails

    plan = promotion_plan(sites.secondary)
    uploads = next(t for t in plan.types if t.replicable_name == "upload")
    assert not plan.safe and plan.database.kind == "standby"
    assert (uploads.synced_count, uploads.not_synced_count, uploads.unread_event_count) == (4, 2, 2)
    with pytest.raises(PromotionRefused, match="uploads: 2 not synced"):
        promote(sites.secondary)

    done = promote(sites.secondary, force=True)
    assert "main database: PostgreSQL standby promoted (pg_promote), now writable" in done.steps
    assert promote(sites.secondary).steps[-1].endswith("nothing to promote")  # idempotent
    new_primary = as_primary(sites.secondary)
    with new_primary.main() as conn:
        store = NodeStore(new_primary, conn)
        old = store.find("primary")
        assert old is not None and not old.primary and not old.enabled  # it did not answer
        store.update(old.id, enabled=True)  # the runbook: the operator enables it to re-attach
    fresh = vu.add_upload(new_primary, b"written on the new primary")

    old_primary = as_secondary(
        sites.primary, standby.standby.url("geo_main"), databases.url("tracking_old_primary")
    )
    upgrade(old_primary)
    back = SitePair(new_primary, old_primary, sites.secondary_node, sites.primary_node, sites.root)
    checksum_on_primary(back)
    report = reattach(old_primary)
    seeded = {t.replicable_name_plural: t for t in report.types}
    # the two never synced exist on the old primary only: the new primary cannot checksum them
    assert (seeded["uploads"].synced_without_transfer, seeded["uploads"].queued_for_transfer) == (
        4,
        3,
    )
    assert seeded["snippets"].synced_without_transfer == 1

    served_paths: list[str] = []
    with back.primary_served(wrap=_recording(served_paths)), secondary_worker(back):
        wait_for(
            lambda: all_synced(old_primary, UploadReplicator, 5), what="the old primary caught up"
        )
    with old_primary.tracking_engine.connect() as conn:
        attempts = conn.execute(select(geo_sync_attempts)).all()
        registry = Registry(old_primary, UploadReplicator)
        lost = {i: registry.require(conn, i).sync_state for i in unsynced}
    transferred = [a for a in attempts if a.outcome == "synced" and a.bytes]
    assert [(a.replicable_name, a.model_record_id) for a in transferred] == [("upload", fresh)]
    skipped = {(a.replicable_name, a.model_record_id) for a in attempts if a.bytes is None}
    assert skipped >= {("upload", i) for i in kept} | {("snippet", snippet)}
    assert not [p for p in served_paths if "/repositories/" in p]  # no git fetch at all
    assert set(lost.values()) <= {SyncState.PENDING, SyncState.STARTED, SyncState.FAILED}
    for geo in (old_primary, new_primary, sites.secondary, sites.primary):
        geo.dispose()


@ON_POSTGRES
def test_a_planned_failover_makes_the_old_primary_read_only_and_waits_for_a_clean_plan(
    standby: StandbyPair, databases: DatabaseFactory, tmp_path: Path
) -> None:
    sites = make_sites(standby, databases, tmp_path / "sites")
    vu.add_upload(sites.primary, b"before")
    sync_everything(sites, uploads=1, snippets=0)
    vu.add_upload(sites.primary, b"late")
    checksum_on_primary(sites)
    waits: list[int] = []

    with sites.primary_served(), secondary_worker(sites, verification=True):
        done = promote(
            sites.secondary,
            planned=True,
            primary_database_url=standby.primary.url("geo_main"),
            timeout=30,
            progress=lambda plan: waits.append(len(plan.losses())),
        )

    assert waits[0] > 0 and waits[-1] == 0
    assert done.steps[0].startswith("old primary: database ") and "read-only" in done.steps[0]
    assert "plan: safe, nothing would be lost" in done.steps
    sites.primary.dispose()  # the read-only default holds for every new session
    with pytest.raises(DBAPIError, match="read-only transaction"):
        vu.add_upload(sites.primary, b"refused")
    for geo in (sites.secondary, sites.primary):
        geo.dispose()


def _recording(paths: list[str]) -> Callable[[Any], Any]:
    """An ASGI wrapper that notes the path of every HTTP request the app serves."""

    def wrap(app: Any) -> Any:
        async def recorded(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                paths.append(scope["path"])
            await app(scope, receive, send)

        return recorded

    return wrap
