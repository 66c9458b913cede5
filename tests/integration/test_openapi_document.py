"""What the OpenAPI document promises, one promise at a time: the statuses and bodies it names,
the methods a 405 allows, and the request types it gives (JSON as typed, forms converted)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from geosync.auth import create_admin_token
from geosync.testing import SitePair

NODE = "api/v4/geo_nodes"


@dataclass
class Served:
    """The primary served, a client and an admin token's header."""

    client: httpx.Client
    base: str
    admin: dict[str, str]


@pytest.fixture
def served(sites: SitePair) -> Iterator[Served]:
    with sites.primary.main() as conn:
        token = create_admin_token(conn, "ops", sites.primary.clock.now())
    with sites.primary_served() as base, httpx.Client(base_url=base, timeout=30) as client:
        yield Served(client, base, {"PRIVATE-TOKEN": token})


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            yield path, method, operation


def test_every_operation_documents_its_401_and_its_errors_as_messages(served: Served) -> None:
    spec = served.client.get("api/v4/openapi.json").json()

    assert "HTTPValidationError" not in str(spec)
    assert not [p for p in spec["paths"] if p.startswith("/api/graphql")]
    for path, method, operation in _operations(spec):
        responses = operation["responses"]
        assert "401" in responses, (method, path)
        assert operation["security"], (method, path)
        for code, answer in responses.items():
            if code.startswith(("4", "5")) and code != "416":
                schema = answer["content"]["application/json"]["schema"]
                assert schema["$ref"].rsplit("/", 1)[-1] in ("Message", "GeoRefusal"), (path, code)
    body = spec["paths"]["/api/v4/geo_nodes"]["post"]["requestBody"]
    assert body["required"] is True
    for media in ("application/json", "application/x-www-form-urlencoded"):
        assert body["content"][media]["schema"]["required"] == ["name", "url"]
    put = spec["paths"]["/api/v4/geo_nodes/{node_id}"]["put"]
    assert put["requestBody"]["required"] is False  # an empty PUT changes nothing


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PATCH", NODE + "/1", "DELETE, GET, HEAD, PUT"),
        ("OPTIONS", NODE, "GET, HEAD, POST"),
        ("DELETE", NODE + "/current/bulk_jobs", "GET"),
        ("GET", "api/v4/geo/repositories/snippet/1.git/git-upload-pack", "POST"),
        ("POST", "api/v4/geo/repositories/snippet/1.git/info/refs", "GET"),
    ],
)
def test_a_405_allows_every_method_of_its_path(
    served: Served, method: str, path: str, allowed: str
) -> None:
    response = served.client.request(method, path, headers=served.admin)

    assert response.status_code == 405
    assert response.headers["Allow"] == allowed
    assert response.json()["message"]


def test_a_request_the_server_cannot_parse_is_answered_in_json(served: Served) -> None:
    address = urlsplit(served.base)
    with socket.create_connection((address.hostname, address.port), timeout=10) as conn:
        conn.sendall(b"GET /api/v4/geo_nodes HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: c-\r\n\r\n")
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"content-type: application/json" in head.lower()
    assert httpx.Response(400, content=body).json()["message"].startswith("400 Bad request")


def test_json_is_read_with_the_documents_types_and_forms_as_gitlab_converts_them(
    served: Served, sites: SitePair
) -> None:
    url = f"{NODE}/{sites.secondary_node.id}"

    def put(**options: Any) -> httpx.Response:
        headers = {**served.admin, **options.pop("headers", {})}
        return served.client.put(url, headers=headers, **options)

    assert put(json={"files_max_capacity": "5"}).status_code == 400
    assert put(json={"enabled": None}).status_code == 400
    assert put(json={"selective_sync_shards": "a,b"}).status_code == 400
    assert put(json={"files_max_capacity": 5.0}).json()["files_max_capacity"] == 5
    assert put(json={"files_max_capacity": 5.5}).status_code == 400
    cleared = put(json={"internal_url": None}).json()
    assert cleared["internal_url"] == cleared["url"]

    form = put(data={"files_max_capacity": "6", "enabled": "false"}).json()
    assert (form["files_max_capacity"], form["enabled"]) == (6, False)
    repeated = put(
        content=b"selective_sync_shards=a&selective_sync_shards=b",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert repeated.json()["selective_sync_shards"] == ["a", "b"]
    assert put(data={"selective_sync_shards": "c, d"}).json()["selective_sync_shards"] == ["c", "d"]


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("http://[::1]:8080", 201),
        ("HTTPS://geo.example:443/path", 201),
        ("http://a b/", 422),
        ("http://[::1/", 422),
        ("http://héllo/", 422),
        ("ftp://geo.example/", 422),
    ],
)
def test_node_urls_are_what_the_document_says(served: Served, url: str, status: int) -> None:
    response = served.client.post(NODE, headers=served.admin, json={"name": "n", "url": url})

    assert response.status_code == status, response.text
    if status == 201:
        assert response.json()["url"] == url + ("" if url.endswith("/") else "/")
