"""Test support for geosync and for applications that declare replicators.

`sites` builds real primary/secondary site pairs on SQLite or PostgreSQL; the contract base
classes (`BlobReplicatorContract`, ...) run the full replication cycle against them.
"""

from __future__ import annotations

from geosync.testing.databases import DatabaseFactory
from geosync.testing.sites import SitePair, build_site_pair

__all__ = ["DatabaseFactory", "SitePair", "build_site_pair"]
