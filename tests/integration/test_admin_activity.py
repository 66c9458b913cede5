"""The Activity page over HTTP (SQLite and PostgreSQL): sign-in required, one chart per
secondary and data type with the numbers of a seeded history, and a bad `hours` refused."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from geosync.app import Geo
from geosync.clock import FrozenClock
from geosync.status import NodeStatus, store_status
from geosync.testing import SitePair
from geosync.testing.servers import serve_in_thread
from geosync.web.app import create_app
from tests.graphql_client import admin_tokens

PAGE = "admin/geo/activity"


@contextmanager
def signed_in(sites: SitePair, site: Geo) -> Iterator[httpx.Client]:
    """A client of `site`, served on loopback, signed in with an admin token."""
    admin, _ = admin_tokens(sites)
    with (
        serve_in_thread(create_app(site)) as base,
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        response = client.post(
            "admin/geo/sign_in", data={"token": admin, "next": "/admin/geo/activity"}
        )
        assert response.status_code == 303, response.text
        yield client


def seed_history(sites: SitePair, clock: FrozenClock, minutes: int = 90) -> None:
    """A status from the secondary every minute: uploads synced 0, 1, 2, …; failed 0, 0, 1, 1, …"""
    node = sites.secondary_node.id
    for minute in range(minutes):
        values = {
            "geo_node_id": node,
            "uploads_synced_count": minute,
            "uploads_failed_count": minute // 2,
            "package_files_synced_count": 1000 + minute,
            "package_files_failed_count": 0,
            "snippets_synced_count": None,
        }
        now = clock.now()
        with sites.primary.main() as conn:
            store_status(conn, NodeStatus(values, now), now)
        clock.advance(60)


def figures(html: str) -> list[str]:
    """The chart cards of a page."""
    return re.findall(r'<figure class="chart-card">.*?</figure>', html, flags=re.S)


def test_signed_out_access_goes_to_sign_in(sites: SitePair) -> None:
    with (
        serve_in_thread(create_app(sites.primary)) as base,
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        response = client.get(PAGE)

    assert response.status_code == 303
    assert response.headers["location"].startswith("/admin/geo/sign_in?next=/admin/geo/activity")


def test_without_history_the_page_says_so(sites: SitePair) -> None:
    with signed_in(sites, sites.primary) as client:
        response = client.get(PAGE)

    assert response.status_code == 200
    assert (
        "no history yet: the primary records the sites&#39; statuses every minute" in response.text
    )
    assert "<svg" not in response.text


def test_a_chart_per_node_and_type_with_the_current_numbers(
    sites: SitePair, clock: FrozenClock
) -> None:
    seed_history(sites, clock)

    with signed_in(sites, sites.primary) as client:
        response = client.get(PAGE)

    assert response.status_code == 200
    cards = figures(response.text)
    assert len(cards) == 3  # one secondary, three data types
    assert [c.count("<svg") for c in cards] == [1, 1, 1]
    uploads = next(c for c in cards if "<figcaption>Uploads</figcaption>" in c)
    assert "now 89 synced, 44 failed" in uploads
    assert 'aria-label="Uploads on ' in uploads and "<title>Uploads on " in uploads
    assert "synced 89</text>" in uploads and "failed 44</text>" in uploads
    assert uploads.count("<polyline") == 2
    assert "<td>89</td><td>44</td></tr>" in uploads.replace("\n", "")
    packages = next(c for c in cards if "Package files" in c)
    assert "synced 1,089</text>" in packages
    snippets = next(c for c in cards if "<figcaption>Snippets</figcaption>" in c)
    assert "<polyline" not in snippets and "no data" in snippets


def test_hours_narrows_the_window(sites: SitePair, clock: FrozenClock) -> None:
    seed_history(sites, clock, minutes=180)

    with signed_in(sites, sites.primary) as client:
        one = client.get(PAGE, params={"hours": "1"}).text

    uploads = next(c for c in figures(one) if "<figcaption>Uploads</figcaption>" in c)
    (points,) = re.findall(r'<polyline class="line synced"[^>]*points="([^"]*)"', uploads)
    assert len(points.split()) == 60
    assert "over the last hour" in uploads


def test_the_page_works_on_a_secondary(sites: SitePair, clock: FrozenClock) -> None:
    seed_history(sites, clock, minutes=5)

    with signed_in(sites, sites.secondary) as client:
        response = client.get(PAGE)

    assert response.status_code == 200
    assert "now 4 synced, 2 failed" in response.text


def test_a_bad_hours_is_a_400_page(sites: SitePair) -> None:
    with signed_in(sites, sites.primary) as client:
        answers = [client.get(PAGE, params={"hours": bad}) for bad in ("0", "49", "x", "-3", "1.5")]

    assert [a.status_code for a in answers] == [400] * 5
    assert all("hours must be a whole number from 1 to 48" in a.text for a in answers)
    assert all(a.headers["content-type"].startswith("text/html") for a in answers)
