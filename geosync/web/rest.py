"""The admin REST API, GitLab-compatible: `/api/v4/geo_nodes` and its `/api/v4/geo_sites` alias.

Paths, parameters, JSON shapes, pagination headers and error codes follow GitLab's Geo nodes and
Geo sites APIs, so GitLab's clients (python-gitlab, scripts, dashboards) work unchanged. Every
endpoint needs an admin token; nodes are changed only on the primary. This site's bulk jobs
are under `current/bulk_jobs` (`geosync.web.jobs_api`), its promotion plan at
`current/promotion_plan` (`geosync.web.promotion_api`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qsl

import pydantic
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from sqlalchemy.exc import DataError, IntegrityError
from starlette.concurrency import run_in_threadpool

from geosync.app import Geo
from geosync.catalog import Catalog
from geosync.errors import InvalidTransition, NotFound
from geosync.nodes import NODE_SETTINGS, URL_PATTERN, Node, NodeSetting, NodeStore
from geosync.status import NodeStatus, compute_status, load_status, node_statuses
from geosync.web.admin_auth import require_admin
from geosync.web.deps import get_geo
from geosync.web.failures import FAILURE_TYPES, list_failures
from geosync.web.jobs_api import add_job_routes
from geosync.web.openapi import errors
from geosync.web.pagination import Page, page_params
from geosync.web.promotion_api import add_promotion_routes

MAX_ID = 2**31 - 1
COLLECTIONS = {"geo_nodes": "node", "geo_sites": "site"}
_NOT_BODY = {"page", "per_page", "private_token"}
PageDep = Annotated[Page, Depends(page_params)]
F = TypeVar("F", bound=Callable[..., Any])


# -- parameters --------------------------------------------------------------------------------

#: Documented on every text parameter that refuses NUL (enforced by `_no_nul`, with its message).
NO_NUL = "^[^\\x00]*$"
#: A name: something besides white space (the store strips it), and no NUL.
NAME_PATTERN = "^[^\\x00]*[^\\s\\x00][^\\x00]*$"


def _param_type(setting: NodeSetting) -> Any:
    """The request type of one node setting, with the bounds the database can hold.

    Only the settings whose null means something (no internal URL, no selective sync) take null.
    """
    if setting.kind == "count":
        return Annotated[int, Field(ge=setting.minimum, le=MAX_ID)]
    if setting.kind == "flag":
        return bool
    if setting.kind == "choice":
        return Literal[(*setting.choices, "")] | None
    if setting.kind == "ids":
        return list[Annotated[int, Field(ge=0, le=2**63 - 1)]]
    if setting.kind == "names":
        return list[Annotated[str, Field(max_length=255, json_schema_extra={"pattern": NO_NUL})]]
    url_or_empty = f"^$|{URL_PATTERN}"
    return Annotated[str, Field(max_length=254, json_schema_extra={"pattern": url_or_empty})] | None


_LISTS = [s.name for s in NODE_SETTINGS if s.kind in ("ids", "names")]
_INTEGERS = [s.name for s in NODE_SETTINGS if s.kind in ("count", "ids")]


class NodeParams(BaseModel):
    """Body of `POST` and `PUT`: a JSON object, or a url-encoded form (or query parameters, as
    GitLab accepts them), whose lists may also be comma-separated or repeated `key[]` fields.

    Every field is added by `_NodeParamsModel`, from `NODE_SETTINGS` and `_IDENTITY_FIELDS`;
    an absent field is unchanged, and only `changes()` is read.
    """

    model_config = ConfigDict(extra="ignore")

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        texts = value if isinstance(value, list) else [value]
        if any(isinstance(t, str) and "\x00" in t for t in texts):
            raise ValueError("must not contain NUL characters")
        return value

    @field_validator(*_INTEGERS, mode="before", check_fields=False)
    @classmethod
    def _integral(cls, value: Any) -> Any:
        # JSON's 3.0 is the integer 3 (JSON Schema says so); 3.5 stays a float, and is refused.
        def whole(v: Any) -> Any:
            return int(v) if isinstance(v, float) and v.is_integer() else v

        return [whole(v) for v in value] if isinstance(value, list) else whole(value)

    @field_validator(*_LISTS, mode="before", check_fields=False)
    @classmethod
    def _comma_list(cls, value: Any, info: ValidationInfo) -> Any:
        # A form's list may be one comma-separated field; JSON says what it means.
        if isinstance(value, str) and info.context == FORM:
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def changes(self) -> dict[str, Any]:
        """The settings the request names, in `NodeStore`'s terms."""
        values = {key: getattr(self, key) for key in self.model_fields_set}
        if "internal_url" in values and not values["internal_url"]:
            values["internal_url"] = None
        if values.get("selective_sync_type") == "":
            values["selective_sync_type"] = None
        return values


FORM = "form"
_IDENTITY_FIELDS: dict[str, Any] = {
    "name": (
        Annotated[
            str, Field(min_length=1, max_length=255, json_schema_extra={"pattern": NAME_PATTERN})
        ],
        None,
    ),
    "url": (
        Annotated[str, Field(max_length=254, json_schema_extra={"pattern": URL_PATTERN})],
        None,
    ),
    "primary": (bool, None),
}
_PARAM_FIELDS: dict[str, Any] = {s.name: (_param_type(s), None) for s in NODE_SETTINGS}
_NodeParamsModel = pydantic.create_model(
    "NodeParams",
    __base__=NodeParams,
    __doc__=NodeParams.__doc__,
    **_IDENTITY_FIELDS,
    **_PARAM_FIELDS,
)


def _body_schema(required: list[str], *, form: bool) -> dict[str, Any]:
    """The documented body: every field as `_NodeParamsModel` checks it, `required` named. A
    form has no null: there, an empty value clears a setting."""
    schema = _NodeParamsModel.model_json_schema()
    fields: dict[str, Any] = {}
    for name, field in schema["properties"].items():
        field = {k: v for k, v in field.items() if k not in ("default", "title")}
        if form and "anyOf" in field:
            (field,) = [choice for choice in field["anyOf"] if choice.get("type") != "null"]
        fields[name] = field
    return {
        "type": "object",
        "properties": fields,
        "required": required,
        "description": "A JSON object, or a url-encoded form (or query parameters, as GitLab "
        "accepts them) whose lists may also be comma-separated or repeated fields. A field left "
        "out is left unchanged.",
    }


def _request_body(required: list[str]) -> dict[str, Any]:
    """The documented body of `POST` (`required` fields) or `PUT` (none: an empty one is a
    no-op)."""
    content = {
        "application/json": {"schema": _body_schema(required, form=False)},
        "application/x-www-form-urlencoded": {"schema": _body_schema(required, form=True)},
    }
    return {"requestBody": {"required": bool(required), "content": content}}


async def read_params(request: Request) -> dict[str, Any]:
    """The node settings a request names: query string, then a JSON or form body over it.

    A JSON body is read strictly (its types are the document's); query and form fields are
    text, converted as GitLab converts them.
    """
    query = {k: v for k, v in request.query_params.items() if k not in _NOT_BODY and v != ""}
    changes = _validated(query, strict=False)
    content_type = request.headers.get("content-type", "")
    body = await request.body()
    if "json" in content_type or (body.strip().startswith(b"{") and "form" not in content_type):
        changes.update(_validated(_json_object(body), strict=True))
    elif body:
        changes.update(_validated(_form_fields(body, content_type), strict=False))
    return changes


def _validated(data: dict[str, Any], *, strict: bool) -> dict[str, Any]:
    try:
        params = _NodeParamsModel.model_validate(
            data, strict=strict, context=None if strict else FORM
        )
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise HTTPException(400, f"400 Bad request - {problems}") from None
    return params.changes()


def _form_fields(body: bytes, content_type: str) -> dict[str, Any]:
    # python-multipart is not a dependency: GitLab's clients send JSON or url-encoded forms.
    if "multipart" in content_type:
        raise HTTPException(400, "400 Bad request - send JSON or a url-encoded form")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(400, "400 Bad request - the form is not url-encoded") from None
    fields: dict[str, Any] = {}
    for key, value in pairs:
        name = key.removesuffix("[]")
        if key.endswith("[]") or (name in _LISTS and name in fields):
            listed = fields.get(name, [])
            fields[name] = [*(listed if isinstance(listed, list) else [listed]), value]
        else:
            fields[name] = value
    return fields


def _json_object(body: bytes) -> dict[str, Any]:
    def reject(name: str) -> Any:
        raise ValueError(name)

    try:
        data = json.loads(body or b"{}", parse_constant=reject)
    except ValueError:
        raise HTTPException(400, "400 Bad request - the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise HTTPException(400, "400 Bad request - the body must be a JSON object")
    return data


# -- JSON shapes -------------------------------------------------------------------------------


def node_json(
    geo: Geo, node: Node, base_url: str, collection: str, primary_url: str
) -> dict[str, Any]:
    """A node as GitLab's API shows it, with `_links` into `collection`."""
    api = f"{base_url}api/v4/{collection}/{node.id}"
    return {
        "id": node.id,
        "name": node.name,
        "url": node.url,
        "primary": node.primary,
        "current": node.name == geo.settings.node_name,
        **{setting.name: _plain(getattr(node, setting.name)) for setting in NODE_SETTINGS},
        "internal_url": node.effective_internal_url,
        "clone_protocol": "http",
        "web_edit_url": f"{primary_url}admin/geo/sites/{node.id}/edit",
        "_links": {"self": api, "status": f"{api}/status", "repair": f"{api}/repair"},
    }


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def status_json(status: NodeStatus, base_url: str, collection: str) -> dict[str, Any]:
    """A status as GitLab's API shows it, with `_links` to itself and its node."""
    api = f"{base_url}api/v4/{collection}/{status.geo_node_id}"
    links = {"self": f"{api}/status", COLLECTIONS[collection]: api}
    return {**status.for_api(), "_links": links}


class NodeLinks(BaseModel):
    """Links of a node."""

    self: str
    status: str
    repair: str


class _NodeOutBase(BaseModel):
    """A Geo node (site) as the API returns it."""

    model_config = ConfigDict(populate_by_name=True)

    id: int
    name: str
    url: str
    primary: bool
    current: bool
    clone_protocol: str
    web_edit_url: str
    links: NodeLinks = Field(alias="_links")


_OUT_TYPES: dict[str, Any] = {
    "count": int,
    "flag": bool,
    "choice": str | None,
    "ids": list[int],
    "names": list[str],
    "url": str,
}
#: The node's shape: the fields above and every setting, `internal_url` always filled in.
_OUT_FIELDS: dict[str, Any] = {s.name: (_OUT_TYPES[s.kind], ...) for s in NODE_SETTINGS}
NodeOut = pydantic.create_model(
    "NodeOut", __base__=_NodeOutBase, __doc__=_NodeOutBase.__doc__, **_OUT_FIELDS
)
#: A page of nodes (a derived model is a value to mypy, not a type).
NodeOutList: Any = list[NodeOut]  # type: ignore[valid-type]


# -- helpers -----------------------------------------------------------------------------------


def _base_url(request: Request) -> str:
    return str(request.base_url)


def _primary_url(geo: Geo, request: Request) -> str:
    primary = geo.primary_node()
    return primary.url if primary is not None else _base_url(request)


def _get_node(store: NodeStore, node_id: int) -> Node:
    try:
        if node_id > MAX_ID:
            raise NotFound
        return store.get(node_id)
    except NotFound:
        raise HTTPException(404, f"404 Geo node {node_id} Not Found") from None


def _require_writable(geo: Geo) -> None:
    primary = None if geo.main_readonly else geo.primary_node()
    writable = not geo.main_readonly and (primary is None or primary.name == geo.settings.node_name)
    if not writable:
        raise HTTPException(403, "403 Forbidden - nodes can only be changed on the primary site")


def _write(geo: Geo, action: Callable[[NodeStore], Node | None]) -> Node | None:
    try:
        with geo.main() as conn:
            return action(NodeStore(geo, conn))
    except InvalidTransition as exc:  # the primary removed, disabled or demoted; two primaries
        raise HTTPException(409, f"409 Conflict - {exc.message}") from None
    except IntegrityError:
        raise HTTPException(409, "409 Conflict - the node changed concurrently") from None
    except DataError:
        raise HTTPException(400, "400 Bad request - a value is out of range") from None


def _conflicts(store: NodeStore, changes: dict[str, Any], node_id: int | None) -> None:
    # GitLab answers a taken name with 409, where `NodeStore` says ValidationError (422).
    name = changes.get("name")
    if name is not None:
        other = store.find(name.strip())
        if other is not None and other.id != node_id:
            raise HTTPException(409, f"409 Conflict - a node named {name!r} exists")


def _paged(items: list[Any], total: int, page: Page, request: Request) -> JSONResponse:
    return JSONResponse(items, headers=page.headers(total, request.url))


# -- routes ------------------------------------------------------------------------------------


def _get_and_head(router: APIRouter, path: str, **options: Any) -> Callable[[F], F]:
    """Register a GET endpoint and its HEAD twin (separate OpenAPI operations)."""

    def register(endpoint: F) -> F:
        router.get(path, **options)(endpoint)
        router.head(path, **options)(endpoint)
        return endpoint

    return register


def build_router(collection: str, replicables: list[str]) -> APIRouter:
    """The routes of one collection (`geo_nodes` or its alias `geo_sites`); `replicables` are
    the names (singular and plural) `current/failures` takes as its `type`."""
    router = APIRouter(
        prefix=f"/api/v4/{collection}",
        tags=[collection],
        dependencies=[Depends(require_admin)],
        responses=errors(401, 403),
    )
    _add_node_routes(router, collection)
    _add_status_routes(router, collection, replicables)
    _add_write_routes(router, collection)
    add_job_routes(router)
    add_promotion_routes(router)
    return router


def _add_node_routes(router: APIRouter, collection: str) -> None:
    @_get_and_head(router, "", response_model=NodeOutList, responses=errors(400))
    def list_nodes(request: Request, page: PageDep) -> Response:
        """Every node, primary first (paginated)."""
        geo = get_geo(request)
        with geo.main_engine.connect() as conn:
            nodes = NodeStore(geo, conn).list()
        chosen = nodes[page.offset : page.offset + page.per_page]
        base, primary_url = _base_url(request), _primary_url(geo, request)
        items = [node_json(geo, n, base, collection, primary_url) for n in chosen]
        return _paged(items, len(nodes), page, request)

    @_get_and_head(router, "/{node_id:int}", response_model=NodeOut, responses=errors(404))
    def get_node(node_id: int, request: Request) -> Response:
        """One node."""
        geo = get_geo(request)
        with geo.main_engine.connect() as conn:
            node = _get_node(NodeStore(geo, conn), node_id)
        body = node_json(geo, node, _base_url(request), collection, _primary_url(geo, request))
        return JSONResponse(body)


def _add_status_routes(router: APIRouter, collection: str, replicables: list[str]) -> None:
    @_get_and_head(router, "/status", response_model=list[dict[str, Any]], responses=errors(400))
    def list_statuses(request: Request, page: PageDep) -> Response:
        """The latest status of every node that has one (this site's own is computed if it
        has none stored yet)."""
        geo = get_geo(request)
        statuses = [s for _node, s in node_statuses(geo, own_stored=True) if s is not None]
        chosen = statuses[page.offset : page.offset + page.per_page]
        items = [status_json(s, _base_url(request), collection) for s in chosen]
        return _paged(items, len(statuses), page, request)

    @_get_and_head(
        router,
        "/{node_id:int}/status",
        response_model=dict[str, Any],
        responses=errors(400, 404),
    )
    def get_status(
        node_id: int, request: Request, refresh: Annotated[bool, Query()] = False
    ) -> Response:
        """One node's latest stored status; this site's own is computed when it has none
        stored yet or when `refresh` asks for it."""
        geo = get_geo(request)
        with geo.main_engine.connect() as conn:
            node = _get_node(NodeStore(geo, conn), node_id)
            status = load_status(geo, conn, node_id)
        if node.name == geo.settings.node_name and (refresh or status is None):
            status = compute_status(geo)
        if status is None:
            raise HTTPException(404, f"404 Status of Geo node {node_id} Not Found")
        return JSONResponse(status_json(status, _base_url(request), collection))

    @_get_and_head(
        router,
        "/current/failures",
        response_model=list[dict[str, Any]],
        responses=errors(400),
    )
    def current_failures(
        request: Request,
        page: PageDep,
        # A default, not `Annotated`: the enum is this site's, known only in this closure.
        type: str | None = Query(
            None,
            description="Replicable name (singular or plural).",
            json_schema_extra={"enum": replicables},
        ),
        failure_type: Annotated[
            str,
            Query(
                description="The kind of failure.", json_schema_extra={"enum": list(FAILURE_TYPES)}
            ),
        ] = "sync",
    ) -> Response:
        """Sync or verification failures on this site (a secondary), paginated; the primary
        answers 403."""
        geo = get_geo(request)
        if not geo.has_tracking_database:
            raise HTTPException(403, "403 Forbidden - failures are listed on a secondary site only")
        if failure_type not in FAILURE_TYPES:
            raise HTTPException(
                400, f"400 Bad request - failure_type must be one of {', '.join(FAILURE_TYPES)}"
            )
        replicators = list(geo.catalog)
        if type is not None:
            try:
                replicators = [geo.catalog.get(type)]
            except NotFound as exc:
                raise HTTPException(400, f"400 Bad request - type: {exc}") from None
        total, items = list_failures(geo, replicators, failure_type, page)
        return _paged(items, total, page, request)


def _add_write_routes(router: APIRouter, collection: str) -> None:
    @router.post(
        "",
        status_code=201,
        response_model=NodeOut,
        responses=errors(400, 409, 422),
        openapi_extra=_request_body(["name", "url"]),
    )
    async def create_node(request: Request) -> Response:
        """Register a node (on the primary); `name` and `url` are required. A taken name, or a
        second primary, is refused (409)."""
        changes = await read_params(request)
        return await run_in_threadpool(_create, get_geo(request), changes, request, collection)

    @router.put(
        "/{node_id:int}",
        response_model=NodeOut,
        responses=errors(400, 404, 409, 422),
        openapi_extra=_request_body([]),
    )
    async def update_node(node_id: int, request: Request) -> Response:
        """Change a node's settings (on the primary). Disabling or demoting the primary, or
        making a node primary while another is, is refused (409)."""
        changes = await read_params(request)
        return await run_in_threadpool(
            _update, get_geo(request), node_id, changes, request, collection
        )

    @router.delete(
        "/{node_id:int}", status_code=204, response_class=Response, responses=errors(404, 409)
    )
    def delete_node(node_id: int, request: Request) -> Response:
        """Remove a secondary node (on the primary); its status goes with it. The primary
        itself is refused (409): promote another site first."""
        geo = get_geo(request)
        _require_writable(geo)

        def remove(store: NodeStore) -> None:
            store.remove(_get_node(store, node_id).id)

        _write(geo, remove)
        return Response(status_code=204)

    @router.post("/{node_id:int}/repair", response_model=NodeOut, responses=errors(404))
    def repair_node(node_id: int, request: Request) -> Response:
        """GitLab repairs a node's OAuth application here; geosync nodes have none to repair,
        so this confirms the node exists and returns it."""
        geo = get_geo(request)
        _require_writable(geo)
        with geo.main_engine.connect() as conn:
            node = _get_node(NodeStore(geo, conn), node_id)
        body = node_json(geo, node, _base_url(request), collection, _primary_url(geo, request))
        return JSONResponse(body)


def _create(geo: Geo, changes: dict[str, Any], request: Request, collection: str) -> Response:
    _require_writable(geo)
    missing = [key for key in ("name", "url") if not changes.get(key)]
    if missing:
        raise HTTPException(400, f"400 Bad request - {', '.join(missing)} is missing")

    def add(store: NodeStore) -> Node:
        _conflicts(store, changes, None)
        name, url = changes.pop("name"), changes.pop("url")
        primary = bool(changes.pop("primary", False))
        return store.add(name, url, primary=primary, **changes)

    node = _write(geo, add)
    assert node is not None
    body = node_json(geo, node, _base_url(request), collection, _primary_url(geo, request))
    return JSONResponse(body, status_code=201)


def _update(
    geo: Geo, node_id: int, changes: dict[str, Any], request: Request, collection: str
) -> Response:
    _require_writable(geo)

    def change(store: NodeStore) -> Node:
        node = _get_node(store, node_id)
        _conflicts(store, changes, node.id)
        # GitLab's PUT has no role; `NodeStore` refuses the role changes that would leave the
        # sites without their primary, rather than ignore them silently.
        return store.update(node.id, **changes)

    node = _write(geo, change)
    assert node is not None
    body = node_json(geo, node, _base_url(request), collection, _primary_url(geo, request))
    return JSONResponse(body)


def routers_for(catalog: Catalog) -> list[APIRouter]:
    """One router per collection, for a site of `catalog`; `geosync.web.app` includes both."""
    names = [
        n for r in catalog for n in dict.fromkeys((r.replicable_name, r.replicable_name_plural))
    ]
    return [build_router(collection, names) for collection in COLLECTIONS]
