"""The admin UI's sites overview and site edit form, served by uvicorn on loopback and used over
real HTTP with a cookie-keeping client, on both databases: sign-in, cards from stored
statuses, the live fragment, saving and refusing settings, the read-only secondary, secrets."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import pytest
from sqlalchemy import delete

from geosync.app import Geo
from geosync.clock import FrozenClock
from geosync.db.tables import geo_nodes
from geosync.nodes import NODE_SETTINGS, Node, NodeStore
from geosync.status import compute_status, store_status
from geosync.testing import SitePair
from geosync.testing.servers import serve_in_thread
from geosync.web.app import create_app
from tests.graphql_client import admin_tokens, seed

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
CARD = '<article class="card site"'


@dataclass
class AdminUI:
    """A served site and a browser-like client that keeps the session cookie."""

    client: httpx.Client
    token: str
    pages: list[str] = field(default_factory=list)

    def sign_in(self) -> None:
        response = self.client.post("admin/geo/sign_in", data={"token": self.token})
        assert response.status_code == 303, response.text
        assert "geosync_admin" in self.client.cookies

    def get(self, path: str, **options: object) -> httpx.Response:
        response = self.client.get(path, **options)  # type: ignore[arg-type]
        self.pages.append(response.text)
        return response

    def post(self, path: str, data: dict[str, str]) -> httpx.Response:
        response = self.client.post(path, data=data)
        self.pages.append(response.text)
        return response

    def csrf(self, path: str = "admin/geo/sites") -> str:
        found = CSRF.search(self.get(path).text)
        assert found is not None
        return found[1]


@contextmanager
def served(sites: SitePair, site: Geo) -> Iterator[AdminUI]:
    admin, _reader = admin_tokens(sites)
    with (
        serve_in_thread(create_app(site)) as base,
        httpx.Client(base_url=base, timeout=30, follow_redirects=False) as client,
    ):
        yield AdminUI(client, admin)


@pytest.fixture
def primary_ui(sites: SitePair) -> Iterator[AdminUI]:
    with served(sites, sites.primary) as ui:
        ui.sign_in()
        yield ui


def store_secondary_status(sites: SitePair) -> None:
    """The secondary's status, computed now and kept on the primary as its report would be."""
    status = compute_status(sites.secondary)
    with sites.primary.main() as conn:
        store_status(conn, status, sites.primary.clock.now())


def node_row(sites: SitePair, node_id: int) -> Node:
    with sites.primary.main_engine.connect() as conn:
        return NodeStore(sites.primary, conn).get(node_id)


def form_of(node: Node, **changes: object) -> dict[str, str]:
    """The edit form as a browser posts it for `node` with `changes` typed in (an unchecked
    flag is not sent)."""
    values: dict[str, object] = {"name": node.name, "url": node.url}
    values.update({s.name: getattr(node, s.name) for s in NODE_SETTINGS})
    values.update(changes)
    data: dict[str, str] = {}
    for name, value in values.items():
        if value is True:
            data[name] = "true"
        elif isinstance(value, list):
            data[name] = ", ".join(str(v) for v in value)
        elif value is not None and value is not False:
            data[name] = str(value)
        elif value is None:
            data[name] = ""
    return data


# -- signing in --------------------------------------------------------------------------------


def test_signed_out_pages_go_to_sign_in_and_the_fragment_answers_401(sites: SitePair) -> None:
    with served(sites, sites.primary) as ui:
        overview = ui.get("admin/geo/sites")
        edit = ui.get(f"admin/geo/sites/{sites.secondary_node.id}/edit")
        fragment = ui.get("admin/geo/sites/cards", headers={"X-Requested-With": "fetch"})
        post = ui.post(f"admin/geo/sites/{sites.secondary_node.id}/edit", {"name": "x"})

    assert overview.status_code == edit.status_code == post.status_code == 303
    assert overview.headers["location"].startswith("/admin/geo/sign_in?next=/admin/geo/sites")
    assert edit.headers["location"].startswith("/admin/geo/sign_in?next=")
    assert fragment.status_code == 401
    assert node_row(sites, sites.secondary_node.id).name == "secondary"


# -- the overview ------------------------------------------------------------------------------


def test_the_overview_shows_a_card_per_node_with_the_stored_counts(
    sites: SitePair, clock: FrozenClock, primary_ui: AdminUI
) -> None:
    seed(sites, clock)
    store_secondary_status(sites)
    clock.advance(12)
    secondary = sites.secondary_node

    response = primary_ui.get("admin/geo/sites")
    html = response.text

    assert response.status_code == 200
    assert response.headers["content-security-policy"].startswith("default-src 'self'")
    assert html.count(CARD) == 2
    card = html[html.index(f'id="site-{secondary.id}"') :]
    assert "Status 12 seconds ago" in card
    assert "10 of 30 synced (33.33%)" in card
    assert "10 of 10 verified (100.00%)" in card
    failed = f"{secondary.url.rstrip('/')}/admin/geo/sites/{secondary.id}/replication/uploads"
    assert f'<a class="failed" href="{failed}?replication_state=failed">4 failed</a>' in card
    assert '<progress class="bar-sync" max="30" value="10"' in card
    assert "Healthy" in card and "stale" not in card
    assert "Database replication lag" in card and "Selective sync</dt>" in card
    assert re.search(r"cursor (not started|at event)", card)
    assert '<th scope="row">uploads</th>' in card
    assert "<script>" not in html and " onclick=" not in html


def test_a_node_that_never_reported_says_so_instead_of_zeros(
    sites: SitePair, primary_ui: AdminUI
) -> None:
    with sites.primary.main() as conn:
        NodeStore(sites.primary, conn).add("tokyo", "http://127.0.0.1:9/")

    html = primary_ui.get("admin/geo/sites").text

    assert html.count(CARD) == 3
    assert html.count("no status yet") == 2  # the secondary has not reported either
    tokyo = html[html.index(">tokyo</h2>") :]
    assert " of " not in tokyo.split("</article>")[0]


def test_a_stale_status_is_marked_and_unhealthy(
    sites: SitePair, clock: FrozenClock, primary_ui: AdminUI
) -> None:
    store_secondary_status(sites)
    clock.advance(2 * 3600)

    html = primary_ui.get("admin/geo/sites").text
    card = html[html.index(f'id="site-{sites.secondary_node.id}"') :]

    assert "Status 2 hours ago" in card
    assert '<span class="badge bad">stale</span>' in card
    assert "Status not updated for 120 minutes" in card


def test_the_fragment_is_the_cards_alone_and_the_overview_refreshes_from_it(
    sites: SitePair, primary_ui: AdminUI
) -> None:
    overview = primary_ui.get("admin/geo/sites").text
    fragment = primary_ui.get("admin/geo/sites/cards", headers={"X-Requested-With": "fetch"})

    assert 'data-refresh="/admin/geo/sites/cards"' in overview
    assert fragment.status_code == 200
    assert fragment.text.count(CARD) == 2
    assert "<html" not in fragment.text and "<nav" not in fragment.text
    assert "<h1" not in fragment.text


def test_no_nodes_shows_how_to_register_them(sites: SitePair, primary_ui: AdminUI) -> None:
    with sites.primary.main() as conn:  # a site set up before any node: no registry rows yet
        conn.execute(delete(geo_nodes))

    html = primary_ui.get("admin/geo/sites").text

    assert CARD not in html
    assert "No sites registered yet" in html and "geosync node add" in html


# -- the edit form -----------------------------------------------------------------------------


def test_the_form_shows_every_setting_with_its_label_and_help(
    sites: SitePair, primary_ui: AdminUI
) -> None:
    html = primary_ui.get(f"admin/geo/sites/{sites.secondary_node.id}/edit").text

    for name in ["name", "url", *(s.name for s in NODE_SETTINGS)]:
        assert f'<label for="f-{name}">' in html
        assert f'id="f-{name}" name="{name}"' in html
        assert f'aria-describedby="f-{name}-help"' in html
    assert "<fieldset disabled" not in html
    assert 'name="enabled" value="true" checked' in html


def test_valid_changes_are_saved_and_the_overview_says_so(
    sites: SitePair, primary_ui: AdminUI
) -> None:
    node = sites.secondary_node
    data = form_of(
        node,
        csrf_token=primary_ui.csrf(),
        files_max_capacity=3,
        selective_sync_type="namespaces",
        selective_sync_namespace_ids="2, 1",
        internal_url="http://10.0.0.2:8080",
        sync_object_storage=True,
        enabled=False,
    )

    saved = primary_ui.post(f"admin/geo/sites/{node.id}/edit", data)
    after = primary_ui.get(saved.headers["location"]).text
    row = node_row(sites, node.id)

    assert saved.status_code == 303
    assert saved.headers["location"] == f"/admin/geo/sites?saved={node.id}"
    assert "Saved the settings of secondary." in after
    assert row.files_max_capacity == 3
    assert row.selective_sync_type == "namespaces" and row.selective_sync_namespace_ids == [1, 2]
    assert row.internal_url == "http://10.0.0.2:8080/"
    assert row.sync_object_storage is True and row.enabled is False
    assert "namespaces 1, 2" in after


def test_invalid_changes_are_refused_by_field_with_what_was_typed_kept(
    sites: SitePair, primary_ui: AdminUI
) -> None:
    node = sites.secondary_node
    before = node_row(sites, node.id)
    data = form_of(
        node,
        csrf_token=primary_ui.csrf(),
        name="primary",
        files_max_capacity="-1",
        minimum_reverification_interval="often",
        url="ftp://elsewhere",
    )

    response = primary_ui.post(f"admin/geo/sites/{node.id}/edit", data)
    html = response.text

    assert response.status_code == 422
    assert "4 settings were not saved" in html
    assert '<p id="f-files_max_capacity-error" class="field-error">' in html
    assert "files_max_capacity must be a whole number ≥ 0" in html
    assert "minimum_reverification_interval must be a whole number ≥ 1" in html
    assert "a node named &#39;primary&#39; already exists" in html
    assert "url must be an http:// or https:// URL" in html
    assert 'aria-describedby="f-files_max_capacity-error f-files_max_capacity-help"' in html
    assert 'name="files_max_capacity" value="-1"' in html
    assert 'name="minimum_reverification_interval" value="often"' in html
    assert 'href="#f-name"' in html
    assert node_row(sites, node.id) == before


def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(
    sites: SitePair, primary_ui: AdminUI
) -> None:
    node = sites.secondary_node
    before = node_row(sites, node.id)

    missing = primary_ui.post(f"admin/geo/sites/{node.id}/edit", form_of(node, name="x"))
    wrong = primary_ui.post(
        f"admin/geo/sites/{node.id}/edit", form_of(node, name="x", csrf_token="forged")
    )

    assert missing.status_code == wrong.status_code == 403
    assert node_row(sites, node.id) == before


def test_an_unknown_site_is_a_404_page(primary_ui: AdminUI) -> None:
    response = primary_ui.get("admin/geo/sites/999999/edit")

    assert response.status_code == 404
    assert "There is no site with id 999999." in response.text


def test_the_form_is_read_only_on_a_secondary_and_points_to_the_primary(
    sites: SitePair,
) -> None:
    node = sites.secondary_node
    before = node_row(sites, node.id)
    with served(sites, sites.secondary) as ui:
        ui.sign_in()
        form = ui.get(f"admin/geo/sites/{node.id}/edit").text
        data = form_of(node, csrf_token=ui.csrf(), files_max_capacity=1)
        refused = ui.post(f"admin/geo/sites/{node.id}/edit", data)

    primary_edit = f"{sites.primary_node.url}admin/geo/sites/{node.id}/edit"
    assert "<fieldset disabled>" in form
    assert "edits are made on the primary" in form
    assert f'<a href="{primary_edit}">' in form
    assert '<button type="submit" class="primary">Save</button>' not in form
    assert refused.status_code == 403
    assert node_row(sites, node.id) == before


# -- secrets -----------------------------------------------------------------------------------


def test_no_page_shows_a_secret(sites: SitePair, clock: FrozenClock) -> None:
    seed(sites, clock)
    store_secondary_status(sites)
    node = sites.secondary_node
    secret_key_base = sites.primary.settings.secret_key_base.get_secret_value()
    with served(sites, sites.primary) as ui:
        ui.get("admin/geo/sign_in")
        ui.sign_in()
        ui.get("admin/geo/sites")
        ui.get("admin/geo/sites/cards")
        ui.get(f"admin/geo/sites/{node.id}/edit")
        ui.post(f"admin/geo/sites/{node.id}/edit", form_of(node, csrf_token=ui.csrf(), url="x"))
        pages, token = ui.pages, ui.token

    secrets = [
        token,
        secret_key_base,
        node.secret(secret_key_base),
        node.encrypted_secret_access_key,
        sites.primary_node.secret(secret_key_base),
    ]
    assert len(pages) == 6
    for html in pages:
        for secret in secrets:
            assert secret not in html
