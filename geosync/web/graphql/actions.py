"""The blocking work behind the GraphQL resolvers and mutations (run in the thread pool).

Mutations answer as GitLab's do: a refused action is a message in the payload's `errors`,
not a GraphQL error, and the payload still says what the item is now.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from geosync.db.tables import geo_nodes
from geosync.errors import ConfigurationError, GeoError, ValidationError
from geosync.listing import Listing, ListingFilters, PageRequest
from geosync.nodes import Node
from geosync.registry import Registry
from geosync.states import SyncState, VerificationState
from geosync.verification import registry_verifiable
from geosync.web.graphql.types import parse_global_id

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.jobs import BulkJob
    from geosync.replicator import Replicator
    from geosync.web.graphql.context import GeoContext

#: GitLab's answer for an id that names nothing (or nothing the caller may see).
NOT_AVAILABLE = (
    "The resource that you are attempting to access does not exist or you don't have"
    " permission to perform this action"
)


def find_node(geo: Geo, name: str | None) -> tuple[Node, bool] | None:
    """The node called `name` (the current node without a name) and whether it is this site."""
    wanted = geo.settings.node_name if name is None else name
    with geo.main_engine.connect() as conn:
        row = conn.execute(select(geo_nodes).where(geo_nodes.c.name == wanted)).first()
    if row is None:
        return None
    node = Node.from_row(row._mapping)
    return node, node.name == geo.settings.node_name


def require_primary(geo: Geo, what: str) -> None:
    """`ConfigurationError` unless this site is the primary (it has no tracking database)."""
    if geo.has_tracking_database:
        raise ConfigurationError(f"{what} answers on the primary: this site is a secondary")


# -- one registry ------------------------------------------------------------------------------


def update_registry(
    geo: Geo, registry_id: str, chosen: str | None, action: str
) -> tuple[dict[str, Any] | None, type[Replicator], list[str]]:
    """Resync or reverify one registry; returns its row afterwards, its type and any errors."""
    replicator = _registry_replicator(geo, registry_id, chosen)
    _, row_id = parse_global_id(registry_id)
    if not geo.has_tracking_database:
        return None, replicator, ["Registries are updated on a secondary: this site is the primary"]
    registry = Registry(geo, replicator)
    with geo.tracking() as conn:
        row = _registry_row(conn, registry, row_id)
        if row is None:
            return None, replicator, [NOT_AVAILABLE]
        record_id = int(row[replicator.registry_foreign_key])
        try:
            if action == "resync":
                registry.resync(conn, record_id)
            else:
                registry_verifiable(geo, replicator).pending(conn, record_id)
        except GeoError as exc:
            return row, replicator, [str(exc)]
        after = _registry_row(conn, registry, row_id)
    from geosync.worker import notify_local_workers

    notify_local_workers(geo, "scheduler" if action == "resync" else "secondary_verification")
    return after, replicator, []


def _registry_replicator(geo: Geo, registry_id: str, chosen: str | None) -> type[Replicator]:
    try:
        found, _ = parse_global_id(registry_id)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    by_class = {f"Geo::{r.graphql_type_name}": r for r in geo.catalog}
    if found is not None and found not in by_class:
        raise ValidationError(f"{registry_id!r} does not represent a Geo registry")
    named = by_class[found] if found is not None else None
    picked = geo.catalog.get(chosen) if chosen is not None else None
    if named is not None and picked is not None and named is not picked:
        raise ValidationError(f"{registry_id!r} is not a {picked.registry_class_enum}")
    replicator = named or picked
    if replicator is None:
        raise ValidationError("give registryClass with a registry id that is a bare number")
    return replicator


def _registry_row(conn: Any, registry: Registry, row_id: int) -> dict[str, Any] | None:
    row = conn.execute(select(registry.table).where(registry.table.c.id == row_id)).first()
    return dict(row._mapping) if row else None


# -- bulk actions and jobs ---------------------------------------------------------------------


def bulk_registries(
    context: GeoContext,
    replicator: type[Replicator],
    action: str,
    ids: tuple[int, ...] | None,
    replication_state: SyncState | None,
    verification_state: VerificationState | None,
) -> tuple[BulkJob | None, list[str]]:
    """Queue a bulk resync or reverification of a secondary's registries as one job."""
    from geosync import jobs

    if not context.geo.has_tracking_database:
        return None, ["Registries are updated on a secondary: this site is the primary"]
    filters = jobs.JobFilters(ids, replication_state, verification_state)
    return _created(context, replicator, jobs.JobAction(action), filters)


def bulk_checksum(
    context: GeoContext,
    replicator: type[Replicator],
    ids: tuple[int, ...] | None,
    checksum_state: VerificationState | None,
) -> tuple[BulkJob | None, list[str]]:
    """Queue the primary's re-checksum of matching records as one job."""
    from geosync import jobs

    if context.geo.has_tracking_database:
        return None, ["Records are checksummed on the primary: this site is a secondary"]
    filters = jobs.JobFilters(ids, None, checksum_state)
    return _created(context, replicator, jobs.JobAction.REVERIFY, filters)


def _created(
    context: GeoContext, replicator: type[Replicator], action: Any, filters: Any
) -> tuple[BulkJob | None, list[str]]:
    from geosync import jobs

    try:
        return jobs.create_job(context.geo, replicator, action, filters, context.created_by), []
    except GeoError as exc:
        return None, [str(exc)]


def checksum_record(
    geo: Geo, replicator: type[Replicator], record_id: int
) -> tuple[dict[str, Any] | None, list[str]]:
    """Queue one record's checksum again on the primary; its listing row afterwards."""
    from geosync.reverification import reverify_one

    if geo.has_tracking_database:
        return None, ["Records are checksummed on the primary: this site is a secondary"]
    try:
        reverify_one(geo, replicator, record_id)
    except GeoError as exc:
        return _record_row(geo, replicator, record_id), [str(exc)]
    return _record_row(geo, replicator, record_id), []


def _record_row(geo: Geo, replicator: type[Replicator], record_id: int) -> dict[str, Any] | None:
    listing = Listing.model_records(geo, replicator)
    with geo.main_engine.connect() as conn:
        page = listing.page(conn, ListingFilters(ids=(record_id,)), PageRequest(first=1))
    return page.rows[0] if page.rows else None


def list_jobs(geo: Geo, states: list[str] | None, limit: int) -> list[BulkJob]:
    """The site's jobs, newest first."""
    from geosync import jobs

    wanted = [jobs.JobState(s) for s in states] if states is not None else None
    return jobs.list_jobs(geo, states=wanted, limit=limit)


def find_job(geo: Geo, job_id: str) -> BulkJob | None:
    """One job by its global id (or number), or None."""
    from geosync import jobs

    number = _job_number(job_id)
    try:
        return jobs.get_job(geo, number)
    except GeoError:
        return None


def cancel_job(geo: Geo, job_id: str) -> tuple[BulkJob | None, list[str]]:
    """Cancel a queued or running job; errors say why not."""
    from geosync import jobs

    number = _job_number(job_id)
    try:
        return jobs.cancel_job(geo, number), []
    except GeoError as exc:
        return find_job(geo, job_id), [str(exc)]


def _job_number(job_id: str) -> int:
    try:
        return parse_global_id(job_id, "Geo::BulkJob")[1]
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
