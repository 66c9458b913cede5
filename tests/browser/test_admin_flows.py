"""The operator's main paths through the admin UI, in a real browser against live sites:
the overview, a list filtered to failed items, an item, Resync, Reverify all as a job."""

from __future__ import annotations

import re
from typing import Any

from geosync.states import SyncState
from tests.browser.conftest import (
    PHONE,
    SYNCED_UPLOADS,
    LiveSites,
    Watched,
    sign_in,
    wait_for,
)


def uploads_list(live: LiveSites, query: str = "") -> str:
    node = live.pair.secondary_node.id
    return f"{live.secondary.url}admin/geo/sites/{node}/replication/uploads{query}"


def test_the_overview_shows_one_card_per_site_and_updates_itself(
    live: LiveSites, view: Watched
) -> None:
    sign_in(view, live.secondary, live.token)
    page = view.page
    page.goto(f"{live.secondary.url}admin/geo/sites")
    cards = page.locator("article.card")

    wait_for(lambda: "no status yet" not in cards.nth(1).inner_text(), "the secondary's status")
    assert cards.count() == 2
    texts = [cards.nth(i).inner_text() for i in range(2)]
    assert any("primary" in t for t in texts) and any("secondary" in t for t in texts)
    failed_links = page.get_by_role("link", name=re.compile(r"\b3 failed"))
    # the secondary reports its status every few seconds and the cards refresh in place
    wait_for(lambda: failed_links.count() >= 1, "the failed uploads on the overview, unreloaded")
    view.shot("overview")


def test_this_secondarys_card_says_what_a_promotion_now_would_lose(
    live: LiveSites, view: Watched
) -> None:
    sign_in(view, live.secondary, live.token)
    page = view.page
    page.goto(f"{live.secondary.url}admin/geo/sites")
    plans = page.locator("section.promotion-plan")

    assert plans.count() == 1  # on this site's own card only; the primary has nothing to promote
    own_card = page.locator("article.card", has=plans)
    assert "this site" in own_card.inner_text()
    text = plans.inner_text()
    assert "If this site were promoted now" in text and "data would be lost" in text
    # the broken uploads are retried: at any moment some may be in a new attempt, not failed
    assert re.search(r"uploads: 3 not synced \([1-3] failed \([1-3] x File is missing", text), text
    view.shot("promotion-plan")


def test_filter_to_failed_open_an_item_and_resync_it(live: LiveSites, view: Watched) -> None:
    sign_in(view, live.secondary, live.token)
    page = view.page
    page.goto(uploads_list(live, "?replication_state=failed"))
    rows = page.locator("tbody tr")

    assert rows.count() == len(live.broken)
    view.shot("list")
    record = live.broken[0]
    row = page.locator(f"#registry-{_registry_id(live, record)}")
    row.get_by_role("link").first.click()
    page.wait_for_load_state()
    assert page.get_by_role("heading", level=1).inner_text().lower().startswith("upload")
    assert "Attempts" in page.content() or "attempt" in page.content().lower()
    view.shot("item")

    live.repair(record)
    page.get_by_role("button", name="Resync").first.click()
    page.wait_for_load_state()
    wait_for(lambda: live.registry_state(record) is SyncState.SYNCED, "the resynced upload")
    number = live.broken.index(record) + 30  # seeded as `report-<number>`
    page.goto(uploads_list(live, f"?replication_state=synced&keyword=report-{number}."))
    assert page.locator(f"#registry-{_registry_id(live, record)}").count() == 1


def test_reverify_all_runs_as_a_job_whose_progress_is_live(live: LiveSites, view: Watched) -> None:
    sign_in(view, live.secondary, live.token)
    page = view.page
    page.goto(uploads_list(live))
    page.get_by_role("button", name="Reverify all").click()
    page.wait_for_load_state()

    synced = live.synced_count()
    assert synced >= SYNCED_UPLOADS
    assert f"This will queue {synced} uploads" in page.locator("main").inner_text()
    page.get_by_role("button", name="Confirm").click()
    page.wait_for_load_state()
    assert "/admin/geo/jobs" in page.url
    job = page.locator("main").get_by_text(re.compile("done", re.IGNORECASE)).first
    job.wait_for(timeout=60_000)  # the page updates itself: no reload here
    view.shot("job")


def test_pages_fit_a_phone_sized_window(live: LiveSites, browser: Any) -> None:
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    try:
        page.goto(f"{live.secondary.url}admin/geo/sign_in")
        page.get_by_label("Admin token").fill(live.token)
        page.get_by_role("button", name="Sign in").click()
        for path in ("admin/geo/sites", "admin/geo/jobs", "admin/geo/activity"):
            page.goto(live.secondary.url + path)
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{path} scrolls sideways on a phone by {overflow}px"
    finally:
        context.close()


def test_the_keyboard_reaches_the_form_with_a_visible_focus(live: LiveSites, view: Watched) -> None:
    page = view.page
    page.goto(f"{live.secondary.url}admin/geo/sign_in")
    for _ in range(6):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "token":
            break
    assert page.evaluate("document.activeElement.id") == "token"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"


def _registry_id(live: LiveSites, record_id: int) -> int:
    from sqlalchemy import select

    from geosync.demo.replicators import UploadReplicator

    table = live.pair.secondary.tables.registry(UploadReplicator)
    with live.pair.secondary.tracking_engine.connect() as conn:
        found = conn.execute(select(table.c.id).where(table.c.upload_id == record_id)).scalar_one()
    return int(found)
