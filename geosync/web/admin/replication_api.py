"""What the replication pages ask the GraphQL API: one page of registries or records, one item,
and the resync, reverify and checksum mutations — plus the checks every such page starts with
(a known data type, and this site's own node).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from geosync.errors import NotFound
from geosync.nodes import NodeStore
from geosync.web.admin.pages import graphql, not_found, page
from geosync.web.admin.session import AdminSession
from geosync.web.deps import get_geo

if TYPE_CHECKING:
    from geosync.replicator import Replicator

#: Rows on one list page.
PER_PAGE = 20
REPLICATION_STATES = ("pending", "started", "synced", "failed")
VERIFICATION_STATES = ("pending", "started", "succeeded", "failed", "disabled")

REGISTRY_FIELDS = (
    "id modelRecordId state retryCount retryAt lastSyncedAt lastSyncFailure missingOnPrimary"
    " createdAt verificationState verificationChecksum verificationChecksumMismatched"
    " checksumMismatch verificationFailure verificationRetryCount verificationRetryAt"
    " verificationStartedAt verifiedAt"
)
RECORD_FIELDS = (
    "id recordIdentifier modelClass createdAt checksumInformation { checksum checksumState"
    " lastChecksum checksumStartedAt checksumRetryCount checksumRetryAt checksumFailure }"
)
PAGE_INFO = "count pageInfo { startCursor endCursor hasNextPage hasPreviousPage }"
PAGING = "first: $first, after: $after, last: $last, before: $before"
PAGING_VARIABLES = "$first: Int, $after: String, $last: Int, $before: String"

NODE_QUERY = "{ geoNode { id name url primary } }"


def number_of(global_id: str) -> int:
    """The number at the end of a global id (`gid://geosync/Geo::UploadRegistry/12` -> 12)."""
    return int(str(global_id).rsplit("/", 1)[-1])


def label_of(replicator: type[Replicator], count: int | None = None) -> str:
    """ "upload", "3 package files": the type's name for people."""
    if count is None:
        return replicator.replicable_name.replace("_", " ")
    word = replicator.replicable_name if count == 1 else replicator.replicable_name_plural
    return f"{count} {word.replace('_', ' ')}"


@dataclass(frozen=True)
class Place:
    """The data type and this site's node a replication page is about."""

    replicator: type[Replicator]
    node_id: int
    primary: bool

    @property
    def list_path(self) -> str:
        """The type's list page on this node."""
        return self.replicator.names.admin_path(self.node_id)

    @property
    def model_class(self) -> str:
        """The `GeoModelClass` value of the type."""
        return self.replicator.replicable_name.upper()


async def place_of(
    request: Request, session: AdminSession, node_id: int, plural: str
) -> Place | HTMLResponse:
    """The page's `Place`, or the page that says why there is none: an unknown type, an unknown
    node, or another site's node (whose lists only that site's own admin UI serves)."""
    geo = get_geo(request)
    try:
        replicator = geo.catalog.get(plural)
    except NotFound:
        return not_found(request, session, f"There is no data type called {plural!r}.")
    node = (await graphql(request, session, NODE_QUERY)).get("geoNode")
    if node is None:
        return not_found(request, session, "This site is not registered as a Geo node.")
    if number_of(node["id"]) == node_id:
        return Place(replicator, node_id, bool(node["primary"]))
    try:
        other = await run_in_threadpool(_node, request, node_id)
    except NotFound:
        return not_found(request, session, f"There is no Geo site with id {node_id}.")
    return page(
        request,
        session,
        "replication_elsewhere.html",
        title=f"{label_of(replicator).capitalize()} replication on {other.name}",
        other=other,
        other_url=other.url.rstrip("/") + replicator.names.admin_path(node_id),
    )


def _node(request: Request, node_id: int) -> Any:
    geo = get_geo(request)
    with geo.main_engine.connect() as conn:
        return NodeStore(geo, conn).get(node_id)


@dataclass(frozen=True)
class Filters:
    """A list page's query parameters, checked: unknown states are dropped, not errors."""

    state: str = ""
    verification: str = ""
    keyword: str = ""
    after: str = ""
    before: str = ""

    @classmethod
    def of(cls, request: Request, primary: bool) -> Filters:
        """The filters in `request`'s query (on the primary the state is the checksum state)."""
        query = request.query_params
        if primary:
            state = query.get("checksum_state") or query.get("verification_state") or ""
            verification = state.lower() if state.lower() in VERIFICATION_STATES else ""
            return cls("", verification, *_text_params(request))
        state = query.get("replication_state", "").lower()
        verification = query.get("verification_state", "").lower()
        return cls(
            state if state in REPLICATION_STATES else "",
            verification if verification in VERIFICATION_STATES else "",
            *_text_params(request),
        )

    @property
    def active(self) -> bool:
        """Whether any filter narrows the list."""
        return bool(self.state or self.verification or self.keyword)

    def query(self, primary: bool, **cursor: str) -> str:
        """The query string of these filters and `cursor` (`after=` or `before=`)."""
        pairs = {
            "replication_state": self.state,
            ("checksum_state" if primary else "verification_state"): self.verification,
            "keyword": self.keyword,
            **cursor,
        }
        return urlencode({key: value for key, value in pairs.items() if value})

    def variables(self) -> dict[str, Any]:
        """The GraphQL variables of this page (20 rows forward, or backward from `before`)."""
        if self.before:
            paging: dict[str, Any] = {"last": PER_PAGE, "before": self.before}
        else:
            paging = {"first": PER_PAGE, "after": self.after or None}
        return {
            "state": self.state.upper() or None,
            "verification": self.verification.upper() or None,
            "keyword": self.keyword or None,
            **paging,
        }


def _text_params(request: Request) -> tuple[str, str, str]:
    query = request.query_params
    return (
        query.get("keyword", "").strip()[:200],
        query.get("after", "")[:500],
        query.get("before", "")[:500],
    )


@dataclass
class Listed:
    """One page of a list: its rows, its cursors and the filtered count; `enabled` is False
    while the type's replication flag is off."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    count: int = 0
    page_info: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True


async def registries_page(
    request: Request, session: AdminSession, place: Place, filters: Filters
) -> Listed:
    """One page of this secondary's registries of the type."""
    name = place.replicator.graphql_field_name
    query = (
        f"query($state: ReplicationStateEnum, $verification: VerificationStateEnum,"
        f" $keyword: String, {PAGING_VARIABLES}) {{ geoNode {{ {name}(replicationState: $state,"
        f" verificationState: $verification, keyword: $keyword, {PAGING}) {{ {PAGE_INFO}"
        f" nodes {{ {REGISTRY_FIELDS} }} }} }} }}"
    )
    data = await graphql(request, session, query, filters.variables())
    connection = (data.get("geoNode") or {}).get(name)
    if connection is None:
        return Listed(enabled=False)
    return _listed(connection)


async def records_page(
    request: Request, session: AdminSession, place: Place, filters: Filters
) -> Listed:
    """One page of the primary's records of the type with their checksum state."""
    query = (
        f"query($model: GeoModelClass!, $verification: VerificationStateEnum, $keyword: String,"
        f" {PAGING_VARIABLES}) {{ geoModelRecords(modelClass: $model, checksumState:"
        f" $verification, keyword: $keyword, {PAGING}) {{ {PAGE_INFO} nodes {{ {RECORD_FIELDS} }}"
        f" }} }}"
    )
    variables = filters.variables()
    variables.pop("state")
    data = await graphql(request, session, query, {"model": place.model_class, **variables})
    return _listed(data["geoModelRecords"])


def _listed(connection: dict[str, Any]) -> Listed:
    rows = [{**node, "number": number_of(node["id"])} for node in connection["nodes"] or []]
    return Listed(rows, int(connection["count"]), connection["pageInfo"])


async def one_registry(
    request: Request, session: AdminSession, place: Place, registry_id: int
) -> dict[str, Any] | None:
    """Registry `registry_id` of the type on this secondary, or None."""
    name = place.replicator.graphql_field_name
    query = (
        f"query($ids: [ID!]) {{ geoNode {{ {name}(ids: $ids) {{ nodes {{ {REGISTRY_FIELDS} }} }}"
        " } }"
    )
    data = await graphql(request, session, query, {"ids": [str(registry_id)]})
    nodes = ((data.get("geoNode") or {}).get(name) or {}).get("nodes") or []
    return {**nodes[0], "number": registry_id} if nodes else None


async def one_record(
    request: Request, session: AdminSession, place: Place, record_id: int
) -> dict[str, Any] | None:
    """Record `record_id` of the type on the primary, with its checksum state, or None."""
    query = (
        f"query($model: GeoModelClass!, $ids: [ID!]) {{ geoModelRecords(modelClass: $model,"
        f" ids: $ids) {{ nodes {{ {RECORD_FIELDS} }} }} }}"
    )
    data = await graphql(
        request, session, query, {"model": place.model_class, "ids": [str(record_id)]}
    )
    nodes = data["geoModelRecords"]["nodes"] or []
    return {**nodes[0], "number": record_id} if nodes else None


async def count_of(
    request: Request, session: AdminSession, place: Place, states: tuple[str | None, ...]
) -> int:
    """How many rows of the type have one of the replication (on the primary: checksum)
    `states`, None meaning any: one query with one aliased count per state."""
    variables: dict[str, Any] = {f"s{i}": state for i, state in enumerate(states)}
    if place.primary:
        declared = ", ".join(f"$s{i}: VerificationStateEnum" for i in range(len(states)))
        counts = " ".join(
            f"c{i}: geoModelRecords(modelClass: $model, checksumState: $s{i}, first: 1) {{ count }}"
            for i in range(len(states))
        )
        query = f"query($model: GeoModelClass!, {declared}) {{ {counts} }}"
        found = await graphql(request, session, query, {"model": place.model_class, **variables})
    else:
        name = place.replicator.graphql_field_name
        declared = ", ".join(f"$s{i}: ReplicationStateEnum" for i in range(len(states)))
        counts = " ".join(
            f"c{i}: {name}(replicationState: $s{i}, first: 1) {{ count }}"
            for i in range(len(states))
        )
        query = f"query({declared}) {{ geoNode {{ {counts} }} }}"
        found = (await graphql(request, session, query, variables)).get("geoNode") or {}
    return sum(int((found.get(f"c{i}") or {}).get("count", 0)) for i in range(len(states)))


def back_to(place: Place, back: str | None, **notice: str) -> RedirectResponse:
    """A 303 to `back` (a page of this type, else its list) with a notice in its query."""
    target = urlsplit(back or "")
    if not target.path.startswith(place.list_path) or target.netloc or target.scheme:
        target = urlsplit(place.list_path)
    kept = [(k, v) for k, v in parse_qsl(target.query) if k not in ("notice", "error")]
    kept += [(key, value[:500]) for key, value in notice.items() if value]
    return RedirectResponse(f"{target.path}?{urlencode(kept)}", status_code=303)


# -- actions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BulkAction:
    """A bulk button: its label, the mutation it runs and the rows it touches."""

    slug: str
    label: str
    #: `RESYNC_ALL` or `REVERIFY_ALL` on a secondary; None for the primary's re-checksum.
    action: str | None
    #: The replication state (on the primary: checksum state) of the rows touched, or None.
    state: str | None
    #: What the rows are queued for ("for resync").
    purpose: str
    #: The states of the rows the job will touch, as the jobs select them (a resync leaves
    #: pending and started rows alone, a reverification takes only synced ones); None: any.
    counted: tuple[str | None, ...] = (None,)
    #: Which rows those are, for people.
    scope: str = ""


SECONDARY_BULK = (
    BulkAction(
        "resync-all",
        "Resync all",
        "RESYNC_ALL",
        None,
        "for resync",
        ("SYNCED", "FAILED"),
        "Synced and failed rows only: pending ones are queued already, started ones are being"
        " synced.",
    ),
    BulkAction(
        "resync-failed",
        "Resync all failed",
        "RESYNC_ALL",
        "FAILED",
        "for resync",
        ("FAILED",),
        "Failed rows only.",
    ),
    BulkAction(
        "reverify-all",
        "Reverify all",
        "REVERIFY_ALL",
        None,
        "for reverification",
        ("SYNCED",),
        "Synced rows only: the others are verified once they are synced.",
    ),
)
PRIMARY_BULK = (
    BulkAction(
        "checksum-all",
        "Checksum all",
        None,
        None,
        "to be checksummed again",
        (None,),
        "Every record of this type on the primary.",
    ),
    BulkAction(
        "checksum-failed",
        "Checksum all failed",
        None,
        "FAILED",
        "to be checksummed again",
        ("FAILED",),
        "Records whose checksum failed only.",
    ),
)


def bulk_actions(place: Place) -> tuple[BulkAction, ...]:
    """The bulk buttons of `place`'s list."""
    return PRIMARY_BULK if place.primary else SECONDARY_BULK


async def update_registry(
    request: Request, session: AdminSession, place: Place, registry_id: int, action: str
) -> list[str]:
    """Resync or reverify (`action`) one registry; the mutation's `errors`."""
    query = (
        "mutation($id: ID!, $action: GeoRegistryAction!, $class: GeoRegistryClass) {"
        " geoRegistriesUpdate(input: {registryId: $id, action: $action, registryClass: $class})"
        " { errors } }"
    )
    variables = {
        "id": str(registry_id),
        "action": action,
        "class": place.replicator.registry_class_enum,
    }
    data = await graphql(request, session, query, variables)
    return list(data["geoRegistriesUpdate"]["errors"])


async def checksum_record(
    request: Request, session: AdminSession, place: Place, record_id: int
) -> list[str]:
    """Checksum one record again on the primary; the mutation's `errors`."""
    query = (
        "mutation($model: GeoModelClass!, $id: ID!) { geoModelRecordChecksum(input:"
        " {modelClass: $model, recordIdentifier: $id}) { errors } }"
    )
    variables = {"model": place.model_class, "id": str(record_id)}
    data = await graphql(request, session, query, variables)
    return list(data["geoModelRecordChecksum"]["errors"])


async def start_bulk(
    request: Request, session: AdminSession, place: Place, bulk: BulkAction
) -> tuple[dict[str, Any] | None, list[str]]:
    """Queue `bulk` as a job; the job (`id`, `total`) or None, and the mutation's `errors`."""
    if bulk.action is None:
        query = (
            "mutation($model: GeoModelClass!, $state: VerificationStateEnum) {"
            " result: geoModelRecordsBulkChecksum(input: {modelClass: $model,"
            " checksumState: $state}) { errors job { id total } } }"
        )
        variables: dict[str, Any] = {"model": place.model_class, "state": bulk.state}
    else:
        query = (
            "mutation($class: GeoRegistryClass!, $action: GeoRegistriesBulkAction!,"
            " $state: ReplicationStateEnum) { result: geoRegistriesBulkUpdate(input:"
            " {registryClass: $class, action: $action, replicationState: $state})"
            " { errors job { id total } } }"
        )
        variables = {
            "class": place.replicator.registry_class_enum,
            "action": bulk.action,
            "state": bulk.state,
        }
    result = (await graphql(request, session, query, variables))["result"]
    return result["job"], list(result["errors"])
