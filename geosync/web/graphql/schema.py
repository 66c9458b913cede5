"""The GraphQL schema of a site, generated from its catalog (ARCHITECTURE.md §10).

`build_schema(catalog)` makes the `Query` and `Mutation` types around the types generated per
replicator; the committed SDL (docs/graphql/schema.graphql) is this schema for the demo
catalog, and a test keeps the two equal.
"""

# No `from __future__ import annotations`: the classes below are built inside a function and
# their annotations name types that exist only there.

import threading
from typing import Annotated, Any, Union

import strawberry
from graphql import GraphQLError
from strawberry.extensions import MaskErrors, MaxAliasesLimiter, MaxTokensLimiter
from strawberry.schema.config import StrawberryConfig

from geosync.catalog import Catalog
from geosync.errors import GeoError, ValidationError
from geosync.listing import ListingFilters, PageRequest
from geosync.log import get_logger
from geosync.web.graphql import actions
from geosync.web.graphql.connections import build_connection
from geosync.web.graphql.context import GeoContext
from geosync.web.graphql.limits import QueryLimits
from geosync.web.graphql.registries import (
    count_records,
    geo_node,
    geo_node_type,
    model_class_enum,
    model_record_types,
    model_records_page,
    parse_ids,
    registry_class_enum,
    registry_types,
)
from geosync.web.graphql.types import (
    SCALARS,
    GeoBulkJob,
    GeoBulkJobState,
    GeoModelRecord,
    GeoRegistriesBulkAction,
    GeoRegistryAction,
    GeoRegistrySort,
    ReplicationStateEnum,
    VerificationStateEnum,
)

log = get_logger("graphql")

#: The most jobs `geoBulkJobs` returns.
MAX_JOBS = 100


_built: dict[tuple[type, ...], strawberry.Schema] = {}
_built_lock = threading.Lock()


def build_schema(catalog: Catalog) -> strawberry.Schema:
    """The schema of a site whose replicators are `catalog`, built once per set of replicator
    classes: resolvers find their site in the request's context, so sites with the same
    replicators (every web process of a site, the sites of one test run) share it."""
    key = tuple(catalog)
    with _built_lock:
        found = _built.get(key)
        if found is None:
            found = _built[key] = _build_schema(catalog)
        return found


def _build_schema(catalog: Catalog) -> strawberry.Schema:
    all_types = [registry_types(r) for r in catalog]
    by_name = {t.replicator.replicable_name: t for t in all_types}
    GeoNode = geo_node_type(all_types)
    GeoRegistryClass = registry_class_enum(catalog)
    GeoModelClass = model_class_enum(catalog)
    RecordEdge, RecordConnection = model_record_types()
    Registrable = Annotated[
        Union[tuple(t.node for t in all_types)],  # noqa: UP007
        strawberry.union("Registrable", description="Geo registries."),
    ]

    @strawberry.type
    class Query:
        @strawberry.field(description="Find a Geo node: without a name, the current node.")
        async def geo_node(self, info: strawberry.Info, name: str | None = None) -> GeoNode | None:
            context: GeoContext = info.context
            found = await context.off_loop(actions.find_node, context.geo, name)
            return None if found is None else geo_node(GeoNode, *found)

        @strawberry.field(
            description="The primary's records of one model with their checksum state"
            " (data management). Answers on the primary only."
        )
        async def geo_model_records(
            self,
            info: strawberry.Info,
            model_class: GeoModelClass,
            ids: list[strawberry.ID] | None = None,
            checksum_state: VerificationStateEnum | None = None,
            keyword: str | None = None,
            sort: GeoRegistrySort | None = None,
            first: int | None = None,
            after: str | None = None,
            last: int | None = None,
            before: str | None = None,
        ) -> RecordConnection:
            context: GeoContext = info.context
            replicator = context.geo.catalog.get(model_class.value)
            class_name = replicator.model.__name__
            filters = ListingFilters(
                ids=parse_ids(ids, class_name),
                verification_state=checksum_state.state() if checksum_state else None,
                keyword=keyword,
            )
            request = PageRequest(first, after, last, before, sort.value if sort else "ID_ASC")
            await context.off_loop(actions.require_primary, context.geo, "geoModelRecords")
            listing, page = await context.off_loop(
                model_records_page, context, replicator, filters, request.checked()
            )

            async def counter() -> int:
                return await context.off_loop(count_records, context, listing, filters)

            nodes = [GeoModelRecord.of(class_name, row) for row in page.rows]
            return build_connection(RecordConnection, RecordEdge, page, nodes, counter)

        @strawberry.field(description="Bulk jobs of this site, newest first.")
        async def geo_bulk_jobs(
            self,
            info: strawberry.Info,
            state: list[GeoBulkJobState] | None = None,
            first: int | None = 50,
        ) -> list[GeoBulkJob]:
            context: GeoContext = info.context
            limit = MAX_JOBS if first is None else first
            if not 0 <= limit <= MAX_JOBS:
                raise ValidationError(f"first must be between 0 and {MAX_JOBS}, got {first}")
            states = [s.value for s in state] if state is not None else None
            jobs = await context.off_loop(actions.list_jobs, context.geo, states, limit)
            return [GeoBulkJob.of(job) for job in jobs]

        @strawberry.field(description="One bulk job.")
        async def geo_bulk_job(self, info: strawberry.Info, id: strawberry.ID) -> GeoBulkJob | None:
            context: GeoContext = info.context
            job = await context.off_loop(actions.find_job, context.geo, id)
            return None if job is None else GeoBulkJob.of(job)

    @strawberry.input(name="GeoRegistriesUpdateInput")
    class GeoRegistriesUpdateInput:
        registry_id: strawberry.ID = strawberry.field(description="ID of the registry.")
        action: GeoRegistryAction = strawberry.field(description="Action to perform.")
        registry_class: GeoRegistryClass | None = strawberry.field(
            default=None, description="Class of the registry (read from registryId when absent)."
        )
        client_mutation_id: str | None = None

    @strawberry.type(name="GeoRegistriesUpdatePayload")
    class GeoRegistriesUpdatePayload:
        client_mutation_id: str | None
        errors: list[str]
        registry: Registrable | None

    @strawberry.input(name="GeoRegistriesBulkUpdateInput")
    class GeoRegistriesBulkUpdateInput:
        registry_class: GeoRegistryClass
        action: GeoRegistriesBulkAction
        ids: list[strawberry.ID] | None = None
        replication_state: ReplicationStateEnum | None = None
        verification_state: VerificationStateEnum | None = None
        client_mutation_id: str | None = None

    @strawberry.type(name="GeoRegistriesBulkUpdatePayload")
    class GeoRegistriesBulkUpdatePayload:
        client_mutation_id: str | None
        errors: list[str]
        registry_class: GeoRegistryClass | None
        job: GeoBulkJob | None

    @strawberry.input(name="GeoModelRecordChecksumInput")
    class GeoModelRecordChecksumInput:
        model_class: GeoModelClass
        record_identifier: strawberry.ID
        client_mutation_id: str | None = None

    @strawberry.type(name="GeoModelRecordChecksumPayload")
    class GeoModelRecordChecksumPayload:
        client_mutation_id: str | None
        errors: list[str]
        model_record: GeoModelRecord | None

    @strawberry.input(name="GeoModelRecordsBulkChecksumInput")
    class GeoModelRecordsBulkChecksumInput:
        model_class: GeoModelClass
        ids: list[strawberry.ID] | None = None
        checksum_state: VerificationStateEnum | None = None
        client_mutation_id: str | None = None

    @strawberry.type(name="GeoModelRecordsBulkChecksumPayload")
    class GeoModelRecordsBulkChecksumPayload:
        client_mutation_id: str | None
        errors: list[str]
        model_class: GeoModelClass | None
        job: GeoBulkJob | None

    @strawberry.input(name="GeoBulkJobCancelInput")
    class GeoBulkJobCancelInput:
        id: strawberry.ID
        client_mutation_id: str | None = None

    @strawberry.type(name="GeoBulkJobCancelPayload")
    class GeoBulkJobCancelPayload:
        client_mutation_id: str | None
        errors: list[str]
        job: GeoBulkJob | None

    @strawberry.type
    class Mutation:
        @strawberry.mutation(description="Resync or reverify one registry on this secondary.")
        async def geo_registries_update(
            self, info: strawberry.Info, input: GeoRegistriesUpdateInput
        ) -> GeoRegistriesUpdatePayload:
            context: GeoContext = info.context
            chosen = input.registry_class.value if input.registry_class else None
            row, replicator, errors = await context.off_loop(
                actions.update_registry, context.geo, input.registry_id, chosen, input.action.value
            )
            registry = by_name[replicator.replicable_name].registry(row) if row else None
            return GeoRegistriesUpdatePayload(
                client_mutation_id=input.client_mutation_id, errors=errors, registry=registry
            )

        @strawberry.mutation(
            description="Resync or reverify every matching registry, as a background job."
        )
        async def geo_registries_bulk_update(
            self, info: strawberry.Info, input: GeoRegistriesBulkUpdateInput
        ) -> GeoRegistriesBulkUpdatePayload:
            context: GeoContext = info.context
            replicator = context.geo.catalog.get(input.registry_class.value)
            job, errors = await context.off_loop(
                actions.bulk_registries,
                context,
                replicator,
                input.action.value,
                parse_ids(input.ids, f"Geo::{replicator.graphql_type_name}"),
                input.replication_state.state() if input.replication_state else None,
                input.verification_state.state() if input.verification_state else None,
            )
            return GeoRegistriesBulkUpdatePayload(
                client_mutation_id=input.client_mutation_id,
                errors=errors,
                registry_class=input.registry_class,
                job=GeoBulkJob.of(job) if job else None,
            )

        @strawberry.mutation(description="Checksum one record again on the primary.")
        async def geo_model_record_checksum(
            self, info: strawberry.Info, input: GeoModelRecordChecksumInput
        ) -> GeoModelRecordChecksumPayload:
            context: GeoContext = info.context
            replicator = context.geo.catalog.get(input.model_class.value)
            class_name = replicator.model.__name__
            record_id = (parse_ids([input.record_identifier], class_name) or (0,))[0]
            row, errors = await context.off_loop(
                actions.checksum_record, context.geo, replicator, record_id
            )
            return GeoModelRecordChecksumPayload(
                client_mutation_id=input.client_mutation_id,
                errors=errors,
                model_record=GeoModelRecord.of(class_name, row) if row else None,
            )

        @strawberry.mutation(
            description="Checksum every matching record again on the primary, as a job."
        )
        async def geo_model_records_bulk_checksum(
            self, info: strawberry.Info, input: GeoModelRecordsBulkChecksumInput
        ) -> GeoModelRecordsBulkChecksumPayload:
            context: GeoContext = info.context
            replicator = context.geo.catalog.get(input.model_class.value)
            job, errors = await context.off_loop(
                actions.bulk_checksum,
                context,
                replicator,
                parse_ids(input.ids, replicator.model.__name__),
                input.checksum_state.state() if input.checksum_state else None,
            )
            return GeoModelRecordsBulkChecksumPayload(
                client_mutation_id=input.client_mutation_id,
                errors=errors,
                model_class=input.model_class,
                job=GeoBulkJob.of(job) if job else None,
            )

        @strawberry.mutation(description="Cancel a queued or running bulk job.")
        async def geo_bulk_job_cancel(
            self, info: strawberry.Info, input: GeoBulkJobCancelInput
        ) -> GeoBulkJobCancelPayload:
            context: GeoContext = info.context
            job, errors = await context.off_loop(actions.cancel_job, context.geo, input.id)
            return GeoBulkJobCancelPayload(
                client_mutation_id=input.client_mutation_id,
                errors=errors,
                job=GeoBulkJob.of(job) if job else None,
            )

    return _Schema(
        query=Query,
        mutation=Mutation,
        config=StrawberryConfig(scalar_map=SCALARS),
        extensions=[
            QueryLimits,
            lambda: MaxAliasesLimiter(max_alias_count=QueryLimits.MAX_ALIASES),
            lambda: MaxTokensLimiter(max_token_count=QueryLimits.MAX_TOKENS),
            lambda: MaskErrors(should_mask_error=_unexpected),
        ],
    )


class _Schema(strawberry.Schema):
    """A schema that logs a client's mistake as one line and only a bug with its traceback."""

    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        """Log each error of a request once (never a secret: messages carry no tokens)."""
        unexpected = [e for e in errors if _unexpected(e)]
        for error in errors:
            if not _unexpected(error):
                log.info("graphql request refused", error=error.message)
        super().process_errors(unexpected, execution_context)


def _unexpected(error: Any) -> bool:
    """Mask every error but geosync's own and GraphQL's (a bug's text never reaches a client)."""
    original = getattr(error, "original_error", None)
    return original is not None and not isinstance(original, (GeoError, GraphQLError))


def schema_sdl(catalog: Catalog) -> str:
    """The schema of `catalog` in SDL, as committed in docs/graphql/schema.graphql."""
    return build_schema(catalog).as_str() + "\n"
