"""The GitLab-compatible admin REST API, served by uvicorn on loopback and called with httpx."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from geosync.auth import create_admin_token, node_header
from geosync.demo.replicators import SnippetReplicator, UploadReplicator
from geosync.registry import Registry
from geosync.testing import SitePair
from geosync.testing.servers import serve_in_thread
from geosync.web.app import create_app

NODE_FIELDS = {
    "id",
    "name",
    "url",
    "internal_url",
    "primary",
    "enabled",
    "current",
    "files_max_capacity",
    "repos_max_capacity",
    "verification_max_capacity",
    "container_repositories_max_capacity",
    "selective_sync_type",
    "selective_sync_shards",
    "selective_sync_namespace_ids",
    "minimum_reverification_interval",
    "sync_object_storage",
    "clone_protocol",
    "web_edit_url",
    "_links",
}
ENDPOINTS = [
    ("GET", "{c}"),
    ("HEAD", "{c}"),
    ("POST", "{c}"),
    ("GET", "{c}/1"),
    ("PUT", "{c}/1"),
    ("DELETE", "{c}/2"),
    ("POST", "{c}/1/repair"),
    ("GET", "{c}/status"),
    ("GET", "{c}/1/status"),
    ("GET", "{c}/current/failures"),
]


@dataclass
class Api:
    """A served primary with an admin and a non-admin token."""

    client: httpx.Client
    base: str
    admin: dict[str, str]
    non_admin: dict[str, str]


@pytest.fixture
def api(sites: SitePair) -> Iterator[Api]:
    now = sites.primary.clock.now()
    with sites.primary.main() as conn:
        admin = create_admin_token(conn, "ops", now)
        user = create_admin_token(conn, "reader", now, admin=False)
    with sites.primary_served() as base, httpx.Client(base_url=base, timeout=30) as client:
        yield Api(client, base, {"PRIVATE-TOKEN": admin}, {"PRIVATE-TOKEN": user})


def _path(template: str, collection: str = "geo_nodes") -> str:
    return "api/v4/" + template.format(c=collection)


@pytest.mark.parametrize("collection", ["geo_nodes", "geo_sites"])
def test_every_endpoint_wants_an_admin_token(api: Api, collection: str) -> None:
    for method, template in ENDPOINTS:
        path = _path(template, collection)
        missing = api.client.request(method, path)
        wrong = api.client.request(method, path, headers={"PRIVATE-TOKEN": "geo-nope"})
        user = api.client.request(method, path, headers=api.non_admin)
        assert (missing.status_code, wrong.status_code, user.status_code) == (401, 401, 403), path
        if method != "HEAD":
            assert missing.json() == {"message": "401 Unauthorized"}
            assert user.json() == {"message": "403 Forbidden"}


def test_nodes_are_listed_with_gitlabs_fields_and_links(api: Api, sites: SitePair) -> None:
    response = api.client.get(_path("{c}"), headers=api.admin)

    assert response.status_code == 200
    primary, secondary = response.json()
    assert set(primary) == NODE_FIELDS
    assert primary["id"] == sites.primary_node.id and primary["primary"] and primary["current"]
    assert secondary["name"] == "secondary" and not secondary["current"]
    assert secondary["internal_url"] == secondary["url"]  # GitLab returns url when unset
    assert secondary["_links"] == {
        "self": f"{api.base}api/v4/geo_nodes/{secondary['id']}",
        "status": f"{api.base}api/v4/geo_nodes/{secondary['id']}/status",
        "repair": f"{api.base}api/v4/geo_nodes/{secondary['id']}/repair",
    }
    assert secondary["web_edit_url"] == f"{api.base}admin/geo/sites/{secondary['id']}/edit"
    assert response.headers["X-Total"] == "2"


def test_nodes_are_created_read_changed_repaired_and_deleted(api: Api) -> None:
    created = api.client.post(
        _path("{c}"),
        headers=api.admin,
        json={
            "name": "eu",
            "url": "http://127.0.0.1:9/",
            "selective_sync_type": "namespaces",
            "selective_sync_namespace_ids": [3, 1],
            "files_max_capacity": 5,
        },
    )
    assert created.status_code == 201
    node = created.json()
    assert node["selective_sync_namespace_ids"] == [1, 3] and node["files_max_capacity"] == 5

    url = _path("{c}/" + str(node["id"]))
    assert api.client.get(url, headers=api.admin).json() == node
    changed = api.client.put(url, headers=api.admin, data={"enabled": "false", "name": "eu-2"})
    assert changed.status_code == 200
    assert (changed.json()["enabled"], changed.json()["name"]) == (False, "eu-2")
    repaired = api.client.post(url + "/repair", headers=api.admin)
    assert repaired.status_code == 200 and repaired.json()["id"] == node["id"]

    deleted = api.client.delete(url, headers=api.admin)
    assert deleted.status_code == 204 and deleted.content == b""
    gone = api.client.get(url, headers=api.admin)
    assert gone.status_code == 404
    assert gone.json() == {"message": f"404 Geo node {node['id']} Not Found"}


def test_statuses_show_percentages_as_strings_and_timestamps_as_epoch_seconds(
    api: Api, sites: SitePair
) -> None:
    statuses = api.client.get(_path("{c}/status"), headers=api.admin)
    own = api.client.get(_path("{c}/1/status"), headers=api.admin)
    never_reported = api.client.get(_path("{c}/2/status"), headers=api.admin)

    assert statuses.status_code == 200 and statuses.headers["X-Total"] == "1"
    (listed,) = statuses.json()
    body = own.json()
    assert listed["geo_node_id"] == body["geo_node_id"] == sites.primary_node.id
    assert body["uploads_verified_in_percentage"] == "0.00%"
    assert body["snippets_synced_in_percentage"] == "0.00%"
    assert body["last_successful_status_check_timestamp"] == int(
        sites.primary.clock.now().timestamp()
    )
    assert body["health_status"] == "Healthy" and body["healthy"] is True
    assert body["_links"]["node"].endswith("/api/v4/geo_nodes/1")
    assert never_reported.status_code == 404
    assert never_reported.json() == {"message": "404 Status of Geo node 2 Not Found"}


def test_geo_sites_is_an_alias_with_its_own_links(api: Api) -> None:
    sites_list = api.client.get(_path("{c}", "geo_sites"), headers=api.admin)
    status = api.client.get(_path("{c}/1/status", "geo_sites"), headers=api.admin)

    assert sites_list.status_code == 200
    assert sites_list.json()[0]["_links"]["self"] == f"{api.base}api/v4/geo_sites/1"
    assert status.json()["_links"] == {
        "self": f"{api.base}api/v4/geo_sites/1/status",
        "site": f"{api.base}api/v4/geo_sites/1",
    }


def test_head_answers_like_get_without_a_body(api: Api) -> None:
    head = api.client.head(_path("{c}"), headers=api.admin)
    get = api.client.get(_path("{c}"), headers=api.admin)

    assert head.status_code == 200 and head.content == b""
    assert head.headers["X-Total"] == get.headers["X-Total"] == "2"
    assert head.headers["Link"] == get.headers["Link"]


def test_pagination_headers_walk_every_page(api: Api) -> None:
    for i in range(23):
        created = api.client.post(
            _path("{c}"),
            headers=api.admin,
            json={"name": f"n{i}", "url": f"http://127.0.0.1:{i + 10}"},
        )
        assert created.status_code == 201

    first = api.client.get(_path("{c}"), headers=api.admin, params={"per_page": 10})
    assert {k: first.headers[k] for k in ("X-Total", "X-Total-Pages", "X-Page", "X-Per-Page")} == {
        "X-Total": "25",
        "X-Total-Pages": "3",
        "X-Page": "1",
        "X-Per-Page": "10",
    }
    assert (first.headers["X-Next-Page"], first.headers["X-Prev-Page"]) == ("2", "")
    assert 'rel="last"' in first.headers["Link"] and "page=3" in first.headers["Link"]

    seen: list[int] = []
    response = first
    while True:
        seen.extend(node["id"] for node in response.json())
        if "next" not in response.links:
            break
        response = api.client.get(response.links["next"]["url"], headers=api.admin)
    assert len(seen) == len(set(seen)) == 25
    assert (response.headers["X-Page"], response.headers["X-Next-Page"]) == ("3", "")
    assert response.headers["X-Prev-Page"] == "2" and len(response.json()) == 5

    capped = api.client.get(_path("{c}"), headers=api.admin, params={"per_page": 1000})
    assert capped.headers["X-Per-Page"] == "100" and len(capped.json()) == 25


ERROR_CASES: list[tuple[str, str, dict[str, Any], int]] = [
    ("GET", "{c}/999", {}, 404),
    ("GET", "{c}/99999999999999999999999", {}, 404),
    ("GET", "{c}/abc", {}, 404),
    ("GET", "{c}", {"params": {"page": "0"}}, 400),
    ("GET", "{c}", {"params": {"per_page": "many"}}, 400),
    ("POST", "{c}", {"json": {"url": "http://127.0.0.1:9/"}}, 400),
    ("POST", "{c}", {"json": {"name": "x", "url": "ftp://nowhere"}}, 422),
    ("POST", "{c}", {"json": {"name": "secondary", "url": "http://127.0.0.1:9/"}}, 409),
    (
        "POST",
        "{c}",
        {"json": {"name": "p2", "url": "http://127.0.0.1:9/", "primary": True}},
        409,
    ),
    ("POST", "{c}", {"json": {"name": "x\u0000", "url": "http://127.0.0.1:9/"}}, 400),
    (
        "POST",
        "{c}",
        {"json": {"name": "x", "url": "http://h/", "files_max_capacity": 2**40}},
        400,
    ),
    (
        "POST",
        "{c}",
        {"content": b"{broken", "headers": {"Content-Type": "application/json"}},
        400,
    ),
    ("POST", "{c}", {"json": ["name"]}, 400),
    ("PUT", "{c}/2", {"json": {"selective_sync_type": "everything"}}, 400),
    ("PUT", "{c}/2", {"json": {"minimum_reverification_interval": 0}}, 400),
    ("PUT", "{c}/2", {"json": {"name": "primary"}}, 409),
    ("PUT", "{c}/2", {"json": {"internal_url": "nonsense"}}, 422),
    ("PUT", "{c}/404", {"json": {"enabled": False}}, 404),
    ("DELETE", "{c}/404", {}, 404),
    ("GET", "{c}/current/failures", {}, 403),
]


def test_errors_are_json_messages_with_gitlabs_codes(api: Api) -> None:
    for method, path, kwargs, code in ERROR_CASES:
        options = dict(kwargs)
        headers = {**api.admin, **options.pop("headers", {})}
        response = api.client.request(method, _path(path), headers=headers, **options)
        assert response.status_code == code, (method, path, kwargs, response.text)
        assert isinstance(response.json()["message"], str)


def test_openapi_describes_the_geo_nodes_api(api: Api) -> None:
    spec = api.client.get("api/v4/openapi.json").json()

    assert {"/api/v4/geo_nodes", "/api/v4/geo_sites/{node_id}/status"} <= set(spec["paths"])
    assert "head" in spec["paths"]["/api/v4/geo_nodes"]
    one = spec["paths"]["/api/v4/geo_nodes/{node_id}"]
    assert "409" in one["put"]["responses"] and "409" in one["delete"]["responses"]


PRIMARY_REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("DELETE", {}, "cannot be removed"),
    ("PUT", {"json": {"primary": False}}, "cannot be demoted"),
    ("PUT", {"data": {"enabled": "false", "files_max_capacity": "3"}}, "cannot be disabled"),
]


@pytest.mark.parametrize("collection", ["geo_nodes", "geo_sites"])
def test_the_primary_is_not_removed_demoted_or_disabled(
    api: Api, sites: SitePair, collection: str
) -> None:
    url = _path("{c}/" + str(sites.primary_node.id), collection)
    before = api.client.get(url, headers=api.admin).json()
    for method, kwargs, why in PRIMARY_REFUSALS:
        response = api.client.request(method, url, headers=api.admin, **kwargs)
        assert response.status_code == 409, (method, kwargs, response.text)
        message = response.json()["message"]
        assert message.startswith("409 Conflict - node 'primary' is the primary and " + why)
        assert "promote another site first" in message
    assert api.client.get(url, headers=api.admin).json() == before
    path = "/api/v4/geo/retrieve/upload/404"
    header = node_header(sites.secondary, path)
    answer = api.client.get(path.lstrip("/"), headers={"Authorization": header})
    assert answer.status_code == 404, answer.text  # the primary still answers its secondaries


def test_the_sites_own_node_is_not_renamed(api: Api, sites: SitePair) -> None:
    url = _path("{c}/" + str(sites.primary_node.id))
    response = api.client.put(url, headers=api.admin, json={"name": "renamed"})
    assert response.status_code == 409, response.text
    assert "this site's own node" in response.json()["message"]
    assert api.client.get(url, headers=api.admin).json()["name"] == "primary"
    other = _path("{c}/" + str(sites.secondary_node.id))
    renamed = api.client.put(other, headers=api.admin, json={"name": "far-away"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "far-away"


def test_a_secondary_is_not_made_primary_while_there_is_one(api: Api, sites: SitePair) -> None:
    url = _path("{c}/" + str(sites.secondary_node.id))
    before = api.client.get(url, headers=api.admin).json()
    response = api.client.put(url, headers=api.admin, json={"primary": True})
    assert response.status_code == 409
    assert "node 'primary' is already the primary" in response.json()["message"]
    assert api.client.get(url, headers=api.admin).json() == before


def test_the_last_enabled_secondary_can_be_disabled_and_deleted(api: Api, sites: SitePair) -> None:
    url = _path("{c}/" + str(sites.secondary_node.id))
    disabled = api.client.put(url, headers=api.admin, json={"enabled": False})
    assert disabled.status_code == 200 and disabled.json()["enabled"] is False
    assert api.client.delete(url, headers=api.admin).status_code == 204


def test_the_secondary_lists_its_failures_and_refuses_writes(sites: SitePair, api: Api) -> None:
    registry = Registry(sites.secondary, UploadReplicator)
    snippets = Registry(sites.secondary, SnippetReplicator)
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, [1, 2, 3])
        snippets.insert_pending(conn, [7])
        for record_id in (1, 3):
            registry.failed(
                conn, record_id, registry.start(conn, record_id), "Download failed", "timeout"
            )
        snippets.failed(conn, 7, snippets.start(conn, 7), "git fetch failed")

    with serve_in_thread(create_app(sites.secondary)) as base:
        with httpx.Client(base_url=base, headers=api.admin) as client:
            failures = client.get(_path("{c}/current/failures"), params={"per_page": 2})
            rest = client.get(failures.links["next"]["url"])
            uploads_only = client.get(_path("{c}/current/failures"), params={"type": "uploads"})
            verification = client.get(
                _path("{c}/current/failures"), params={"failure_type": "verification"}
            )
            bad_type = client.get(_path("{c}/current/failures"), params={"type": "nope"})
            bad_kind = client.get(_path("{c}/current/failures"), params={"failure_type": "x"})
            write = client.put(_path("{c}/2"), json={"enabled": False})

    assert failures.headers["X-Total"] == "3"
    first, second = failures.json()
    assert (first["replicable_name"], first["model_record_id"], first["state"]) == (
        "upload",
        1,
        "failed",
    )
    assert first["last_sync_failure"] == "Download failed: timeout"
    assert first["retry_count"] == 1 and first["retry_at"].endswith("Z")
    assert second["model_record_id"] == 3
    assert [f["replicable_name"] for f in rest.json()] == ["snippet"]
    assert uploads_only.headers["X-Total"] == "2"
    assert verification.json() == []
    assert (bad_type.status_code, bad_kind.status_code) == (400, 400)
    assert write.status_code == 403
