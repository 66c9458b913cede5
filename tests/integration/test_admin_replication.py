"""The admin UI's replication lists, item pages and jobs page over real HTTP on both databases:
what a signed-in admin sees, and that every action goes through and is CSRF-checked."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from geosync.app import Geo
from geosync.attempts import Attempt, record_attempt
from geosync.clock import FrozenClock
from geosync.demo.replicators import UploadReplicator
from geosync.explain import explain
from geosync.jobs import JobState, get_job
from geosync.nodes import NodeStore
from geosync.registry import Registry
from geosync.states import SyncState, VerificationState
from geosync.testing import SitePair
from geosync.testing.servers import serve_in_thread
from geosync.verification import primary_verifiable
from geosync.web.app import create_app
from tests.graphql_client import admin_tokens, seed

ROW = re.compile(r'<tr id="(?:registry|record)-(\d+)"')
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Admin:
    """A browser-like client of one served site, signed in as an admin."""

    client: httpx.Client
    token: str
    node_id: int

    @property
    def uploads(self) -> str:
        return f"/admin/geo/sites/{self.node_id}/replication/uploads"

    def get(self, path: str, **params: str) -> httpx.Response:
        return self.client.get(path, params=params)

    def csrf(self) -> str:
        found = CSRF.search(self.get(self.uploads).text)
        assert found, "no CSRF token on the list page"
        return found.group(1)

    def post(self, path: str, **fields: str) -> httpx.Response:
        return self.client.post(path, data={"csrf_token": self.csrf(), **fields})


def rows(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [int(number) for number in ROW.findall(response.text)]


def link(response: httpx.Response, rel: str) -> str:
    found = re.search(rf'<a rel="{rel}" href="([^"]+)"', response.text)
    assert found, f"no {rel} link"
    return html.unescape(found.group(1))


def query_of(response: httpx.Response) -> dict[str, list[str]]:
    assert response.status_code == 303, response.text
    return parse_qs(urlsplit(response.headers["location"]).query)


def signed_in(sites: SitePair, site: Geo) -> Iterator[Admin]:
    """Serve `site` and sign in to its admin UI with an admin token."""
    token, _ = admin_tokens(sites)
    node = site.current_node()
    assert node is not None
    with (
        serve_in_thread(create_app(site)) as base,
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        response = client.post("/admin/geo/sign_in", data={"token": token})
        assert response.status_code == 303, response.text
        yield Admin(client, token, node.id)


@pytest.fixture
def secondary(sites: SitePair, clock: FrozenClock) -> Iterator[Admin]:
    seed(sites, clock)
    yield from signed_in(sites, sites.secondary)


@pytest.fixture
def primary(sites: SitePair, clock: FrozenClock) -> Iterator[Admin]:
    seed(sites, clock)
    verifiable = primary_verifiable(sites.primary, UploadReplicator)
    with sites.primary.main() as conn:
        claims = verifiable.claim(conn, 100)
        verifiable.succeeded_many(conn, [(c, "c" * 64) for c in claims])
    yield from signed_in(sites, sites.primary)


def sync_state(sites: SitePair, registry_id: int) -> SyncState:
    with sites.secondary.tracking_engine.connect() as conn:
        return Registry(sites.secondary, UploadReplicator).require(conn, registry_id).sync_state


# -- the list ---------------------------------------------------------------------------------


def test_signed_out_the_list_and_its_actions_go_to_sign_in(sites: SitePair) -> None:
    node = sites.secondary.current_node()
    assert node is not None
    path = f"/admin/geo/sites/{node.id}/replication/uploads"
    with serve_in_thread(create_app(sites.secondary)) as base, httpx.Client(base_url=base) as c:
        listed = c.get(path)
        posted = c.post(f"{path}/3/resync", data={"csrf_token": "x"})
        jobs = c.get("/admin/geo/jobs")

    for response in (listed, posted, jobs):
        assert response.status_code == 303
        assert response.headers["location"].startswith("/admin/geo/sign_in?next=")
    assert parse_qs(urlsplit(listed.headers["location"]).query)["next"] == [path]


def test_the_list_shows_twenty_rows_a_page_forward_and_back(secondary: Admin) -> None:
    first = secondary.get(secondary.uploads)
    second = secondary.client.get(link(first, "next"))
    back = secondary.client.get(link(second, "prev"))

    assert rows(first) == list(range(1, 21))
    assert rows(second) == list(range(21, 31))
    assert rows(back) == list(range(1, 21))
    assert '<p id="count">30 uploads</p>' in first.text
    assert 'rel="next"' not in second.text and 'rel="prev"' not in first.text


def test_filters_and_keyword_narrow_the_rows_and_the_count(secondary: Admin) -> None:
    failed = secondary.get(secondary.uploads, replication_state="failed")
    verified = secondary.get(secondary.uploads, verification_state="succeeded")
    keyword = secondary.get(secondary.uploads, keyword="file-2")
    both = secondary.get(secondary.uploads, keyword="file-2", replication_state="FAILED")
    nothing = secondary.get(secondary.uploads, keyword="no-such-file")

    assert rows(failed) == [5, 10, 20, 25]
    assert "4 uploads match the filters" in failed.text
    assert '<option value="failed" selected>' in failed.text
    assert rows(verified) == list(range(3, 31, 3))
    assert rows(keyword) == [2, *range(20, 30)]
    assert rows(both) == [20, 25]
    assert rows(nothing) == [] and "Clear the filters" in nothing.text


def test_the_nav_link_of_a_type_leads_to_this_sites_list(secondary: Admin) -> None:
    response = secondary.get("/admin/geo/replication/uploads", replication_state="failed")

    assert response.status_code == 303
    assert response.headers["location"] == f"{secondary.uploads}?replication_state=failed"
    assert 'href="/admin/geo/replication/package_files"' in secondary.get(secondary.uploads).text


def test_an_unknown_type_is_a_404_page(secondary: Admin) -> None:
    response = secondary.get(f"/admin/geo/sites/{secondary.node_id}/replication/widgets")

    assert response.status_code == 404
    assert "no data type called" in html.unescape(response.text)


def test_another_sites_lists_are_served_by_that_sites_own_admin_ui(
    secondary: Admin, sites: SitePair
) -> None:
    other = sites.primary.current_node()
    assert other is not None

    response = secondary.get(f"/admin/geo/sites/{other.id}/replication/uploads")

    assert response.status_code == 200
    expected = other.url.rstrip("/") + f"/admin/geo/sites/{other.id}/replication/uploads"
    assert f'<a id="other-site" href="{expected}">' in response.text
    assert rows(response) == []


def test_an_empty_list_says_the_backfill_creates_the_registries(secondary: Admin) -> None:
    response = secondary.get(f"/admin/geo/sites/{secondary.node_id}/replication/snippets")

    assert rows(response) == []
    assert "backfill" in response.text and "geosync worker" in response.text


# -- row actions ------------------------------------------------------------------------------


def test_resync_moves_a_synced_row_to_pending_and_says_so(
    secondary: Admin, sites: SitePair
) -> None:
    back = f"{secondary.uploads}?replication_state=synced"

    response = secondary.post(f"{secondary.uploads}/3/resync", back=back)

    said = query_of(response)
    assert response.headers["location"].startswith(back + "&")
    assert said["notice"] == ["Upload registry 3 was queued for resync."]
    assert sync_state(sites, 3) is SyncState.PENDING
    shown = secondary.client.get(response.headers["location"])
    assert "Upload registry 3 was queued for resync." in shown.text
    assert 3 not in rows(shown)


def test_resync_of_a_pending_row_shows_the_mutations_errors(
    secondary: Admin, sites: SitePair
) -> None:
    response = secondary.post(f"{secondary.uploads}/1/resync", back=secondary.uploads)

    said = query_of(response)
    assert "notice" not in said and "pending" in said["error"][0]
    shown = secondary.client.get(response.headers["location"])
    assert 'role="alert" id="error">Upload registry 1:' in shown.text
    assert sync_state(sites, 1) is SyncState.PENDING


def test_reverify_queues_the_copy_for_verification(secondary: Admin, sites: SitePair) -> None:
    response = secondary.post(f"{secondary.uploads}/6/reverify")

    assert query_of(response)["notice"] == ["Upload registry 6 was queued for reverification."]
    with sites.secondary.tracking_engine.connect() as conn:
        row = Registry(sites.secondary, UploadReplicator).require(conn, 6)
    assert row.verification is VerificationState.PENDING


def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(
    secondary: Admin, sites: SitePair
) -> None:
    resync = secondary.client.post(f"{secondary.uploads}/3/resync", data={"back": ""})
    wrong = secondary.client.post(f"{secondary.uploads}/3/resync", data={"csrf_token": "x" * 64})
    bulk = secondary.client.post(f"{secondary.uploads}/bulk/resync-all")
    cancel = secondary.client.post("/admin/geo/jobs/1/cancel")

    assert [r.status_code for r in (resync, wrong, bulk, cancel)] == [403] * 4
    assert sync_state(sites, 3) is SyncState.SYNCED
    assert "No job is running" in secondary.get("/admin/geo/jobs").text


# -- bulk actions and jobs --------------------------------------------------------------------


def test_the_bulk_confirmation_states_the_count_and_confirm_queues_a_job(
    secondary: Admin, sites: SitePair
) -> None:
    listed = secondary.get(secondary.uploads)
    confirmation = secondary.get(f"{secondary.uploads}/bulk/resync-failed")
    everything = secondary.get(f"{secondary.uploads}/bulk/reverify-all")
    resyncable = secondary.get(f"{secondary.uploads}/bulk/resync-all")

    response = secondary.post(f"{secondary.uploads}/bulk/resync-failed")

    assert f'action="{secondary.uploads}/bulk/resync-failed"' in listed.text
    assert "This will queue 4 uploads for resync." in confirmation.text
    assert "This will queue 10 uploads for reverification." in everything.text
    assert "This will queue 14 uploads for resync." in resyncable.text
    assert "Synced and failed rows only" in resyncable.text
    assert response.status_code == 303
    assert response.headers["location"].startswith("/admin/geo/jobs?notice=")
    jobs = secondary.client.get(response.headers["location"])
    number = int(re.findall(r'<tr id="job-(\d+)"', jobs.text)[0])
    assert f"Job {number} queued: 4 uploads for resync." in jobs.text
    assert "Cancel job" in jobs.text and "replication failed" in jobs.text
    assert '<a href="/admin/geo/replication/uploads">upload</a>' in jobs.text
    assert f'data-refresh="/admin/geo/jobs/{number}/progress"' in jobs.text
    assert get_job(sites.secondary, number).state is JobState.QUEUED


def test_a_second_bulk_job_of_the_same_action_is_refused_on_the_list(secondary: Admin) -> None:
    secondary.post(f"{secondary.uploads}/bulk/resync-all")

    response = secondary.post(f"{secondary.uploads}/bulk/resync-failed")

    said = query_of(response)
    assert urlsplit(response.headers["location"]).path == secondary.uploads
    assert said["error"][0].startswith("Resync all failed: ") and "already" in said["error"][0]


def test_a_queued_job_is_cancelled_from_the_jobs_page(secondary: Admin, sites: SitePair) -> None:
    queued = secondary.post(f"{secondary.uploads}/bulk/reverify-all")
    number = int(re.findall(r"Job (\d+) queued", query_of(queued)["notice"][0])[0])
    job = get_job(sites.secondary, number)
    progress = secondary.get(f"/admin/geo/jobs/{job.id}/progress")

    cancelled = secondary.post(f"/admin/geo/jobs/{job.id}/cancel")
    again = secondary.post(f"/admin/geo/jobs/{job.id}/cancel")

    assert "<progress" in progress.text and "0 of 10" in progress.text
    assert "<html" not in progress.text
    assert query_of(cancelled)["notice"][0].startswith(f"Job {job.id} was cancelled")
    assert query_of(again)["error"]
    assert get_job(sites.secondary, job.id).state is JobState.CANCELLED
    page = secondary.get("/admin/geo/jobs")
    assert "No job is running" in page.text and f'<tr id="job-{job.id}"' in page.text
    assert "Cancel job" not in page.text


def test_the_jobs_page_says_how_to_start_a_job(secondary: Admin) -> None:
    response = secondary.get("/admin/geo/jobs")

    assert response.status_code == 200
    assert "No job is running" in response.text and "Resync all" in response.text


# -- the item page ----------------------------------------------------------------------------


def test_the_item_page_shows_its_fields_attempts_and_explanation(
    secondary: Admin, sites: SitePair
) -> None:
    now = sites.secondary.clock.now()
    attempt = Attempt("upload", 5, "sync", now, now, "failed", "transient", "connection reset")
    with sites.secondary.tracking() as conn:
        record_attempt(conn, attempt)
    expected = explain(sites.secondary, "uploads", 5)

    response = secondary.get(f"{secondary.uploads}/5")

    assert response.status_code == 200
    text = response.text
    assert "<dt>last sync failure</dt>" in text and "Download failed 5" in text
    assert "<dt>retry count</dt>" in text and "<dt>verification checksum</dt>" in text
    assert "connection reset" in text and 'id="attempts"' in text
    assert html.escape(expected.summary) in text and html.escape(expected.next_step) in text
    assert '<div class="item-actions" id="registry-5">' in text
    assert f'action="{secondary.uploads}/5/resync"' in text
    assert secondary.get(f"{secondary.uploads}/999").status_code == 404


def test_an_action_on_the_item_page_returns_to_it(secondary: Admin, sites: SitePair) -> None:
    item = f"{secondary.uploads}/6"

    response = secondary.post(f"{item}/resync", back=item)

    assert urlsplit(response.headers["location"]).path == item
    assert (
        "Upload registry 6 was queued for resync."
        in secondary.client.get(response.headers["location"]).text
    )
    assert sync_state(sites, 6) is SyncState.PENDING


# -- the primary ------------------------------------------------------------------------------


def test_the_primary_lists_its_records_with_their_checksums(primary: Admin) -> None:
    first = primary.get(primary.uploads)
    second = primary.client.get(link(first, "next"))
    keyword = primary.get(primary.uploads, keyword="file-1")

    assert rows(first) == list(range(1, 21)) and rows(second) == list(range(21, 31))
    assert '<p id="count">30 uploads</p>' in first.text
    assert "succeeded" in first.text and "Checksum again" in first.text
    assert rows(keyword) == [1, *range(10, 20)]
    assert rows(primary.get(primary.uploads, checksum_state="failed")) == []


def test_the_primary_checksums_a_record_again_and_in_bulk(primary: Admin, sites: SitePair) -> None:
    one = primary.post(f"{primary.uploads}/records/7/checksum", back=primary.uploads)
    pending = primary.get(primary.uploads, checksum_state="pending")
    item = primary.get(f"{primary.uploads}/records/7")
    confirmation = primary.get(f"{primary.uploads}/bulk/checksum-all")
    bulk = primary.post(f"{primary.uploads}/bulk/checksum-all")

    assert query_of(one)["notice"] == ["Upload 7 was queued to be checksummed again."]
    assert rows(pending) == [7]
    assert item.status_code == 200 and "<dt>checksum state</dt>" in item.text
    assert "This will queue 30 uploads to be checksummed again." in confirmation.text
    assert bulk.headers["location"].startswith("/admin/geo/jobs?notice=")
    assert "Cancel job" in primary.client.get(bulk.headers["location"]).text


# -- secrets ----------------------------------------------------------------------------------


def test_no_secret_appears_in_any_page(secondary: Admin, sites: SitePair) -> None:
    secondary.post(f"{secondary.uploads}/bulk/resync-all")
    paths = [
        secondary.uploads,
        f"{secondary.uploads}?replication_state=failed",
        f"{secondary.uploads}/5",
        f"{secondary.uploads}/bulk/resync-all",
        "/admin/geo/jobs",
        "/admin/geo/jobs/1/progress",
    ]
    base = sites.secondary.settings.secret_key_base.get_secret_value()
    with sites.primary.main_engine.connect() as conn:
        nodes = NodeStore(sites.primary, conn).list()
    secrets = [secondary.token, base, *(node.secret(base) for node in nodes)]

    for path in paths:
        text = secondary.client.get(path).text
        for secret in secrets:
            assert secret not in text, path
