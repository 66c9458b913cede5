"""Test support for geosync and for applications that declare replicators.

`sites` builds real primary/secondary site pairs on SQLite or PostgreSQL; the contract base
classes (`BlobReplicatorContract`, ...) run the full replication cycle against them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from geosync.testing.databases import DatabaseFactory
from geosync.testing.sites import SitePair, build_site_pair

if TYPE_CHECKING:
    from geosync.testing.contracts import (
        BlobReplicatorContract,
        ReplicatorFactory,
        RepositoryReplicatorContract,
    )

__all__ = [
    "BlobReplicatorContract",
    "DatabaseFactory",
    "ReplicatorFactory",
    "RepositoryReplicatorContract",
    "SitePair",
    "build_site_pair",
]

_CONTRACTS = ("BlobReplicatorContract", "ReplicatorFactory", "RepositoryReplicatorContract")


def __getattr__(name: str) -> Any:
    """The contract suites load on first use: they need pytest, which sites and servers do not."""
    if name in _CONTRACTS:
        from geosync.testing import contracts

        return getattr(contracts, name)
    raise AttributeError(f"module 'geosync.testing' has no attribute {name!r}")
