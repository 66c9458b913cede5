"""Test support for geosync and for applications that declare replicators.

The contract kit (docs/adding-a-data-type.md): subclass `BlobReplicatorContract` or
`RepositoryReplicatorContract` (and `RegistryContract` or `VerifiableRegistryContract` for the
registry's state machine) and define one fixture, ``replicator_factory``, returning a
`ReplicatorFactory`. `create_bare_repository`, `push_commit` and `repository_refs` make and read
the git repositories such a factory needs. `sites` builds real primary/secondary site pairs on
SQLite or PostgreSQL (`DatabaseFactory`); the contracts run the full replication cycle on them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from geosync.testing.databases import DatabaseFactory
from geosync.testing.git import create_bare_repository, push_commit, repository_refs
from geosync.testing.sites import SitePair, build_site_pair

if TYPE_CHECKING:
    from geosync.testing.contracts import (
        BlobReplicatorContract,
        ReplicatorFactory,
        RepositoryReplicatorContract,
    )
    from geosync.testing.registry_contracts import RegistryContract, VerifiableRegistryContract

__all__ = [
    "BlobReplicatorContract",
    "DatabaseFactory",
    "RegistryContract",
    "ReplicatorFactory",
    "RepositoryReplicatorContract",
    "SitePair",
    "VerifiableRegistryContract",
    "build_site_pair",
    "create_bare_repository",
    "push_commit",
    "repository_refs",
]

_CONTRACTS = ("BlobReplicatorContract", "ReplicatorFactory", "RepositoryReplicatorContract")
_REGISTRY_CONTRACTS = ("RegistryContract", "VerifiableRegistryContract")


def __getattr__(name: str) -> Any:
    """The contract suites load on first use: they need pytest, which sites and servers do not."""
    if name in _CONTRACTS:
        from geosync.testing import contracts

        return getattr(contracts, name)
    if name in _REGISTRY_CONTRACTS:
        from geosync.testing import registry_contracts

        return getattr(registry_contracts, name)
    raise AttributeError(f"module 'geosync.testing' has no attribute {name!r}")
