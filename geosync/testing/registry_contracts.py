"""Contract suites for a replicator's registry on a secondary (ARCHITECTURE.md §11).

geosync derives each replicator's registry table from the replicator; these suites prove that the
derived registry of *your* replicator — its table, its foreign key, its model's ids — behaves as
the state machine of docs/concepts.md says, on the database you run. They use the same one
fixture as the replication contracts, ``replicator_factory``::

    class TestWikiRegistry(VerifiableRegistryContract):
        @pytest.fixture
        def replicator_factory(self) -> ReplicatorFactory:
            return WikiFactory()

`RegistryContract` drives the sync states (pending, started, synced, failed) with the secondary's
own log cursor and registry; `VerifiableRegistryContract` adds the verification states of a type
that verifies. No background loop runs: each transition is made and checked in turn.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from geosync.clock import FrozenClock
from geosync.errors import InvalidTransition
from geosync.registry import Registry, RegistryRow, SyncClaim
from geosync.secondary.log_cursor import LogCursor
from geosync.states import SyncState, VerificationState
from geosync.testing.contracts import ContractKit, ReplicatorFactory
from geosync.testing.sites import SitePair
from geosync.verification import Claim, registry_verifiable

__all__ = ["RegistryContract", "VerifiableRegistryContract"]


class RegistryContract(ContractKit):
    """The sync state machine of the replicator's registry: a created record becomes a pending
    row; a claim starts it; only that claim can settle it; a failure counts its retry and loses to
    a newer change; an operator's resync and a delete do what they say."""

    # -- fixtures and helpers ----------------------------------------------------------------

    def site_options(self) -> dict[str, Any]:
        """Both sites on one frozen clock, which the tests move past a retry's backoff."""
        return {"clock": FrozenClock()}

    def clock(self, sites: SitePair) -> FrozenClock:
        """The sites' shared frozen clock."""
        clock = sites.secondary.clock
        assert isinstance(clock, FrozenClock)
        return clock

    def pending_row(self, sites: SitePair, factory: ReplicatorFactory) -> int:
        """A new record on the primary whose `created` event the secondary's cursor applied."""
        record_id = self.created(sites, factory)
        cursor = LogCursor(sites.secondary)
        for _ in range(100):
            if cursor.process_batch() == 0:
                break
        row = self.row(sites, factory, record_id)
        assert row is not None, "the created event made no registry row"
        return record_id

    def registry(self, sites: SitePair, factory: ReplicatorFactory) -> Registry:
        """The secondary's registry of the replicator under test."""
        return Registry(sites.secondary, factory.replicator)

    def started(self, sites: SitePair, factory: ReplicatorFactory, record_id: int) -> SyncClaim:
        """Claim the row as a sync would (it must be the only due row)."""
        with sites.secondary.tracking() as conn:
            claims = dict(self.registry(sites, factory).claim(conn, 10, holder="contract"))
        assert record_id in claims, "the claim did not take the pending row"
        return claims[record_id]

    def current(self, sites: SitePair, factory: ReplicatorFactory, record_id: int) -> RegistryRow:
        """The row, which must exist."""
        row = self.row(sites, factory, record_id)
        assert row is not None
        return row

    # -- the contract ------------------------------------------------------------------------

    def test_a_created_record_gets_a_pending_row(
        self, contract_sites: SitePair, replicator_factory: ReplicatorFactory
    ) -> None:
        sites, factory = contract_sites, replicator_factory
        record_id = self.pending_row(sites, factory)
        row = self.current(sites, factory, record_id)
        assert row.state == SyncState.PENDING
        assert (row.retry_count, row.last_sync_failure) == (0, None)
        assert row.pending_since is not None

    def test_only_its_own_claim_settles_a_sync(
        self, contract_sites: SitePair, replicator_factory: ReplicatorFactory
    ) -> None:
        sites, factory = contract_sites, replicator_factory
        record_id = self.pending_row(sites, factory)
        claim = self.started(sites, factory, record_id)
        assert self.current(sites, factory, record_id).state == SyncState.STARTED
        stale = SyncClaim(claim.at, claim.generation - 1)
        registry = self.registry(sites, factory)
        with sites.secondary.tracking() as conn:
            assert registry.synced(conn, record_id, stale) is False
            assert registry.synced(conn, record_id, claim) is True
        row = self.current(sites, factory, record_id)
        assert row.state == SyncState.SYNCED
        assert row.last_synced_at is not None

    def test_a_failure_counts_its_retry_and_loses_to_a_newer_change(
        self, contract_sites: SitePair, replicator_factory: ReplicatorFactory
    ) -> None:
        sites, factory = contract_sites, replicator_factory
        record_id = self.pending_row(sites, factory)
        registry = self.registry(sites, factory)
        claim = self.started(sites, factory, record_id)
        with sites.secondary.tracking() as conn:
            retry_at = registry.failed(conn, record_id, claim, "Sync failed: contract")
        row = self.current(sites, factory, record_id)
        assert row.state == SyncState.FAILED and row.retry_count == 1
        assert row.last_sync_failure == "Sync failed: contract"
        assert retry_at is not None and retry_at > sites.secondary.clock.now()
        self.clock(sites).advance(timedelta(days=1))
        claim = self.started(sites, factory, record_id)
        with sites.secondary.tracking() as conn:
            registry.pending(conn, record_id)  # a newer change arrives mid-sync
            assert registry.failed(conn, record_id, claim, "Sync failed: stale") is None
        row = self.current(sites, factory, record_id)
        assert row.state == SyncState.PENDING and row.retry_count == 0

    def test_resync_moves_a_settled_row_back_and_delete_removes_it(
        self, contract_sites: SitePair, replicator_factory: ReplicatorFactory
    ) -> None:
        sites, factory = contract_sites, replicator_factory
        record_id = self.pending_row(sites, factory)
        registry = self.registry(sites, factory)
        with sites.secondary.tracking() as conn, pytest.raises(InvalidTransition):
            registry.resync(conn, record_id)  # pending: nothing to resync
        claim = self.started(sites, factory, record_id)
        with sites.secondary.tracking() as conn:
            assert registry.synced(conn, record_id, claim)
            registry.resync(conn, record_id)
        assert self.current(sites, factory, record_id).state == SyncState.PENDING
        with sites.secondary.tracking() as conn:
            assert record_id in registry.delete(conn, [record_id])
        assert self.row(sites, factory, record_id) is None


class VerifiableRegistryContract(RegistryContract):
    """`RegistryContract`, plus the verification states of a synced row: a claim starts its
    verification, only that claim settles it, a failure counts its retry and backs off."""

    def synced_row(self, sites: SitePair, factory: ReplicatorFactory) -> int:
        """A row synced with its verification pending, as a finished sync leaves it."""
        if not factory.replicator.verification_enabled:
            pytest.fail(
                f"{factory.replicator.__name__} does not verify: use RegistryContract",
                pytrace=False,
            )
        record_id = self.pending_row(sites, factory)
        claim = self.started(sites, factory, record_id)
        with sites.secondary.tracking() as conn:
            registry = self.registry(sites, factory)
            assert registry.synced(conn, record_id, claim, verification=VerificationState.PENDING)
        return record_id

    def verification_claim(
        self, sites: SitePair, factory: ReplicatorFactory, record_id: int
    ) -> Claim:
        """Claim the row's verification as the verification loop would."""
        verifiable = registry_verifiable(sites.secondary, factory.replicator)
        with sites.secondary.tracking() as conn:
            claims = {c.model_record_id: c for c in verifiable.claim(conn, 10)}
        assert record_id in claims, "the verification claim did not take the synced row"
        return claims[record_id]

    def test_a_verification_claim_succeeds_only_as_itself(
        self, contract_sites: SitePair, replicator_factory: ReplicatorFactory
    ) -> None:
        sites, factory = contract_sites, replicator_factory
        record_id = self.synced_row(sites, factory)
        verifiable = registry_verifiable(sites.secondary, factory.replicator)
        claim = self.verification_claim(sites, factory, record_id)
        earlier = claim.started_at - timedelta(seconds=1)
        with sites.secondary.tracking() as conn:
            assert not verifiable.succeeded(conn, record_id, earlier, "a" * 64)
            assert verifiable.succeeded(conn, record_id, claim.started_at, "b" * 64)
        row = self.current(sites, factory, record_id)
        assert row.verification_state == VerificationState.SUCCEEDED
        assert row.verification_checksum == "b" * 64

    def test_a_verification_failure_counts_its_retry(
        self, contract_sites: SitePair, replicator_factory: ReplicatorFactory
    ) -> None:
        sites, factory = contract_sites, replicator_factory
        record_id = self.synced_row(sites, factory)
        verifiable = registry_verifiable(sites.secondary, factory.replicator)
        claim = self.verification_claim(sites, factory, record_id)
        with sites.secondary.tracking() as conn:
            count = verifiable.failed(conn, record_id, claim.started_at, "Checksum differs")
        assert count == 1
        row = self.current(sites, factory, record_id)
        assert row.verification_state == VerificationState.FAILED
        assert row.verification_failure == "Checksum differs"
        assert row.verification_retry_at > sites.secondary.clock.now()
        with sites.secondary.tracking() as conn:
            assert verifiable.claim(conn, 10) == []  # backing off: nothing due yet
