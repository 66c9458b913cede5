"""geosync: GitLab-Geo-style multi-site replication for Python applications.

Declare one replicator class per replicable kind and add the `Replicable` mixin to its model;
geosync derives registries, events, sync, verification, metrics and APIs from that.
"""

from __future__ import annotations

from geosync.app import Geo
from geosync.binding import UnboundEngineWarning
from geosync.clock import Clock, FrozenClock, SystemClock
from geosync.errors import (
    AuthenticationError,
    CatalogError,
    ChecksumMismatch,
    ConfigurationError,
    GeoError,
    Interrupted,
    InvalidTransition,
    LeaseLost,
    NotFound,
    PrimaryMissing,
    PrimaryRefused,
    PrimaryUnreachable,
    PromotionRefused,
    ReadOnlyViolation,
    RecordGone,
    RecordNotFound,
    SkipEvent,
    StorageError,
    StorageFull,
    TransferError,
    TransportFailure,
    UnsafePath,
    UnsupportedEvent,
    ValidationError,
)
from geosync.model import Replicable, VerificationStateMixin
from geosync.nodes import Node
from geosync.replicator import Replicator
from geosync.settings import Settings
from geosync.states import SyncState, VerificationState
from geosync.strategies.blob import BlobReplicator
from geosync.strategies.repository import RepositoryReplicator

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "BlobReplicator",
    "CatalogError",
    "ChecksumMismatch",
    "Clock",
    "ConfigurationError",
    "FrozenClock",
    "Geo",
    "GeoError",
    "Interrupted",
    "InvalidTransition",
    "LeaseLost",
    "Node",
    "NotFound",
    "PrimaryMissing",
    "PrimaryRefused",
    "PrimaryUnreachable",
    "PromotionRefused",
    "ReadOnlyViolation",
    "RecordGone",
    "RecordNotFound",
    "Replicable",
    "Replicator",
    "RepositoryReplicator",
    "Settings",
    "SkipEvent",
    "StorageError",
    "StorageFull",
    "SyncState",
    "SystemClock",
    "TransferError",
    "TransportFailure",
    "UnboundEngineWarning",
    "UnsafePath",
    "UnsupportedEvent",
    "ValidationError",
    "VerificationState",
    "VerificationStateMixin",
    "__version__",
]
