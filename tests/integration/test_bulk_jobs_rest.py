"""The bulk job endpoints of the admin REST API, served on loopback and called with httpx."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from geosync.auth import create_admin_token
from geosync.demo.replicators import UploadReplicator
from geosync.jobs import JobAction, JobFilters, JobState, create_job, get_job
from geosync.testing import SitePair
from geosync.testing.servers import serve_in_thread
from geosync.web.app import create_app
from tests.jobutil import seed_synced

JOBS = "api/v4/geo_nodes/current/bulk_jobs"


@dataclass
class Api:
    """A served secondary with an admin and a non-admin token."""

    client: httpx.Client
    admin: dict[str, str]
    non_admin: dict[str, str]


@pytest.fixture
def api(sites: SitePair) -> Iterator[Api]:
    now = sites.primary.clock.now()
    with sites.primary.main() as conn:
        admin = create_admin_token(conn, "ops", now)
        user = create_admin_token(conn, "reader", now, admin=False)
    with (
        serve_in_thread(create_app(sites.secondary)) as base,
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        yield Api(client, {"PRIVATE-TOKEN": admin}, {"PRIVATE-TOKEN": user})


def test_the_job_endpoints_want_an_admin_token(api: Api) -> None:
    for method, path in [("GET", JOBS), ("GET", f"{JOBS}/1"), ("POST", f"{JOBS}/1/cancel")]:
        anonymous = api.client.request(method, path)
        assert anonymous.status_code == 401 and anonymous.json() == {"message": "401 Unauthorized"}
        reader = api.client.request(method, path, headers=api.non_admin)
        assert reader.status_code == 403 and reader.json() == {"message": "403 Forbidden"}


def test_jobs_are_listed_shown_and_cancelled(sites: SitePair, api: Api) -> None:
    seed_synced(sites.secondary, 3)
    first = create_job(sites.secondary, UploadReplicator, JobAction.RESYNC, JobFilters(), "ops")
    second = create_job(sites.secondary, UploadReplicator, JobAction.REVERIFY, JobFilters(), None)
    listed = api.client.get(JOBS, headers=api.admin, params={"per_page": 1})
    assert listed.status_code == 200
    assert [j["id"] for j in listed.json()] == [second.id]
    assert listed.headers["X-Total"] == "2" and listed.headers["X-Next-Page"] == "2"
    shown = api.client.get(f"{JOBS}/{first.id}", headers=api.admin)
    assert shown.status_code == 200 and shown.json() == first.as_json()
    cancelled = api.client.post(f"{JOBS}/{first.id}/cancel", headers=api.admin)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert get_job(sites.secondary, first.id).state == JobState.CANCELLED
    again = api.client.post(f"{JOBS}/{first.id}/cancel", headers=api.admin)
    assert again.status_code == 409
    assert again.json() == {"message": f"409 Conflict - bulk job {first.id} is already cancelled"}
    queued = api.client.get(JOBS, headers=api.admin, params={"state": "queued"})
    assert [j["id"] for j in queued.json()] == [second.id]
    alias = api.client.get("api/v4/geo_sites/current/bulk_jobs", headers=api.admin)
    assert [j["id"] for j in alias.json()] == [second.id, first.id]


def test_unknown_jobs_and_states_are_clear_errors(api: Api) -> None:
    for path in (f"{JOBS}/99", f"{JOBS}/99/cancel", f"{JOBS}/{2**40}"):
        method = "POST" if path.endswith("cancel") else "GET"
        missing = api.client.request(method, path, headers=api.admin)
        assert missing.status_code == 404, path
        assert missing.json()["message"].startswith("404 Bulk job")
    bad = api.client.get(JOBS, headers=api.admin, params={"state": "sleeping"})
    assert bad.status_code == 400 and bad.json()["message"].startswith("400 Bad request")


def test_the_openapi_documents_the_job_endpoints(api: Api) -> None:
    paths = api.client.get("api/v4/openapi.json").json()["paths"]
    for collection in ("geo_nodes", "geo_sites"):
        base = f"/api/v4/{collection}/current/bulk_jobs"
        assert "get" in paths[base]
        assert "get" in paths[base + "/{job_id}"]
        cancel = paths[base + "/{job_id}/cancel"]["post"]
        assert {"200", "401", "403", "404", "409"} <= set(cancel["responses"])
