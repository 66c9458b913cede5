"""Every error geosync raises on purpose has one root, `GeoError`.

The tree::

    GeoError
    ├── ConfigurationError          a setting, a replicator declaration or the node setup is wrong
    │   ├── CatalogError            replicators that cannot be catalogued
    │   └── ReadOnlyViolation       a secondary was about to write to its read-only main database
    ├── NotFound                    a node, a record, a registry or a flag that does not exist
    │   └── RecordNotFound          a replicator asked for a model record that does not exist
    ├── RecordGone                  a record a secondary was syncing no longer exists on the primary
    ├── SkipEvent                   an event a secondary cannot apply: logged, counted, skipped
    ├── ValidationError             input that breaks a rule (two primaries, ...)
    │   └── UnsafePath              a stored path that would leave its storage root
    ├── UnsupportedEvent            an event that the replicator's strategy does not declare
    ├── InvalidTransition           a state change its current state forbids
    ├── AuthenticationError         a node token missing, expired or not for this path
    ├── TransferError               a download or git fetch that did not complete
    │   ├── PrimaryMissing          the primary has the record but not its file or repository
    │   ├── ChecksumMismatch        the copy does not hash to the primary's checksum
    │   ├── PrimaryRefused          the primary will not serve the file (unsafe path, not a file)
    │   ├── StorageFull             this site's storage has no space left for the copy
    │   ├── TransportFailure        the connection to the primary failed or was cut short
    │   ├── PrimaryUnreachable      the primary did not answer: refused, reset, timed out, 502-504
    │   └── Interrupted             a download stopped because its worker is shutting down
    ├── StorageError                an object store refused the credentials or failed
    ├── PromotionRefused            a promotion now would lose data (the message lists it)
    └── LeaseLost                   a worker lost the lease it needed to go on

Each class's docstring is its default message. Third-party errors are mapped at the boundary with
``raise ... from exc`` so callers only ever catch geosync's own classes.
"""

from __future__ import annotations


class GeoError(Exception):
    """A geosync operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        """The human-readable message, one line."""
        return str(self)


class ConfigurationError(GeoError):
    """geosync is not configured correctly."""


class CatalogError(ConfigurationError):
    """The replicator catalog is invalid."""


class ReadOnlyViolation(ConfigurationError):
    """A secondary must never write to its main database."""


class NotFound(GeoError):
    """The requested object does not exist."""


class RecordNotFound(NotFound):
    """The model record does not exist."""


class ValidationError(GeoError):
    """The input is not valid."""


class UnsafePath(ValidationError):
    """Unsafe path: it would leave its storage root."""


class RecordGone(GeoError):
    """The model record no longer exists on the primary."""


class SkipEvent(GeoError):
    """An event that cannot be applied; it is logged, counted by `reason` and skipped."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class UnsupportedEvent(GeoError):
    """The replicator's strategy does not declare this event."""


class InvalidTransition(GeoError):
    """This state change is not allowed from the current state."""


class AuthenticationError(GeoError):
    """The request is not authenticated."""


class TransferError(GeoError):
    """The transfer from the primary did not complete."""


class PrimaryMissing(TransferError):
    """The primary does not have this resource."""


class ChecksumMismatch(TransferError):
    """The copy does not match the primary's checksum."""


class PrimaryRefused(TransferError):
    """The primary refused to serve the file."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"The primary refused to serve the file ({reason}): {detail}")
        #: The wire's refusal reason (`geosync.wire`): `unsafe_path`, `not_a_file`, ...
        self.reason = reason


class StorageFull(TransferError):
    """No space left on this secondary's storage."""


class TransportFailure(TransferError):
    """The connection to the primary failed: refused, reset, timed out or cut short."""


class PrimaryUnreachable(TransferError):
    """The primary did not answer: connection refused, reset or timed out, or 502, 503, 504.

    A site-level error: the sync asks `geosync.secondary.reachability` whether the whole site
    is away before its row counts a retry.
    """


class Interrupted(TransferError):
    """The download was stopped because the worker is shutting down."""


class StorageError(GeoError):
    """The object storage refused the request or could not be reached.

    `permanent` when retrying cannot help until an operator acts (the store refused the
    credentials or the bucket policy forbids the request); otherwise the store was out of reach
    or failed, which retries fix.
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class LeaseLost(GeoError):
    """The worker lost its lease."""


class PromotionRefused(GeoError):
    """The plan shows data that a promotion now would lose (the message lists it)."""
