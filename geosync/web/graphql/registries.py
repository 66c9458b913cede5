"""The types generated from the catalog: one `<X>Registry` type and one `<x>Registries` field
of `GeoNode` per replicator, and the primary's data-management listing of model records.

Nothing here names a replicator: a new one in the catalog appears in the schema as it is.
"""

# No `from __future__ import annotations`: generated classes need their types as values.

from dataclasses import dataclass
from enum import Enum
from typing import Any

import strawberry
from sqlalchemy import Connection

from geosync.catalog import Catalog
from geosync.flags import flag_enabled
from geosync.listing import Listing, ListingFilters, PageRequest
from geosync.nodes import Node
from geosync.replicator import Replicator
from geosync.states import SyncState, VerificationState
from geosync.web.graphql.connections import build_connection, connection_types, empty_connection
from geosync.web.graphql.context import GeoContext
from geosync.web.graphql.types import (
    GeoModelRecord,
    GeoRegistrySort,
    RegistryState,
    ReplicationStateEnum,
    Time,
    VerificationStateEnum,
    global_id,
    parse_global_id,
)

#: Registry fields (ARCHITECTURE.md §10) beside `id`, `modelRecordId`, `<x>Id` and the states.
PLAIN_FIELDS: dict[str, Any] = {
    "retry_count": int | None,
    "retry_at": Time | None,
    "last_synced_at": Time | None,
    "last_sync_failure": str | None,
    "missing_on_primary": bool | None,
    "created_at": Time | None,
    "verification_checksum": str | None,
    "verification_checksum_mismatched": str | None,
    "checksum_mismatch": bool | None,
    "verification_failure": str | None,
    "verification_retry_count": int | None,
    "verification_retry_at": Time | None,
    "verification_started_at": Time | None,
    "verified_at": Time | None,
}


def registry_class_name(replicator: type[Replicator]) -> str:
    """The class part of a registry's global id (`Geo::UploadRegistry`)."""
    return f"Geo::{replicator.graphql_type_name}"


@dataclass(frozen=True)
class RegistryTypes:
    """The generated types of one replicator's registries."""

    replicator: type[Replicator]
    node: Any
    edge: Any
    connection: Any

    def registry(self, row: dict[str, Any]) -> Any:
        """The GraphQL object of one registry row."""
        key = self.replicator.registry_foreign_key
        values = {name: row[name] for name in PLAIN_FIELDS}
        return self.node(
            id=strawberry.ID(global_id(registry_class_name(self.replicator), row["id"])),
            model_record_id=row[key],
            state=RegistryState[SyncState(row["state"]).name],
            verification_state=VerificationStateEnum[
                VerificationState(row["verification_state"]).name
            ],
            **{key: strawberry.ID(str(row[key]))},
            **values,
        )


def registry_types(replicator: type[Replicator]) -> RegistryTypes:
    """Generate `<X>Registry`, its edge and its connection."""
    name = replicator.graphql_type_name
    annotations: dict[str, Any] = {
        "id": strawberry.ID,
        "model_record_id": int,
        replicator.registry_foreign_key: strawberry.ID,
        "state": RegistryState | None,
        "verification_state": VerificationStateEnum | None,
        **PLAIN_FIELDS,
    }
    node = strawberry.type(
        type(name, (), {"__annotations__": annotations}),
        name=name,
        description="The replication and verification state of one"
        f" {replicator.replicable_name.replace('_', ' ')} on a secondary.",
    )
    edge, connection = connection_types(node)
    return RegistryTypes(replicator, node, edge, connection)


# -- GeoNode -----------------------------------------------------------------------------------

#: GeoNode's own fields, copied from the node's record.
NODE_FIELDS: dict[str, Any] = {
    "name": str | None,
    "url": str | None,
    "internal_url": str | None,
    "primary": bool | None,
    "enabled": bool | None,
    "files_max_capacity": int | None,
    "repos_max_capacity": int | None,
    "verification_max_capacity": int | None,
    "container_repositories_max_capacity": int | None,
    "minimum_reverification_interval": int | None,
    "selective_sync_type": str | None,
    "selective_sync_shards": list[str] | None,
    "sync_object_storage": bool | None,
}


def geo_node_type(all_types: list[RegistryTypes]) -> Any:
    """`GeoNode`: the node's settings and one registries connection per replicator."""
    namespace: dict[str, Any] = {
        "__annotations__": {
            "id": strawberry.ID,
            **NODE_FIELDS,
            "record": strawberry.Private[Node],
            "current": strawberry.Private[bool],
        }
    }
    for types in all_types:
        namespace[types.replicator.graphql_field_name] = strawberry.field(
            resolver=_registries_resolver(types),
            description=f"Find {types.replicator.replicable_name.replace('_', ' ')} registries"
            " on this Geo node."
            " Absent (null) while the type's replication feature flag is off.",
        )
    return strawberry.type(
        type("GeoNode", (), namespace), name="GeoNode", description="A Geo site."
    )


def geo_node(node_type: Any, node: Node, current: bool) -> Any:
    """The GraphQL object of one node."""
    values = {name: getattr(node, name) for name in NODE_FIELDS}
    return node_type(
        id=strawberry.ID(global_id("GeoNode", node.id)), record=node, current=current, **values
    )


def _registries_resolver(types: RegistryTypes) -> Any:
    replicator = types.replicator

    async def resolve(
        root: Any,
        info: Any,
        ids: list[strawberry.ID] | None = None,
        replication_state: ReplicationStateEnum | None = None,
        verification_state: VerificationStateEnum | None = None,
        keyword: str | None = None,
        sort: GeoRegistrySort | None = None,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
    ) -> Any:
        context: GeoContext = info.context
        geo = context.geo
        filters = ListingFilters(
            ids=parse_ids(ids, registry_class_name(replicator)),
            replication_state=replication_state.state() if replication_state else None,
            verification_state=verification_state.state() if verification_state else None,
            keyword=keyword,
        )
        request = PageRequest(first, after, last, before, sort.value if sort else "ID_ASC")
        request.checked()
        if not await context.off_loop(_replicated, geo, replicator):
            return None
        if not root.current or not geo.has_tracking_database:
            return empty_connection(types.connection)
        listing = Listing.registries(geo, replicator)

        def read() -> Any:
            with geo.tracking_engine.connect() as conn:
                return listing.page(conn, filters, request)

        async def counter() -> int:
            return await context.off_loop(_count, geo.tracking_engine, listing, filters)

        page = await context.off_loop(read)
        nodes = [types.registry(row) for row in page.rows]
        return build_connection(types.connection, types.edge, page, nodes, counter)

    resolve.__annotations__ = {
        "root": Any,
        "info": strawberry.Info,
        "ids": list[strawberry.ID] | None,
        "replication_state": ReplicationStateEnum | None,
        "verification_state": VerificationStateEnum | None,
        "keyword": str | None,
        "sort": GeoRegistrySort | None,
        "first": int | None,
        "after": str | None,
        "last": int | None,
        "before": str | None,
        "return": types.connection | None,
    }
    return resolve


def _replicated(geo: Any, replicator: type[Replicator]) -> bool:
    with geo.main_engine.connect() as conn:
        return flag_enabled(conn, replicator)


def _count(engine: Any, listing: Listing, filters: ListingFilters) -> int:
    with engine.connect() as conn:
        return listing.count(conn, filters)


def parse_ids(ids: list[strawberry.ID] | None, class_name: str) -> tuple[int, ...] | None:
    """Registry or record ids from global ids (or bare numbers); `ValidationError` else."""
    from geosync.errors import ValidationError

    if ids is None:
        return None
    try:
        return tuple(parse_global_id(value, class_name)[1] for value in ids)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


# -- the primary's model records ---------------------------------------------------------------


def model_class_enum(catalog: Catalog) -> Any:
    """`GeoModelClass`: one value per replicator's model (`UPLOAD`, `PACKAGE_FILE`, ...)."""
    members = {r.replicable_name.upper(): r.replicable_name for r in catalog}
    generated: Any = Enum("GeoModelClass", members)
    return strawberry.enum(
        generated,
        name="GeoModelClass",
        description="The replicable models whose records the primary checksums.",
    )


def registry_class_enum(catalog: Catalog) -> Any:
    """`GeoRegistryClass`: one value per replicator (`UPLOAD_REGISTRY`, ...)."""
    members = {r.registry_class_enum: r.replicable_name for r in catalog}
    generated: Any = Enum("GeoRegistryClass", members)
    return strawberry.enum(
        generated,
        name="GeoRegistryClass",
        description="Geo registry class.",
    )


def model_record_types() -> tuple[Any, Any]:
    """The edge and connection of `GeoModelRecord`."""
    return connection_types(GeoModelRecord)


def model_records_page(
    context: GeoContext,
    replicator: type[Replicator],
    filters: ListingFilters,
    request: PageRequest,
) -> tuple[Listing, Any]:
    """One page of the primary's records of `replicator` (blocking)."""
    listing = Listing.model_records(context.geo, replicator)
    with context.geo.main_engine.connect() as conn:
        return listing, listing.page(conn, filters, request)


def count_records(context: GeoContext, listing: Listing, filters: ListingFilters) -> int:
    """The filtered total of a records listing (blocking)."""
    return _count(context.geo.main_engine, listing, filters)


def registry_row(conn: Connection, geo: Any, replicator: type[Replicator], row_id: int) -> Any:
    """The registry row with id `row_id`, as a dict, or None."""
    from sqlalchemy import select

    table = geo.tables.registry(replicator)
    row = conn.execute(select(table).where(table.c.id == row_id)).first()
    return dict(row._mapping) if row else None
