"""The GraphQL types every site has, whatever its catalog: enums, scalars, page info, jobs.

Names, values and shapes follow GitLab's GraphQL reference (`ReplicationStateEnum`,
`VerificationStateEnum`, `GeoRegistrySort`, `GeoRegistryAction`, `GeoRegistriesBulkAction`),
so a client written for GitLab's Geo API reads geosync's unchanged.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any, NewType

import strawberry

from geosync.states import SyncState, VerificationState


def _serialize_time(value: datetime) -> str:
    return value.isoformat()


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


#: GitLab's `Time` scalar: an ISO 8601 timestamp.
Time = NewType("Time", datetime)

#: The schema's scalar map (`StrawberryConfig.scalar_map`).
SCALARS: dict[object, Any] = {
    Time: strawberry.scalar(
        name="Time",
        description="Time represented in ISO 8601.",
        serialize=_serialize_time,
        parse_value=_parse_time,
    )
}


@strawberry.enum(name="ReplicationStateEnum", description="Replication state of a registry.")
class ReplicationStateEnum(Enum):
    """The states a registry's `replicationState` argument filters by."""

    PENDING = "pending"
    STARTED = "started"
    SYNCED = "synced"
    FAILED = "failed"

    def state(self) -> SyncState:
        """The registry column's value."""
        return SyncState[self.name]


@strawberry.enum(name="RegistryState", description="State of a Geo registry.")
class RegistryState(Enum):
    """A registry's `state` field."""

    PENDING = "pending"
    STARTED = "started"
    SYNCED = "synced"
    FAILED = "failed"


@strawberry.enum(name="VerificationStateEnum", description="Verification state of an item.")
class VerificationStateEnum(Enum):
    """Verification states, as field values and as filters."""

    PENDING = "pending"
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DISABLED = "disabled"

    def state(self) -> VerificationState:
        """The column's value."""
        return VerificationState[self.name]


@strawberry.enum(name="GeoRegistrySort", description="Values for sorting Geo registries.")
class GeoRegistrySort(Enum):
    """Orders a listing may take; the keyset follows the order."""

    ID_ASC = "ID_ASC"
    ID_DESC = "ID_DESC"
    VERIFIED_AT_ASC = "VERIFIED_AT_ASC"
    VERIFIED_AT_DESC = "VERIFIED_AT_DESC"
    LAST_SYNCED_AT_ASC = "LAST_SYNCED_AT_ASC"
    LAST_SYNCED_AT_DESC = "LAST_SYNCED_AT_DESC"


@strawberry.enum(name="GeoRegistryAction", description="Action to trigger on one Geo registry.")
class GeoRegistryAction(Enum):
    """What `geoRegistriesUpdate` does."""

    RESYNC = "resync"
    REVERIFY = "reverify"


@strawberry.enum(
    name="GeoRegistriesBulkAction", description="Action to trigger on multiple Geo registries."
)
class GeoRegistriesBulkAction(Enum):
    """What `geoRegistriesBulkUpdate` does, as a background job."""

    RESYNC_ALL = "resync"
    REVERIFY_ALL = "reverify"


@strawberry.enum(name="GeoBulkJobState", description="State of a bulk job.")
class GeoBulkJobState(Enum):
    """Where a bulk job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


@strawberry.type(name="PageInfo", description="Information about pagination in a connection.")
class PageInfo:
    """Relay page info: the cursors of the page's ends, and whether more lie either side."""

    end_cursor: str | None
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None


@strawberry.type(name="GeoBulkJobFilters", description="The rows a bulk job was asked to touch.")
class GeoBulkJobFilters:
    """A job's filters, as given when it was created."""

    ids: list[int] | None
    replication_state: ReplicationStateEnum | None
    verification_state: VerificationStateEnum | None


@strawberry.type(
    name="GeoBulkJob",
    description="A bulk resync or reverification, run in keyset batches by a worker.",
)
class GeoBulkJob:
    """One row of the jobs table."""

    id: strawberry.ID
    replicable_name: str
    action: GeoRegistryAction
    state: GeoBulkJobState
    filters: GeoBulkJobFilters
    processed: int
    total: int
    last_processed_key: int | None
    created_by: str | None
    error: str | None
    created_at: Time
    started_at: Time | None
    finished_at: Time | None
    updated_at: Time

    @classmethod
    def of(cls, job: Any) -> GeoBulkJob:
        """The GraphQL view of a `geosync.jobs.BulkJob`."""
        filters = job.filters
        return cls(
            id=strawberry.ID(global_id("Geo::BulkJob", job.id)),
            replicable_name=job.replicable_name,
            action=GeoRegistryAction(str(job.action)),
            state=GeoBulkJobState(str(job.state)),
            filters=GeoBulkJobFilters(
                ids=list(filters.ids) if filters.ids is not None else None,
                replication_state=_named(ReplicationStateEnum, filters.replication_state),
                verification_state=_named(VerificationStateEnum, filters.verification_state),
            ),
            processed=job.processed,
            total=job.total,
            last_processed_key=job.last_key,
            created_by=job.created_by,
            error=job.error,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            updated_at=job.updated_at,
        )


def _named(enum: Any, state: Any) -> Any:
    return None if state is None else enum[state.name]


@strawberry.type(name="GeoChecksumInformation", description="A record's checksum on the primary.")
class ChecksumInformation:
    """The primary's verification state of one record (GitLab's `checksum_information`)."""

    checksum: str | None
    checksum_state: VerificationStateEnum
    last_checksum: Time | None
    checksum_started_at: Time | None
    checksum_retry_count: int
    checksum_retry_at: Time | None
    checksum_failure: str | None


@strawberry.type(
    name="GeoModelRecord",
    description="A replicable record on the primary with its checksum state (data management).",
)
class GeoModelRecord:
    """One record of the primary's data-management listing."""

    id: strawberry.ID
    record_identifier: strawberry.ID
    model_class: str
    created_at: Time | None
    checksum_information: ChecksumInformation

    @classmethod
    def of(cls, model_class: str, row: dict[str, Any]) -> GeoModelRecord:
        """A record from a listing row."""
        return cls(
            id=strawberry.ID(global_id(model_class, row["id"])),
            record_identifier=strawberry.ID(str(row["id"])),
            model_class=model_class,
            created_at=row.get("created_at"),
            checksum_information=ChecksumInformation(
                checksum=row["verification_checksum"],
                checksum_state=VerificationStateEnum[
                    VerificationState(row["verification_state"]).name
                ],
                last_checksum=row["verified_at"],
                checksum_started_at=row["verification_started_at"],
                checksum_retry_count=row["verification_retry_count"] or 0,
                checksum_retry_at=row["verification_retry_at"],
                checksum_failure=row["verification_failure"],
            ),
        )


#: The prefix of every global id this API hands out.
GID_PREFIX = "gid://geosync/"


def global_id(class_name: str, row_id: int) -> str:
    """`gid://geosync/<class>/<id>`, GitLab's global id shape."""
    return f"{GID_PREFIX}{class_name}/{row_id}"


def parse_global_id(value: str, class_name: str | None = None) -> tuple[str | None, int]:
    """The class and id of a global id (a bare number is accepted too, of any class), or
    `ValueError` with a message fit for the client."""
    text = str(value).strip()
    if text.isdigit():
        return None, int(text)
    if not text.startswith(GID_PREFIX):
        raise ValueError(f"{value!r} is not a valid Global ID")
    found, _, number = text[len(GID_PREFIX) :].rpartition("/")
    if not found or not number.isdigit():
        raise ValueError(f"{value!r} is not a valid Global ID")
    if class_name is not None and found != class_name:
        raise ValueError(f"{value!r} does not represent an instance of {class_name}")
    return found, int(number)
