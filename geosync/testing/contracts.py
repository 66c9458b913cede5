"""Contract test suites for replicator authors (ARCHITECTURE.md §11): pytest base classes.

An application's engineer subclasses one and supplies ONE fixture; the suite then runs the whole
replication cycle for that replicator against a real primary (served on 127.0.0.1) and a real
secondary (SQLite, real files, real `git`), with both sites' background loops running::

    def create_snippet(geo: Geo, namespace_id: int) -> int:
        with geo.session() as session:
            snippet = Snippet(title="t", namespace_id=namespace_id)
            session.add(snippet)
            session.flush()
            init_bare(snippet.replicator.repository_dir())  # plus some commits
            session.commit()
            return snippet.id

    class TestSnippetReplicator(RepositoryReplicatorContract):
        @pytest.fixture
        def replicator_factory(self) -> ReplicatorFactory:
            return ReplicatorFactory(SnippetReplicator, create_snippet)

Fixtures the suites need:

- ``replicator_factory`` (required): a `ReplicatorFactory` — the replicator class under test and
  a function that creates one model record *plus its resource* (file or bare repository) on the
  primary site it is given, in the namespace it is given, through ``geo.session()`` (so the
  `created` event is published), and returns the record's id.
- ``geosync_databases`` (optional): the `DatabaseFactory` the sites are built on; SQLite files
  under ``tmp_path`` by default. Override it to run the suite on PostgreSQL as well.
- ``tmp_path`` (pytest's own).

Class attributes a subclass may set:

- ``namespace_selective_sync`` (default True): the replicator honours ``selective_sync_type =
  "namespaces"`` with the namespace passed to the factory; set False if it has no namespaces.

Tests: publish → consume → sync → verify → delete; selective sync scope; flag off; missing on
the primary; and the strategy's update path (a push plus `handle_after_update()`, a rewrite of a
mutable blob).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import pytest
from sqlalchemy import select

from geosync.app import Geo
from geosync.db.tables import geo_events
from geosync.errors import UnsupportedEvent
from geosync.flags import set_flag
from geosync.nodes import NodeStore
from geosync.registry import Registry, RegistryRow, SyncState, VerificationState
from geosync.replicator import CREATED, Replicator
from geosync.secondary.log_cursor import LogCursor
from geosync.strategies.blob import BlobReplicator
from geosync.strategies.repository import RepositoryReplicator
from geosync.testing.databases import DatabaseFactory
from geosync.testing.sites import SitePair, build_site_pair
from geosync.testing.workers import primary_worker, secondary_worker, wait_for
from geosync.verification import primary_verifiable

__all__ = [
    "BlobReplicatorContract",
    "CreateReplicable",
    "ReplicatorFactory",
    "RepositoryReplicatorContract",
]

IN_SCOPE = 101
OUT_OF_SCOPE = 202
TIMEOUT = 30.0


class CreateReplicable(Protocol):
    """Creates one model record plus its resource on the primary `geo`; returns the record id."""

    def __call__(self, geo: Geo, namespace_id: int) -> int: ...


@dataclass(frozen=True)
class ReplicatorFactory:
    """What a contract suite needs from the application: the replicator and how to make one."""

    replicator: type[Replicator]
    create: CreateReplicable

    def __call__(self, geo: Geo, namespace_id: int = IN_SCOPE) -> int:
        """Create one record plus its resource on the primary `geo`; returns its id."""
        return self.create(geo, namespace_id)


class _ReplicatorContract:
    """The tests every strategy shares; the strategy subclasses say what a "copy" is."""

    namespace_selective_sync: ClassVar[bool] = True

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
        pair = build_site_pair(
            tmp_path / "contract-sites",
            [replicator_factory.replicator],
            geosync_databases,
            backoff_scale=0.01,
            poll_interval=0.1,
        )
        yield pair
        pair.dispose()

    # -- what a copy is (strategies implement) -----------------------------------------------

    def copy_path(self, replicator: Replicator) -> Path:
        """Where `replicator`'s site keeps the resource."""
        raise NotImplementedError

    def same_copy(self, on_primary: Replicator, on_secondary: Replicator) -> bool:
        """Whether the secondary's copy equals the primary's resource."""
        raise NotImplementedError

    def missing_recorded(self, row: RegistryRow) -> bool:
        """Whether `row` records a resource missing on the primary as the strategy should."""
        raise NotImplementedError

    # -- helpers -----------------------------------------------------------------------------

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

        wait_for(caught_up, TIMEOUT, "the log cursor to read every event")

    # -- the contract ------------------------------------------------------------------------

    def test_created_record_is_synced_verified_then_deleted(
        self, contract_sites: SitePair, replicator_factory: ReplicatorFactory
    ) -> None:
        sites, factory = contract_sites, replicator_factory
        record_id = factory(sites.primary)
        assert self.events_of(sites, factory, record_id) == [CREATED]
        with self.running(sites):
            wait_for(self.replicated(sites, factory, record_id), TIMEOUT, "synced and verified")
            copy = self.copy_path(self.bound(sites, factory, record_id))
            assert copy.exists()
            with sites.primary.session() as session:
                session.delete(session.get(factory.replicator.model, record_id))
                session.commit()
            wait_for(
                lambda: self.row(sites, factory, record_id) is None,
                TIMEOUT,
                "the registry row removed",
            )
        assert not copy.exists()

    def test_record_outside_the_selected_namespaces_is_not_replicated(
        self, contract_sites: SitePair, replicator_factory: ReplicatorFactory
    ) -> None:
        if not self.namespace_selective_sync:
            pytest.skip("the replicator declares no namespace-based selective sync")
        sites, factory = contract_sites, replicator_factory
        with sites.primary.main() as conn:
            NodeStore(sites.primary, conn).update(
                sites.secondary_node.id,
                selective_sync_type="namespaces",
                selective_sync_namespace_ids=[IN_SCOPE],
            )
        outside = factory(sites.primary, OUT_OF_SCOPE)
        inside = factory(sites.primary, IN_SCOPE)
        outside_copy = self.copy_path(self.bound(sites, factory, outside))
        with self.running(sites):
            wait_for(self.replicated(sites, factory, inside), TIMEOUT, "the in-scope record")
            self.wait_for_cursor(sites)
        assert self.row(sites, factory, outside) is None
        assert not outside_copy.exists()

    def test_flag_off_creates_no_registry_and_syncs_nothing(
        self, contract_sites: SitePair, replicator_factory: ReplicatorFactory
    ) -> None:
        sites, factory = contract_sites, replicator_factory
        published = factory(sites.primary)  # its `created` event is in the log ...
        with sites.primary.main() as conn:  # ... but the flag is off before it is consumed
            set_flag(
                conn,
                sites.primary.catalog,
                factory.replicator.replication_flag_name,
                False,
                sites.primary.clock.now(),
            )
        unpublished = factory(sites.primary)
        assert self.events_of(sites, factory, unpublished) == []
        with self.running(sites):
            self.wait_for_cursor(sites)
        for record_id in (published, unpublished):
            assert self.row(sites, factory, record_id) is None
            assert not self.copy_path(self.bound(sites, factory, record_id)).exists()

    def test_resource_missing_on_primary_is_recorded(
        self, contract_sites: SitePair, replicator_factory: ReplicatorFactory
    ) -> None:
        sites, factory = contract_sites, replicator_factory
        record_id = factory(sites.primary)
        _remove(self.copy_path(self.on_primary(sites, factory, record_id)))

        def recorded() -> bool:
            row = self.row(sites, factory, record_id)
            return row is not None and self.missing_recorded(row)

        with self.running(sites):
            wait_for(recorded, TIMEOUT, "missing_on_primary recorded")
        row = self.row(sites, factory, record_id)
        assert row is not None and row.missing_on_primary is True


class BlobReplicatorContract(_ReplicatorContract):
    """The contract of a `BlobReplicator`.

    Fixtures it needs: ``replicator_factory`` (required) returning
    ``ReplicatorFactory(YourReplicator, create)``, where ``create(geo, namespace_id)`` writes the
    file and commits its record on the primary ``geo`` and returns the record id;
    ``geosync_databases`` (optional, SQLite by default); pytest's ``tmp_path``. Set
    ``namespace_selective_sync = False`` if the replicator has no namespace-based scope.

    Beyond the shared tests: a file missing on the primary fails the sync with
    `missing_on_primary`; a mutable blob rewritten on the primary (plus `handle_after_update()`)
    arrives again.
    """

    def copy_path(self, replicator: Replicator) -> Path:
        """The blob's file on the replicator's site."""
        assert isinstance(replicator, BlobReplicator)
        return replicator.file_path()

    def same_copy(self, on_primary: Replicator, on_secondary: Replicator) -> bool:
        """Byte-identical files."""
        copy = self.copy_path(on_secondary)
        return copy.is_file() and copy.read_bytes() == self.copy_path(on_primary).read_bytes()

    def missing_recorded(self, row: RegistryRow) -> bool:
        """Failed, flagged missing on the primary (and retried with the 4-hour cap)."""
        return row.state == SyncState.FAILED and row.missing_on_primary is True

    def test_rewritten_blob_is_synced_again_or_refused_when_immutable(
        self, contract_sites: SitePair, replicator_factory: ReplicatorFactory
    ) -> None:
        sites, factory = contract_sites, replicator_factory
        record_id = factory(sites.primary)
        if not factory.replicator.mutable:
            with pytest.raises(UnsupportedEvent):
                self.on_primary(sites, factory, record_id).handle_after_update()
            return
        with self.running(sites):
            wait_for(self.replicated(sites, factory, record_id), TIMEOUT, "first sync")
            source = self.on_primary(sites, factory, record_id)
            self.copy_path(source).write_bytes(b"rewritten by the geosync contract\n" * 100)
            source.handle_after_update()
            wait_for(self.replicated(sites, factory, record_id), TIMEOUT, "the rewrite synced")


class RepositoryReplicatorContract(_ReplicatorContract):
    """The contract of a `RepositoryReplicator`.

    Fixtures it needs: ``replicator_factory`` (required) returning
    ``ReplicatorFactory(YourReplicator, create)``, where ``create(geo, namespace_id)`` creates
    the bare repository (with commits, or empty) and commits its record on the primary ``geo``
    and returns the record id; ``geosync_databases`` (optional, SQLite by default); pytest's
    ``tmp_path``. Set ``namespace_selective_sync = False`` if the replicator has no
    namespace-based scope.

    Beyond the shared tests: a repository missing on the primary is synced with
    `missing_on_primary`; a push plus `handle_after_update()` is mirrored.
    """

    def copy_path(self, replicator: Replicator) -> Path:
        """The bare repository on the replicator's site."""
        assert isinstance(replicator, RepositoryReplicator)
        return replicator.repository_dir()

    def same_copy(self, on_primary: Replicator, on_secondary: Replicator) -> bool:
        """The mirror has exactly the primary's refs."""
        mirror = self.copy_path(on_secondary)
        return (mirror / "HEAD").is_file() and _refs(mirror) == _refs(self.copy_path(on_primary))

    def missing_recorded(self, row: RegistryRow) -> bool:
        """Synced, flagged missing on the primary (nothing to mirror, nothing to retry)."""
        return row.state == SyncState.SYNCED and row.missing_on_primary is True

    def test_push_then_handle_after_update_is_mirrored(
        self, contract_sites: SitePair, replicator_factory: ReplicatorFactory
    ) -> None:
        sites, factory = contract_sites, replicator_factory
        record_id = factory(sites.primary)
        with self.running(sites):
            wait_for(self.replicated(sites, factory, record_id), TIMEOUT, "first mirror")
            source = self.on_primary(sites, factory, record_id)
            before = _refs(self.copy_path(source))
            _push_branch(self.copy_path(source), "geosync-contract")
            assert _refs(self.copy_path(source)) != before
            source.handle_after_update()
            wait_for(self.replicated(sites, factory, record_id), TIMEOUT, "the push mirrored")


# -- git and files, without any geosync code in the way -------------------------------------------


def _git(repo: Path, *args: str, stdin: bytes | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_TERMINAL_PROMPT="0")
    result = subprocess.run(
        ["git", "--git-dir", str(repo), *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {result.stderr.decode()}")
    return result.stdout.decode()


def _refs(repo: Path) -> list[str]:
    """Every "<object id> <ref name>" line of `repo`."""
    return _git(repo, "for-each-ref", "--format=%(objectname) %(refname)").splitlines()


def _push_branch(repo: Path, branch: str) -> None:
    """What a push of a new branch does to a bare repository: one new commit under a new ref."""
    message = b"pushed by the geosync contract\n"
    content = b"contract\n"
    stream = (
        f"commit refs/heads/{branch}\n".encode()
        + b"committer geosync <contract@example.invalid> 1700000000 +0000\n"
        + f"data {len(message)}\n".encode()
        + message
        + f"M 100644 inline CONTRACT\ndata {len(content)}\n".encode()
        + content
    )
    _git(repo, "fast-import", "--quiet", stdin=stream)


def _remove(path: Path) -> None:
    """Delete a file or a directory tree (the primary losing a resource)."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
