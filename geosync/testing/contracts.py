"""Contract test suites for replicator authors (ARCHITECTURE.md §11): pytest base classes.

An application's engineer subclasses `BlobReplicatorContract` or `RepositoryReplicatorContract`
and supplies ONE fixture, ``replicator_factory``, returning a `ReplicatorFactory`: the replicator
class under test and a ``create(geo, namespace_id)`` that makes one record plus its resource on
the primary site it is given. The suite then runs the whole replication cycle for that
replicator against a real primary (served on 127.0.0.1) and a real secondary (SQLite files, real
files, real ``git``), with both sites' background loops running in threads::

    class WikiFactory:
        replicator = WikiReplicator

        def create(self, geo: Geo, namespace_id: int) -> int:
            with geo.session() as session:
                wiki = Wiki(title="Home", namespace_id=namespace_id)
                session.add(wiki)
                session.flush()
                create_bare_repository(WikiReplicator(wiki, geo=geo).repository_dir())
                session.commit()
                return wiki.id

    class TestWikiReplicator(RepositoryReplicatorContract):
        @pytest.fixture
        def replicator_factory(self) -> ReplicatorFactory:
            return WikiFactory()

Optional: override ``geosync_databases`` (a `DatabaseFactory`) to run on PostgreSQL. Selective
sync is checked only for a replicator that overrides ``replicables_for_current_secondary``; a type
without it is checked to be replicated in full instead. docs/adding-a-data-type.md is the guide.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import pytest
from sqlalchemy import select

from geosync.app import Geo
from geosync.db.tables import geo_events
from geosync.errors import UnsupportedEvent
from geosync.flags import set_flag
from geosync.nodes import NodeStore
from geosync.registry import Registry, RegistryRow
from geosync.replicator import CREATED, Replicator
from geosync.secondary.log_cursor import LogCursor
from geosync.states import SyncState, VerificationState
from geosync.strategies.blob import BlobReplicator
from geosync.strategies.repository import RepositoryReplicator
from geosync.testing.databases import DatabaseFactory
from geosync.testing.git import push_commit, repository_refs
from geosync.testing.sites import SitePair, build_site_pair
from geosync.testing.workers import primary_worker, secondary_worker, wait_for
from geosync.verification import primary_verifiable

__all__ = [
    "BlobReplicatorContract",
    "ReplicatorFactory",
    "RepositoryReplicatorContract",
]

#: The namespace `create()` is given, and the one a secondary selects in the selective sync test.
IN_SCOPE = 101
#: The namespace the selective sync test expects to stay on the primary.
OUT_OF_SCOPE = 202
TIMEOUT = 30.0


@runtime_checkable
class ReplicatorFactory(Protocol):
    """What the ``replicator_factory`` fixture returns: the replicator under test, and how to
    make one record of its model, resource included, the way the application makes them.

    Any object with these two members will do; a small class with a class attribute
    ``replicator = YourReplicator`` and a ``create`` method is the usual shape.
    """

    @property
    def replicator(self) -> type[Replicator]:
        """The replicator class under test (a `BlobReplicator` or `RepositoryReplicator`)."""
        ...

    def create(self, geo: Geo, namespace_id: int) -> int:
        """Create one record plus its resource on the primary site `geo`; return the record's id.

        The resource (the file at the replicator's ``file_path()``, or the bare repository at
        its ``repository_dir()``) must be in place before the row commits, and the row must be
        committed through ``geo.session()`` so that its `created` event is published. Put the
        record in namespace `namespace_id` if the model has namespaces; otherwise ignore it.
        The suite calls this several times per test: each call makes a new record.
        """
        ...


def declares_selective_sync(replicator: type[Replicator]) -> bool:
    """Whether `replicator` narrows what a secondary holds: it (or an application base class)
    overrides `Replicator.replicables_for_current_secondary`.
    """
    owner = next(
        cls for cls in replicator.__mro__ if "replicables_for_current_secondary" in cls.__dict__
    )
    return owner is not Replicator


class ContractKit:
    """The fixtures and helpers every contract suite shares (no tests of its own): a real
    primary and secondary cataloguing only the replicator under test, records made by the
    application's factory, and the secondary's registry row of each."""

    #: The strategy base class a replicator under this contract must subclass.
    strategy_class: ClassVar[type[Replicator]] = Replicator
    #: Whether to run the namespace selective sync test. None (the default): run it exactly
    #: when the replicator overrides `replicables_for_current_secondary`. Set False for a
    #: replicator whose selective sync is not by namespaces (by shards only, say).
    namespace_selective_sync: ClassVar[bool | None] = None
    #: Seconds each wait for replication may take before the test fails.
    timeout: ClassVar[float] = TIMEOUT

    # -- fixtures ----------------------------------------------------------------------------

    @pytest.fixture
    def geosync_databases(self, tmp_path: Path) -> Iterator[DatabaseFactory]:
        """SQLite files by default; override to hand out PostgreSQL databases instead."""
        factory = DatabaseFactory("sqlite", tmp_path / "contract-db")
        yield factory
        factory.cleanup()

    @pytest.fixture
    def contract_sites(
        self,
        tmp_path: Path,
        geosync_databases: DatabaseFactory,
        replicator_factory: ReplicatorFactory,
    ) -> Iterator[SitePair]:
        """A primary and a secondary cataloguing only the replicator under test."""
        self.check_factory(replicator_factory)
        pair = build_site_pair(
            tmp_path / "contract-sites",
            [replicator_factory.replicator],
            geosync_databases,
            **self.site_options(),
        )
        yield pair
        pair.dispose()

    def site_options(self) -> dict[str, Any]:
        """The `build_site_pair` options of this suite's sites: quick retries and polls, for
        the background loops that replicate while a test waits."""
        return {"backoff_scale": 0.01, "poll_interval": 0.1}

    def check_factory(self, factory: object) -> None:
        """Fail in one line when the fixture returns something the suite cannot use."""
        if not isinstance(factory, ReplicatorFactory):
            pytest.fail(
                "the replicator_factory fixture must return a ReplicatorFactory (an object with"
                f" `replicator` and `create(geo, namespace_id)`), not {factory!r}",
                pytrace=False,
            )
        replicator = factory.replicator
        if not (isinstance(replicator, type) and issubclass(replicator, self.strategy_class)):
            pytest.fail(
                f"{type(self).__name__} tests a {self.strategy_class.__name__} subclass;"
                f" replicator_factory.replicator is {replicator!r}",
                pytrace=False,
            )

    def selective_sync_tested(self, factory: ReplicatorFactory) -> bool:
        """Whether this suite checks namespace selective sync for the replicator."""
        if self.namespace_selective_sync is not None:
            return self.namespace_selective_sync
        return declares_selective_sync(factory.replicator)

    # -- what a copy is (strategies implement) -----------------------------------------------

    def copy_path(self, replicator: Replicator) -> Path:
        """Where `replicator`'s site keeps the resource (its strategy says)."""
        return replicator.copy_path()

    def locate(self, replicator: Replicator) -> Callable[[], bool]:
        """A check of whether `replicator`'s copy exists, at the place it is now (it goes on
        working when the record is gone)."""
        return self.copy_path(replicator).exists

    def where(self, replicator: Replicator) -> str:
        """Where `replicator`'s copy is, for a failure message."""
        return str(self.copy_path(replicator))

    def remove_resource(self, replicator: Replicator) -> None:
        """Delete the resource (the primary losing it)."""
        _remove(self.copy_path(replicator))

    def same_copy(self, on_primary: Replicator, on_secondary: Replicator) -> bool:
        """Whether the secondary's copy equals the primary's resource."""
        raise NotImplementedError

    def missing_recorded(self, row: RegistryRow) -> bool:
        """Whether `row` records a resource missing on the primary as the strategy should."""
        raise NotImplementedError

    # -- helpers -----------------------------------------------------------------------------

    def created(
        self, sites: SitePair, factory: ReplicatorFactory, namespace_id: int = IN_SCOPE
    ) -> int:
        """A new record made by `factory` on the primary, its resource checked to be in place."""
        record_id = factory.create(sites.primary, namespace_id)
        name = type(factory).__name__
        if not isinstance(record_id, int) or isinstance(record_id, bool):
            pytest.fail(
                f"{name}.create() must return the record's id, not {record_id!r}", pytrace=False
            )
        with sites.primary.session() as session:
            found = session.get(factory.replicator.model, record_id) is not None
        if not found:
            pytest.fail(
                f"{name}.create() returned {record_id}, but no {factory.replicator.model.__name__}"
                " row with that id is committed on the primary (commit through geo.session())",
                pytrace=False,
            )
        source = self.on_primary(sites, factory, record_id)
        if not self.locate(source)():
            where = self.where(source)
            pytest.fail(
                f"{name}.create() made {factory.replicator.model.__name__} {record_id}, but"
                f" nothing is at {where}, where {factory.replicator.__name__} says its resource"
                " is: the replicator's path and the application's disagree, or the resource was"
                " not in place when create() returned",
                pytrace=False,
            )
        return record_id

    def bound(self, sites: SitePair, factory: ReplicatorFactory, record_id: int) -> Replicator:
        """A replicator of the record for the secondary (its storage, its read-only main DB)."""
        return factory.replicator(model_record_id=record_id, geo=sites.secondary)

    def on_primary(self, sites: SitePair, factory: ReplicatorFactory, record_id: int) -> Replicator:
        """A replicator of the record for the primary."""
        return factory.replicator(model_record_id=record_id, geo=sites.primary)

    def row(
        self, sites: SitePair, factory: ReplicatorFactory, record_id: int
    ) -> RegistryRow | None:
        """The secondary's registry row of the record."""
        with sites.secondary.tracking_engine.connect() as conn:
            return Registry(sites.secondary, factory.replicator).get(conn, record_id)

    def running(self, sites: SitePair) -> ExitStack:
        """The primary served, its verification loops and all of the secondary's loops."""
        stack = ExitStack()
        stack.enter_context(sites.primary_served())
        stack.enter_context(primary_worker(sites))
        stack.enter_context(secondary_worker(sites, verification=True))
        return stack

    def replicated(
        self, sites: SitePair, factory: ReplicatorFactory, record_id: int
    ) -> Callable[[], bool]:
        """Synced — and verified against the primary's checksum when the type verifies."""
        replicator = factory.replicator

        def check() -> bool:
            row = self.row(sites, factory, record_id)
            if row is None or row.state != SyncState.SYNCED:
                return False
            if not self.same_copy(
                self.on_primary(sites, factory, record_id), self.bound(sites, factory, record_id)
            ):
                return False
            if not replicator.verification_enabled:
                return True
            with sites.primary.main_engine.connect() as conn:
                state = primary_verifiable(sites.primary, replicator).get(conn, record_id)
            return (
                state is not None
                and row.verification_state == VerificationState.SUCCEEDED
                and row.verification_checksum == state["verification_checksum"]
            )

        return check

    def events_of(self, sites: SitePair, factory: ReplicatorFactory, record_id: int) -> list[str]:
        """The names of the events published for the record, oldest first."""
        name = factory.replicator.replicable_name
        with sites.primary.main_engine.connect() as conn:
            rows = conn.execute(
                select(geo_events.c.event_name, geo_events.c.payload)
                .where(geo_events.c.replicable_name == name)
                .order_by(geo_events.c.id)
            ).all()
        return [
            event
            for event, payload in rows
            if isinstance(payload, dict) and payload.get("model_record_id") == record_id
        ]

    def wait_for_cursor(self, sites: SitePair) -> None:
        """Wait until the secondary's log cursor has read every event published so far."""
        with sites.primary.main_engine.connect() as conn:
            newest = conn.execute(select(geo_events.c.id).order_by(geo_events.c.id.desc())).first()
        target = int(newest[0]) if newest else 0
        cursor = LogCursor(sites.secondary)

        def caught_up() -> bool:
            with sites.secondary.tracking_engine.connect() as conn:
                position = cursor.position(conn)
            return position is not None and position >= target

        wait_for(caught_up, self.timeout, "the log cursor to read every event")

    def select_namespace(self, sites: SitePair, namespace_id: int) -> None:
        """Make the secondary select only `namespace_id` (namespace selective sync)."""
        with sites.primary.main() as conn:
            NodeStore(sites.primary, conn).update(
                sites.secondary_node.id,
                selective_sync_type="namespaces",
                selective_sync_namespace_ids=[namespace_id],
            )


class _ReplicatorContract(ContractKit):
    """The tests every strategy shares; the strategy subclasses say what a "copy" is."""

    def test_created_record_is_synced_verified_then_deleted(
        self, contract_sites: SitePair, replicator_factory: ReplicatorFactory
    ) -> None:
        sites, factory = contract_sites, replicator_factory
        record_id = self.created(sites, factory)
        assert self.events_of(sites, factory, record_id) == [CREATED]
        with self.running(sites):
            wait_for(
                self.replicated(sites, factory, record_id), self.timeout, "synced and verified"
            )
            copy = self.locate(self.bound(sites, factory, record_id))
            source = self.locate(self.on_primary(sites, factory, record_id))
            assert copy()
            with sites.primary.session() as session:
                session.delete(session.get(factory.replicator.model, record_id))
                session.commit()
            wait_for(
                lambda: self.row(sites, factory, record_id) is None,
                self.timeout,
                "the registry row removed",
            )
        assert not copy()
        # geosync removes secondaries' copies only: the primary's is the application's to delete.
        assert source()

    def test_secondary_holds_what_its_selective_sync_selects(
        self, contract_sites: SitePair, replicator_factory: ReplicatorFactory
    ) -> None:
        """A type with namespace selective sync holds only the selected namespaces; any other
        type holds every record, whatever namespaces the secondary selects."""
        sites, factory = contract_sites, replicator_factory
        if self.selective_sync_tested(factory):
            self.check_namespace_scope(sites, factory)
        else:
            self.check_replicated_in_full(sites, factory)

    def check_namespace_scope(self, sites: SitePair, factory: ReplicatorFactory) -> None:
        """With the secondary selecting `IN_SCOPE`, a record there arrives, one outside not."""
        self.select_namespace(sites, IN_SCOPE)
        outside = self.created(sites, factory, OUT_OF_SCOPE)
        inside = self.created(sites, factory, IN_SCOPE)
        outside_copy = self.locate(self.bound(sites, factory, outside))
        with self.running(sites):
            wait_for(self.replicated(sites, factory, inside), self.timeout, "the in-scope record")
            self.wait_for_cursor(sites)
        assert self.row(sites, factory, outside) is None
        assert not outside_copy()

    def check_replicated_in_full(self, sites: SitePair, factory: ReplicatorFactory) -> None:
        """Records of a type without namespace selective sync all arrive; a type that declares
        another kind of selective sync is checked with the secondary selecting nothing."""
        if not declares_selective_sync(factory.replicator):
            self.select_namespace(sites, IN_SCOPE)
        records = [self.created(sites, factory, OUT_OF_SCOPE), self.created(sites, factory)]
        with self.running(sites):
            for record_id in records:
                wait_for(
                    self.replicated(sites, factory, record_id),
                    self.timeout,
                    f"record {record_id} replicated whatever namespaces the secondary selects",
                )

    def test_flag_off_creates_no_registry_and_syncs_nothing(
        self, contract_sites: SitePair, replicator_factory: ReplicatorFactory
    ) -> None:
        sites, factory = contract_sites, replicator_factory
        published = self.created(sites, factory)  # its `created` event is in the log ...
        with sites.primary.main() as conn:  # ... but the flag is off before it is consumed
            set_flag(
                conn,
                sites.primary.catalog,
                factory.replicator.replication_flag_name,
                False,
                sites.primary.clock.now(),
            )
        unpublished = self.created(sites, factory)
        assert self.events_of(sites, factory, unpublished) == []
        with self.running(sites):
            self.wait_for_cursor(sites)
        for record_id in (published, unpublished):
            assert self.row(sites, factory, record_id) is None
            assert not self.locate(self.bound(sites, factory, record_id))()

    def test_resource_missing_on_primary_is_recorded(
        self, contract_sites: SitePair, replicator_factory: ReplicatorFactory
    ) -> None:
        sites, factory = contract_sites, replicator_factory
        record_id = self.created(sites, factory)
        self.remove_resource(self.on_primary(sites, factory, record_id))

        def recorded() -> bool:
            row = self.row(sites, factory, record_id)
            return row is not None and self.missing_recorded(row)

        with self.running(sites):
            wait_for(recorded, self.timeout, "missing_on_primary recorded")
        row = self.row(sites, factory, record_id)
        assert row is not None and row.missing_on_primary is True


class BlobReplicatorContract(_ReplicatorContract):
    """The contract of a `BlobReplicator`: subclass it and define the ``replicator_factory``
    fixture, returning a `ReplicatorFactory` whose ``create`` writes the file and then commits
    its record.

    Beyond the shared tests (create → sync → verify → delete, selective sync or its absence,
    flag off, missing on the primary): a file missing on the primary fails the sync with
    `missing_on_primary`; a mutable blob rewritten on the primary (atomically, plus
    `handle_after_update()`) arrives again; an immutable one refuses `handle_after_update()`.
    """

    strategy_class: ClassVar[type[Replicator]] = BlobReplicator

    def copy_path(self, replicator: Replicator) -> Path:
        """The blob's file on the replicator's site."""
        assert isinstance(replicator, BlobReplicator)
        return replicator.file_path()

    def locate(self, replicator: Replicator) -> Callable[[], bool]:
        """Whether the blob is in the replicator's site's store (a directory or objects)."""
        assert isinstance(replicator, BlobReplicator)
        store, key = replicator.blob_store(), replicator.blob_path()
        return lambda: store.exists(key)

    def where(self, replicator: Replicator) -> str:
        """The blob's key in its store."""
        assert isinstance(replicator, BlobReplicator)
        return f"{replicator.blob_path()} in {replicator.blob_store().describe()}"

    def remove_resource(self, replicator: Replicator) -> None:
        """Delete the blob from the primary's store."""
        assert isinstance(replicator, BlobReplicator)
        replicator.blob_store().remove(replicator.blob_path())

    def same_copy(self, on_primary: Replicator, on_secondary: Replicator) -> bool:
        """Byte-identical blobs."""
        assert isinstance(on_primary, BlobReplicator) and isinstance(on_secondary, BlobReplicator)
        if not self.locate(on_secondary)():
            return False
        return _blob_bytes(on_secondary) == _blob_bytes(on_primary)

    def rewrite(self, replicator: Replicator, data: bytes) -> None:
        """Rewrite the blob on the primary as an application must: atomically (a temp file
        renamed over it in a directory, a whole new object in an object store)."""
        assert isinstance(replicator, BlobReplicator)
        if replicator.blob_store().local:
            _replace_atomically(self.copy_path(replicator), data)
        else:
            replicator.store_blob([data])

    def missing_recorded(self, row: RegistryRow) -> bool:
        """Failed, flagged missing on the primary (and retried with the 4-hour cap)."""
        return row.state == SyncState.FAILED and row.missing_on_primary is True

    def test_rewritten_blob_is_synced_again_or_refused_when_immutable(
        self, contract_sites: SitePair, replicator_factory: ReplicatorFactory
    ) -> None:
        sites, factory = contract_sites, replicator_factory
        record_id = self.created(sites, factory)
        if not factory.replicator.mutable:
            with pytest.raises(UnsupportedEvent):
                self.on_primary(sites, factory, record_id).handle_after_update()
            return
        with self.running(sites):
            wait_for(self.replicated(sites, factory, record_id), self.timeout, "first sync")
            source = self.on_primary(sites, factory, record_id)
            self.rewrite(source, b"rewritten" + os.urandom(4000))
            source.handle_after_update()
            wait_for(self.replicated(sites, factory, record_id), self.timeout, "the rewrite synced")


class RepositoryReplicatorContract(_ReplicatorContract):
    """The contract of a `RepositoryReplicator`: subclass it and define the
    ``replicator_factory`` fixture, returning a `ReplicatorFactory` whose ``create`` makes the
    bare repository (with commits, or empty) and then commits its record.

    Beyond the shared tests (create → sync → verify → delete, selective sync or its absence,
    flag off, missing on the primary): a repository missing on the primary is synced with
    `missing_on_primary`; a push plus `handle_after_update()` is mirrored.
    """

    strategy_class: ClassVar[type[Replicator]] = RepositoryReplicator

    def copy_path(self, replicator: Replicator) -> Path:
        """The bare repository on the replicator's site."""
        assert isinstance(replicator, RepositoryReplicator)
        return replicator.repository_dir()

    def same_copy(self, on_primary: Replicator, on_secondary: Replicator) -> bool:
        """The mirror has exactly the primary's refs."""
        mirror = self.copy_path(on_secondary)
        return (mirror / "HEAD").is_file() and repository_refs(mirror) == repository_refs(
            self.copy_path(on_primary)
        )

    def missing_recorded(self, row: RegistryRow) -> bool:
        """Synced, flagged missing on the primary (nothing to mirror, nothing to retry)."""
        return row.state == SyncState.SYNCED and row.missing_on_primary is True

    def test_push_then_handle_after_update_is_mirrored(
        self, contract_sites: SitePair, replicator_factory: ReplicatorFactory
    ) -> None:
        sites, factory = contract_sites, replicator_factory
        record_id = self.created(sites, factory)
        with self.running(sites):
            wait_for(self.replicated(sites, factory, record_id), self.timeout, "first mirror")
            source = self.on_primary(sites, factory, record_id)
            before = repository_refs(self.copy_path(source))
            push_commit(self.copy_path(source), "geosync-contract")
            assert repository_refs(self.copy_path(source)) != before
            source.handle_after_update()
            wait_for(self.replicated(sites, factory, record_id), self.timeout, "the push mirrored")


# -- files, without any geosync code in the way ----------------------------------------------------


def _blob_bytes(replicator: BlobReplicator) -> bytes:
    handle, _ = replicator.blob_store().open_read(replicator.blob_path())
    with handle:
        return handle.read()


def _replace_atomically(path: Path, data: bytes) -> None:
    """Rewrite `path` as an application must: a temp file beside it, renamed over it."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    temp.write_bytes(data)
    os.replace(temp, path)


def _remove(path: Path) -> None:
    """Delete a file or a directory tree (the primary losing a resource)."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
