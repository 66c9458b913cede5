"""Node authentication of the primary's retrieve endpoint: a bad token is a 401 with no bytes."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from geosync.auth import BLOB_TOKEN_TTL, node_header, request_data, sign_request
from geosync.demo.models import Upload
from geosync.nodes import NodeStore
from geosync.testing import SitePair
from geosync.wire import retrieve_path

SECRET_CONTENT = b"confidential bytes that must never leak"


@pytest.fixture
def served(sites: SitePair) -> tuple[SitePair, str, int]:
    """The primary served, with one upload whose file exists."""
    storage = sites.primary.settings.blob_storage("uploads")
    (storage / "x.bin").write_bytes(SECRET_CONTENT)
    with sites.primary.session() as session:
        upload = Upload(path="x.bin", namespace_id=1, size=len(SECRET_CONTENT))
        session.add(upload)
        session.commit()
        upload_id = upload.id
    return sites, "", upload_id


def get(url: str, header: str | None) -> httpx.Response:
    headers = {"Authorization": header} if header is not None else {}
    return httpx.get(url, headers=headers, timeout=10)


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 401
    assert "message" in response.json()
    assert SECRET_CONTENT not in response.content


def test_valid_token_streams_the_file(served: tuple[SitePair, str, int]) -> None:
    sites, _, upload_id = served
    with sites.primary_served() as base:
        path = retrieve_path("upload", upload_id)
        response = get(base.rstrip("/") + path, node_header(sites.secondary, path))
    assert response.status_code == 200
    assert response.content == SECRET_CONTENT


def test_range_request_resumes_a_download(served: tuple[SitePair, str, int]) -> None:
    sites, _, upload_id = served
    with sites.primary_served() as base:
        path = retrieve_path("upload", upload_id)
        headers = {"Authorization": node_header(sites.secondary, path), "Range": "bytes=5-"}
        response = httpx.get(base.rstrip("/") + path, headers=headers, timeout=10)
    assert response.status_code == 206
    assert response.content == SECRET_CONTENT[5:]


def test_bad_tokens_are_refused(served: tuple[SitePair, str, int]) -> None:
    sites, _, upload_id = served
    node = sites.secondary_node
    path = retrieve_path("upload", upload_id)
    secret = node.secret(sites.secondary.settings.secret_key_base.get_secret_value())
    now = sites.secondary.clock.now()
    cases = {
        "no header": None,
        "malformed": "Bearer nonsense",
        "wrong secret": sign_request(node, "x" * 40, request_data(path), now, BLOB_TOKEN_TTL),
        "expired": sign_request(
            node, secret, request_data(path), now - timedelta(minutes=5), BLOB_TOKEN_TTL
        ),
        "other item": sign_request(
            node, secret, request_data(retrieve_path("upload", upload_id + 1)), now, BLOB_TOKEN_TTL
        ),
        "unknown key": "GL-Geo nokey:abc.def.ghi",
        "too long-lived": sign_request(node, secret, request_data(path), now, timedelta(hours=1)),
    }
    with sites.primary_served() as base:
        for name, header in cases.items():
            response = get(base.rstrip("/") + path, header)
            assert response.status_code == 401, name
            assert_refused(response)


def test_token_within_leeway_is_accepted(served: tuple[SitePair, str, int]) -> None:
    sites, _, upload_id = served
    node = sites.secondary_node
    path = retrieve_path("upload", upload_id)
    secret = node.secret(sites.secondary.settings.secret_key_base.get_secret_value())
    issued = sites.secondary.clock.now() - timedelta(seconds=90)  # expired 30 s ago: in leeway
    header = sign_request(node, secret, request_data(path), issued, BLOB_TOKEN_TTL)
    with sites.primary_served() as base:
        assert get(base.rstrip("/") + path, header).status_code == 200


def test_disabled_node_is_refused(served: tuple[SitePair, str, int]) -> None:
    sites, _, upload_id = served
    path = retrieve_path("upload", upload_id)
    header = node_header(sites.secondary, path)
    with sites.primary.main() as conn:
        NodeStore(sites.primary, conn).update(sites.secondary_node.id, enabled=False)
    with sites.primary_served() as base:
        assert_refused(get(base.rstrip("/") + path, header))


def test_missing_record_and_missing_file_have_distinct_404s(
    served: tuple[SitePair, str, int],
) -> None:
    sites, _, upload_id = served
    (sites.primary.settings.blob_storage("uploads") / "x.bin").unlink()
    with sites.primary_served() as base:
        path = retrieve_path("upload", upload_id)
        missing_file = get(base.rstrip("/") + path, node_header(sites.secondary, path))
        other = retrieve_path("upload", 9999)
        missing_row = get(base.rstrip("/") + other, node_header(sites.secondary, other))
    assert missing_file.status_code == 404
    assert missing_file.json()["geo_code"] == "FILE_NOT_FOUND"
    assert missing_row.status_code == 404
    assert missing_row.json() == {"message": "upload not found"}
