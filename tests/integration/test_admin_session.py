"""Admin UI sessions over HTTP on both databases: sign-in, refusals, expiry on the site's clock,
revoked tokens, sign-out, CSRF, and no secret in a page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import update

from geosync.clock import FrozenClock
from geosync.db.tables import geo_admin_tokens
from geosync.testing import SitePair
from geosync.web.admin.session import SESSION_SECONDS
from tests.graphql_client import GraphQLSite, served_graphql


@pytest.fixture
def ui(sites: SitePair) -> Iterator[GraphQLSite]:
    with served_graphql(sites, sites.secondary) as site:
        yield site


def sign_in(ui: GraphQLSite, token: str, next_path: str = "/admin/geo/jobs") -> httpx.Response:
    return ui.client.post(
        "admin/geo/sign_in", data={"token": token, "next": next_path}, follow_redirects=False
    )


def test_an_admin_token_signs_in_to_where_it_was_going(ui: GraphQLSite) -> None:
    away = ui.client.get("admin/geo/jobs", follow_redirects=False)
    response = sign_in(ui, ui.admin)
    cookie = response.headers["set-cookie"]

    assert away.status_code == 303 and away.headers["location"].startswith("/admin/geo/sign_in")
    assert response.status_code == 303 and response.headers["location"] == "/admin/geo/jobs"
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/admin/geo" in cookie
    assert f"Max-Age={SESSION_SECONDS}" in cookie and ui.admin not in cookie
    page = ui.client.get("admin/geo/jobs")
    assert page.status_code == 200 and ui.admin not in page.text


def test_wrong_and_non_admin_tokens_are_told_why_and_get_no_session(ui: GraphQLSite) -> None:
    wrong = sign_in(ui, "geo-nope")
    reader = sign_in(ui, ui.non_admin)

    assert wrong.status_code == reader.status_code == 401
    assert "That token is not valid." in wrong.text
    assert "That token has no admin rights." in reader.text
    assert "set-cookie" not in wrong.headers and "set-cookie" not in reader.headers
    assert ui.non_admin not in reader.text and "geo-nope" not in wrong.text


def test_sign_in_never_sends_the_browser_off_the_admin_ui(ui: GraphQLSite) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "/api/v4/geo_nodes"):
        assert sign_in(ui, ui.admin, target).headers["location"] == "/admin/geo/sites"


def test_a_session_expires_on_the_sites_clock(
    ui: GraphQLSite, sites: SitePair, clock: FrozenClock
) -> None:
    sign_in(ui, ui.admin)
    clock.advance(SESSION_SECONDS - 60)
    still = ui.client.get("admin/geo/jobs", follow_redirects=False)
    clock.advance(120)
    expired = ui.client.get("admin/geo/jobs", follow_redirects=False)

    assert still.status_code == 200
    assert expired.status_code == 303
    assert "session+expired" in expired.headers["location"].replace("%20", "+")


def test_a_revoked_token_ends_its_sessions_at_once(ui: GraphQLSite, sites: SitePair) -> None:
    sign_in(ui, ui.admin)
    with sites.primary.main() as conn:
        conn.execute(
            update(geo_admin_tokens)
            .where(geo_admin_tokens.c.name == "ops")
            .values(revoked_at=datetime.now(UTC))
        )
    response = ui.client.get("admin/geo/jobs", follow_redirects=False)

    assert response.status_code == 303
    assert "revoked" in response.headers["location"]


def test_sign_out_needs_the_csrf_token_and_ends_the_session(ui: GraphQLSite) -> None:
    sign_in(ui, ui.admin)
    page = ui.client.get("admin/geo/jobs").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf is not None

    refused = ui.client.post("admin/geo/sign_out", data={}, follow_redirects=False)
    done = ui.client.post(
        "admin/geo/sign_out", data={"csrf_token": csrf.group(1)}, follow_redirects=False
    )
    ui.client.cookies.clear()
    after = ui.client.get("admin/geo/jobs", follow_redirects=False)

    assert refused.status_code == 403 and "CSRF" in refused.text
    assert done.status_code == 303 and 'geosync_admin=""' in done.headers["set-cookie"]
    assert after.status_code == 303


def test_a_forged_cookie_is_not_a_session(ui: GraphQLSite) -> None:
    ui.client.cookies.set(
        "geosync_admin", "eyJ0IjoxLCJuIjoieCJ9.forged.signature", path="/admin/geo"
    )
    response = ui.client.get("admin/geo/jobs", follow_redirects=False)

    assert response.status_code == 303
    assert response.headers["location"].startswith("/admin/geo/sign_in")
