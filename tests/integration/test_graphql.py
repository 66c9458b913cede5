"""The GraphQL registries API, served by uvicorn on loopback and called over real HTTP, on both
databases: auth, every argument and sort, keyset pages while rows change, counts, flags,
limits and malformed queries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text, update

from geosync.clock import FrozenClock
from geosync.demo.replicators import PackageFileReplicator, UploadReplicator
from geosync.flags import set_flag
from geosync.registry import Registry
from geosync.states import VerificationState
from geosync.testing import SitePair
from geosync.web.graphql.schema import schema_sdl
from tests.graphql_client import COUNT, GraphQLSite, seed, served_graphql

ROOT = Path(__file__).resolve().parents[2]

FIELDS = """id modelRecordId uploadId state retryCount retryAt lastSyncedAt lastSyncFailure
missingOnPrimary createdAt verificationState verificationChecksum verificationChecksumMismatched
checksumMismatch verificationFailure verificationRetryCount verificationRetryAt
verificationStartedAt verifiedAt"""


@pytest.fixture
def api(sites: SitePair, clock: FrozenClock) -> Iterator[GraphQLSite]:
    seed(sites, clock)
    with served_graphql(sites, sites.secondary) as site:
        yield site


def uploads(api: GraphQLSite, arguments: str = "", fields: str = "uploadId") -> dict[str, Any]:
    query = f"""{{ geoNode {{ uploadRegistries{arguments} {{
        nodes {{ {fields} }} pageInfo {{ startCursor endCursor hasNextPage hasPreviousPage }}
        count }} }} }}"""
    connection: dict[str, Any] = api.run(query)["geoNode"]["uploadRegistries"]
    return connection


def ids_of(connection: dict[str, Any]) -> list[int]:
    return [int(node["uploadId"]) for node in connection["nodes"]]


# -- auth --------------------------------------------------------------------------------------


def test_no_token_is_401_and_a_non_admin_token_403_with_a_graphql_error_and_no_data(
    api: GraphQLSite,
) -> None:
    query = "{ geoNode { name uploadRegistries { count } } }"
    missing = api.post(query)
    wrong = api.post(query, headers={"PRIVATE-TOKEN": "glpat-not-a-token"})
    reader = api.post(query, headers={"PRIVATE-TOKEN": api.non_admin})
    bearer = api.post(query, headers={"Authorization": f"Bearer {api.admin}"})

    assert (missing.status_code, wrong.status_code, reader.status_code) == (401, 401, 403)
    for response in (missing, wrong, reader):
        body = response.json()
        assert body["data"] is None
        assert body["errors"][0]["message"] in ("401 Unauthorized", "403 Forbidden")
    assert bearer.status_code == 200
    assert bearer.json()["data"]["geoNode"]["uploadRegistries"]["count"] == COUNT


# -- the node and its registries ---------------------------------------------------------------


def test_geo_node_is_the_current_node_and_another_node_answers_empty(api: GraphQLSite) -> None:
    data = api.run(
        """{ me: geoNode { name primary url filesMaxCapacity uploadRegistries { count } }
             other: geoNode(name: "primary") {
               name primary uploadRegistries { count nodes { id } } }
             none: geoNode(name: "nowhere") { name } }"""
    )

    assert data["me"]["name"] == "secondary" and data["me"]["primary"] is False
    assert data["me"]["filesMaxCapacity"] == 10
    assert data["me"]["uploadRegistries"]["count"] == COUNT
    assert data["other"]["primary"] is True
    assert data["other"]["uploadRegistries"] == {"count": 0, "nodes": []}
    assert data["none"] is None


def test_a_registry_carries_every_field_with_gitlab_shapes(api: GraphQLSite) -> None:
    node = uploads(api, '(ids: ["3"])', FIELDS)["nodes"][0]

    assert node["id"].startswith("gid://geosync/Geo::UploadRegistry/")
    assert node["uploadId"] == "3" and node["modelRecordId"] == 3
    assert node["state"] == "SYNCED" and node["verificationState"] == "SUCCEEDED"
    assert node["verificationChecksum"] == f"{3:064x}"
    assert node["lastSyncedAt"].endswith("+00:00")
    assert node["missingOnPrimary"] is False and node["checksumMismatch"] is False
    assert set(node) == set(FIELDS.split())


def test_filters_by_state_verification_ids_and_keyword_with_filtered_counts(
    api: GraphQLSite,
) -> None:
    synced = uploads(api, "(replicationState: SYNCED)")
    failed = uploads(api, "(replicationState: FAILED)")
    verified = uploads(api, "(verificationState: SUCCEEDED)")
    pending_verified = uploads(api, "(replicationState: PENDING, verificationState: SUCCEEDED)")
    gid = "gid://geosync/Geo::UploadRegistry/"
    by_ids = uploads(api, f'(ids: ["{gid}2", "{gid}4", "9"])')
    keyword = uploads(api, '(keyword: "dir1/")')

    assert ids_of(synced) == list(range(3, 31, 3)) and synced["count"] == 10
    assert ids_of(failed) == [5, 10, 20, 25] and failed["count"] == 4
    assert ids_of(verified) == ids_of(synced)
    assert pending_verified == {**pending_verified, "nodes": [], "count": 0}
    assert ids_of(by_ids) == [2, 4, 9] and by_ids["count"] == 3
    assert ids_of(keyword) == [i for i in range(1, 31) if i % 3 == 1]
    assert keyword["count"] == 10


@pytest.mark.parametrize(
    ("sort", "column", "descending"),
    [
        ("ID_ASC", "id", False),
        ("ID_DESC", "id", True),
        ("VERIFIED_AT_ASC", "verifiedAt", False),
        ("VERIFIED_AT_DESC", "verifiedAt", True),
        ("LAST_SYNCED_AT_ASC", "lastSyncedAt", False),
        ("LAST_SYNCED_AT_DESC", "lastSyncedAt", True),
    ],
)
def test_every_sort_orders_the_rows_with_missing_times_last_ascending(
    api: GraphQLSite, sort: str, column: str, descending: bool
) -> None:
    nodes = uploads(api, f"(sort: {sort})", "uploadId id verifiedAt lastSyncedAt")["nodes"]

    def key(node: dict[str, Any]) -> tuple[bool, Any, int]:
        number = int(node["id"].rsplit("/", 1)[1])
        if column == "id":
            return (False, number, number)
        return (node[column] is None, node[column] or "", number)

    expected = sorted(nodes, key=key, reverse=descending)
    assert [n["uploadId"] for n in nodes] == [n["uploadId"] for n in expected]
    assert len(nodes) == COUNT
    assert len({n[column] for n in nodes}) > 2  # the sort had values to order


# -- keyset pagination -------------------------------------------------------------------------


def walk(api: GraphQLSite, sort: str, size: int, forward: bool = True) -> list[int]:
    seen: list[int] = []
    cursor = ""
    while True:
        if forward:
            page = uploads(api, f'(sort: {sort}, first: {size}, after: "{cursor}")')
            seen += ids_of(page)
            more, cursor = page["pageInfo"]["hasNextPage"], page["pageInfo"]["endCursor"]
        else:
            page = uploads(api, f'(sort: {sort}, last: {size}, before: "{cursor}")')
            seen = ids_of(page) + seen
            more, cursor = page["pageInfo"]["hasPreviousPage"], page["pageInfo"]["startCursor"]
        assert page["count"] == COUNT
        if not more:
            return seen


@pytest.mark.parametrize("sort", ["ID_ASC", "ID_DESC", "LAST_SYNCED_AT_DESC", "VERIFIED_AT_ASC"])
def test_pages_forward_and_back_cover_every_row_once(api: GraphQLSite, sort: str) -> None:
    whole = ids_of(uploads(api, f"(sort: {sort})"))

    assert walk(api, sort, 7) == whole
    assert walk(api, sort, 7, forward=False) == whole


def test_a_cursor_stays_correct_while_rows_change_state(api: GraphQLSite, sites: SitePair) -> None:
    first = uploads(api, "(replicationState: PENDING, first: 5)")
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        for record in ids_of(first)[:3]:  # rows already listed leave the filter
            registry.synced(conn, record, registry.start(conn, record))
        registry.insert_pending(conn, [31])  # a new row behind the cursor's end
    after = first["pageInfo"]["endCursor"]
    rest = uploads(api, f'(replicationState: PENDING, first: 100, after: "{after}")')

    pending_before = [i for i in range(1, 31) if i % 3 and i % 5]
    assert ids_of(first) == pending_before[:5]
    assert ids_of(rest) == [*pending_before[5:], 31]
    assert rest["pageInfo"]["hasPreviousPage"] is True
    assert rest["count"] == len(pending_before) - 3 + 1


def test_a_backward_cursor_stays_correct_while_rows_change_state(
    api: GraphQLSite, sites: SitePair
) -> None:
    last = uploads(api, "(replicationState: PENDING, last: 4)")
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        for record in ids_of(last):  # the rows already listed leave the filter
            registry.synced(conn, record, registry.start(conn, record))
        registry.insert_pending(conn, [31])  # a new row after the cursor: not in earlier pages
    before = last["pageInfo"]["startCursor"]
    earlier = uploads(api, f'(replicationState: PENDING, last: 100, before: "{before}")')

    pending_before = [i for i in range(1, 31) if i % 3 and i % 5]
    assert ids_of(last) == pending_before[-4:]
    assert ids_of(earlier) == pending_before[:-4]
    assert earlier["pageInfo"]["hasNextPage"] is True
    assert earlier["pageInfo"]["hasPreviousPage"] is False


def test_first_and_last_are_capped_and_bad_cursors_are_refused(api: GraphQLSite) -> None:
    def message(arguments: str) -> str:
        query = f"{{ geoNode {{ uploadRegistries{arguments} {{ count }} }} }}"
        return api.errors(query)[0]

    assert "first must be between 0 and 100" in message("(first: 101)")
    assert "last must be between 0 and 100" in message("(last: 100000)")
    assert "first or last" in message("(first: 1, last: 1)")
    assert "invalid cursor" in message('(after: "not-a-cursor")')
    id_cursor = uploads(api, "(first: 1)")["pageInfo"]["endCursor"]
    assert "not made for sort" in message(f'(sort: ID_DESC, after: "{id_cursor}")')
    assert len(uploads(api, "")["nodes"]) == COUNT  # no first: a full page (up to 100)


def test_a_type_whose_flag_is_off_answers_null(api: GraphQLSite, sites: SitePair) -> None:
    with sites.primary.main() as conn:
        set_flag(
            conn,
            sites.primary.catalog,
            UploadReplicator.replication_flag_name,
            False,
            sites.primary.clock.now(),
        )
    data = api.run("{ geoNode { uploadRegistries { count } packageFileRegistries { count } } }")

    assert data["geoNode"] == {"uploadRegistries": None, "packageFileRegistries": {"count": 0}}


# -- malformed and oversized queries -----------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("{ geoNode { name ", "Syntax Error"),
        ("{ geoNode { nosuchfield } }", "Cannot query field 'nosuchfield'"),
        ("{ geoNode { uploadRegistries(replicationState: DONE) { count } } }", "DONE"),
        ('{ geoNode { uploadRegistries(first: "ten") { count } } }', "Int cannot represent"),
        ("mutation { nothing }", "Cannot query field 'nothing'"),
    ],
)
def test_malformed_queries_get_errors_not_500s(api: GraphQLSite, query: str, expected: str) -> None:
    messages = api.errors(query)

    assert any(expected in m for m in messages), messages


def test_deep_wide_and_alias_heavy_queries_are_refused_before_running(api: GraphQLSite) -> None:
    def nested(levels: int) -> str:
        inner = "name"
        for _ in range(levels):
            inner = f"ofType {{ {inner} }}"
        return f"{{ __schema {{ types {{ fields {{ type {{ {inner} }} }} }} }} }}"

    wide = (
        "{ "
        + " ".join(
            f"n{i}: geoNode {{ uploadRegistries(first: 100) {{ nodes {{ {FIELDS} }} }} }}"
            for i in range(5)
        )
        + " }"
    )
    aliases = "{ " + " ".join(f"a{i}: geoNode {{ name }}" for i in range(40)) + " }"

    assert "__schema" in api.run(nested(7))  # depth 12: the limit
    assert "Query has depth of 13, which exceeds max depth of 12" in api.errors(nested(8))[0]
    assert "exceeds max complexity of 10000" in api.errors(wide)[0]
    assert "aliases" in api.errors(aliases)[0].lower()


# -- the primary's data management -------------------------------------------------------------


@pytest.fixture
def primary_api(sites: SitePair, clock: FrozenClock) -> Iterator[GraphQLSite]:
    seed(sites, clock)
    states = sites.primary.tables.state(UploadReplicator)
    assert states is not None
    with sites.primary.main() as conn:
        conn.execute(
            update(states)
            .where(states.c.upload_id.in_([4, 8]))
            .values(verification_state=int(VerificationState.FAILED), verification_failure="gone")
        )
        conn.execute(
            update(states)
            .where(states.c.upload_id.in_([1, 2]))
            .values(
                verification_state=int(VerificationState.SUCCEEDED),
                verification_checksum="c" * 64,
                verified_at=clock.now(),
            )
        )
    with served_graphql(sites, sites.primary) as site:
        yield site


RECORDS = """{{ geoModelRecords(modelClass: {model}{arguments}) {{ count
  nodes {{ id recordIdentifier modelClass checksumInformation {{ checksum checksumState
  lastChecksum checksumRetryCount checksumFailure }} }}
  pageInfo {{ hasNextPage endCursor }} }} }}"""


def records(api: GraphQLSite, arguments: str = "", model: str = "UPLOAD") -> dict[str, Any]:
    query = RECORDS.format(model=model, arguments=arguments)
    result: dict[str, Any] = api.run(query)["geoModelRecords"]
    return result


def test_the_primary_lists_its_records_with_their_checksum_state(
    primary_api: GraphQLSite,
) -> None:
    every = records(primary_api)
    failed = records(primary_api, ", checksumState: FAILED")
    succeeded = records(primary_api, ", checksumState: SUCCEEDED, sort: VERIFIED_AT_DESC")
    keyword = records(primary_api, ', keyword: "file-2"')
    page = records(primary_api, ", first: 10")
    second = records(primary_api, f', first: 10, after: "{page["pageInfo"]["endCursor"]}"')

    assert every["count"] == COUNT
    assert [n["recordIdentifier"] for n in failed["nodes"]] == ["4", "8"]
    assert failed["nodes"][0]["checksumInformation"]["checksumFailure"] == "gone"
    assert failed["nodes"][0]["modelClass"] == "Upload"
    assert failed["nodes"][0]["id"] == "gid://geosync/Upload/4"
    assert succeeded["count"] == 2
    assert succeeded["nodes"][0]["checksumInformation"]["checksum"] == "c" * 64
    assert [n["recordIdentifier"] for n in keyword["nodes"]] == ["2", *map(str, range(20, 30))]
    assert [int(n["recordIdentifier"]) for n in second["nodes"]] == list(range(11, 21))


def test_records_are_the_primarys_and_registries_the_secondarys(
    primary_api: GraphQLSite, sites: SitePair
) -> None:
    data = primary_api.run("{ geoNode { primary uploadRegistries { count } } }")
    with served_graphql(sites, sites.secondary) as secondary:
        refused = secondary.errors("{ geoModelRecords(modelClass: UPLOAD) { count } }")

    assert data["geoNode"] == {"primary": True, "uploadRegistries": {"count": 0}}
    assert "answers on the primary" in refused[0]
    assert (
        "cannot be sorted by last_synced_at"
        in primary_api.errors(
            "{ geoModelRecords(modelClass: UPLOAD, sort: LAST_SYNCED_AT_ASC) { count } }"
        )[0]
    )


def test_package_files_keep_their_state_on_the_model_and_list_the_same_way(
    primary_api: GraphQLSite,
) -> None:
    assert records(primary_api, model="PACKAGE_FILE") == {
        "count": 0,
        "nodes": [],
        "pageInfo": {"hasNextPage": False, "endCursor": None},
    }
    assert PackageFileReplicator.keyword_column == "file_name"


# -- the committed schema ----------------------------------------------------------------------


def test_the_committed_sdl_is_the_generated_schema(sites: SitePair) -> None:
    committed = (ROOT / "docs" / "graphql" / "schema.graphql").read_text(encoding="utf-8")

    assert schema_sdl(sites.primary.catalog) == committed, (
        "docs/graphql/schema.graphql is stale: run `make graphql-schema`"
    )


def test_an_unexpected_failure_is_masked_and_its_text_never_reaches_the_client(
    api: GraphQLSite, sites: SitePair
) -> None:
    with sites.secondary.tracking() as conn:  # a fault injected on purpose: the table is gone
        conn.execute(text(f"DROP TABLE {UploadReplicator.registry_table_name}"))
    response = api.post(
        "{ geoNode { name uploadRegistries { count } } }", headers={"PRIVATE-TOKEN": api.admin}
    )

    body = response.json()
    assert response.status_code == 200
    assert body["errors"][0]["message"] == "Unexpected error."
    assert "upload_registry" not in response.text
    assert body["data"]["geoNode"] == {"name": "secondary", "uploadRegistries": None}


def test_requests_that_are_not_graphql_are_refused_as_json_errors(api: GraphQLSite) -> None:
    headers = {"PRIVATE-TOKEN": api.admin, "Content-Type": "application/json"}
    bad_json = api.client.post("api/graphql", content=b"{not json", headers=headers)
    no_query = api.client.post("api/graphql", json={}, headers=headers)
    get_mutation = api.client.get(
        "api/graphql",
        params={"query": 'mutation { geoBulkJobCancel(input: {id: "1"}) { errors } }'},
        headers=headers,
    )
    get_query = api.client.get(
        "api/graphql", params={"query": "{ geoNode { name } }"}, headers=headers
    )

    for response, message in [
        (bad_json, "Unable to parse request body as JSON"),
        (no_query, "No GraphQL query found in the request"),
        (get_mutation, "mutations are not allowed when using GET"),
    ]:
        assert response.status_code == 400
        assert response.json() == {"errors": [{"message": message}], "data": None}
    assert get_query.json() == {"data": {"geoNode": {"name": "secondary"}}}
