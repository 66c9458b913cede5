"""Browser tests: Playwright (Python) driving the system's Chromium against real sites.

Both sites run as real `geosync serve` and `geosync worker` processes on loopback with real
data. Chromium is Debian's `chromium` package (`GEOSYNC_CHROMIUM` names another binary); a
browser is never downloaded. In CI a missing Chromium fails the run (`.ci/run` installs it);
elsewhere the tests skip with one line saying what to install.

Every page a test opens is watched: a console error, an uncaught exception or a failed
request fails the test, unless the test declared that status as expected.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from geosync.auth import create_admin_token
from geosync.demo.models import Upload
from geosync.demo.replicators import UploadReplicator
from geosync.states import SyncState
from geosync.testing import DatabaseFactory, SitePair, build_site_pair
from geosync.testing.processes import SiteProcesses, site_processes
from tests.conftest import DEMO_REPLICATORS, IN_CI, POSTGRES_URL

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("GEOSYNC_CHROMIUM") or shutil.which("chromium")
#: Where screenshots go when set (`make screenshots` sets docs/images).
SCREENSHOTS = os.environ.get("GEOSYNC_SCREENSHOTS")
SYNCED_UPLOADS = 30
BROKEN_UPLOADS = 3
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def _require_chromium() -> str:
    if CHROMIUM is None:
        reason = "no Chromium: install Debian's chromium package (or set GEOSYNC_CHROMIUM)"
        if IN_CI:
            pytest.fail(f"browser tests must run in CI: {reason}")
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless system Chromium (never a downloaded browser)."""
    executable = _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox"]
        )
        yield chromium
        chromium.close()


@dataclass
class LiveSites:
    """Both sites running as processes, with data and an admin token."""

    pair: SitePair
    primary: SiteProcesses
    secondary: SiteProcesses
    token: str
    broken: list[int]
    root: Path

    def synced_count(self) -> int:
        """How many uploads the secondary has synced now."""
        table = self.pair.secondary.tables.registry(UploadReplicator)
        with self.pair.secondary.tracking_engine.connect() as conn:
            states = conn.execute(select(table.c.state)).scalars().all()
        return sum(1 for s in states if s == SyncState.SYNCED)

    def registry_state(self, record_id: int) -> SyncState:
        """The secondary's sync state of upload `record_id`, read from its tracking database."""
        table = self.pair.secondary.tables.registry(UploadReplicator)
        with self.pair.secondary.tracking_engine.connect() as conn:
            state = conn.execute(
                select(table.c.state).where(table.c.upload_id == record_id)
            ).scalar_one()
        return SyncState(state)

    def repair(self, record_id: int) -> None:
        """Give a broken upload its file on the primary, so a resync can succeed."""
        storage = self.pair.primary.settings.blob_storage("uploads")
        with self.pair.primary.main_engine.connect() as conn:
            path = conn.execute(select(Upload.path).where(Upload.id == record_id)).scalar_one()
        target = storage / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"repaired\n")


def _seed(pair: SitePair) -> list[int]:
    storage = pair.primary.settings.blob_storage("uploads")
    broken = []
    with pair.primary.session() as session, session.begin():
        for i in range(SYNCED_UPLOADS + BROKEN_UPLOADS):
            path = f"{i % 3}/report-{i}.txt"
            if i < SYNCED_UPLOADS:
                target = storage / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(f"upload {i}\n".encode())
            upload = Upload(path=path, namespace_id=1, size=10)
            session.add(upload)
            session.flush()
            if i >= SYNCED_UPLOADS:
                broken.append(upload.id)
    return broken


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll `check` until it holds, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSites]:
    """A primary and a secondary as processes, 30 uploads synced and 3 failed."""
    root = tmp_path_factory.mktemp("browser")
    databases = DatabaseFactory("sqlite", root / "db", POSTGRES_URL)
    pair = build_site_pair(
        root / "sites",
        DEMO_REPLICATORS,
        databases,
        backoff_scale=0.01,
        poll_interval=0.2,
        log_format="json",
    )
    primary, secondary = site_processes(pair, root, "geosync.demo.replicators")
    try:
        broken = _seed(pair)
        with pair.primary.main() as conn:
            token = create_admin_token(conn, "browser", pair.primary.clock.now())
        for site in (primary, secondary):
            site.start("serve")
            site.start("worker")
        sites = LiveSites(pair, primary, secondary, token, broken, root)
        wait_for(lambda: _settled(sites), "30 synced and 3 failed uploads on the secondary")
        yield sites
    finally:
        secondary.stop_all()
        primary.stop_all()
        pair.dispose()
        databases.cleanup()


def _settled(sites: LiveSites) -> bool:
    table = sites.pair.secondary.tables.registry(UploadReplicator)
    with sites.pair.secondary.tracking_engine.connect() as conn:
        states = [SyncState(s) for s in conn.execute(select(table.c.state)).scalars()]
    synced = states.count(SyncState.SYNCED)
    failed = states.count(SyncState.FAILED)
    return synced == SYNCED_UPLOADS and failed == BROKEN_UPLOADS


@dataclass
class Watched:
    """A page whose console errors and failed requests are collected."""

    page: Any
    problems: list[str] = field(default_factory=list)
    expected_statuses: set[int] = field(default_factory=set)

    def shot(self, name: str) -> None:
        """Save a screenshot as `<name>.png` when screenshots were asked for."""
        if SCREENSHOTS:
            Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


def _watch(page: Any, watched: Watched) -> None:
    def on_console(message: Any) -> None:
        if message.type != "error":
            return
        status = re.search(r"responded with a status of (\d+)", message.text)
        if status and int(status.group(1)) in watched.expected_statuses:
            return  # the response itself was expected (a refused sign-in answers 401)
        watched.problems.append(f"console error: {message.text}")

    def on_response(response: Any) -> None:
        if response.status >= 400 and response.status not in watched.expected_statuses:
            watched.problems.append(f"{response.status} for {response.url}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: watched.problems.append(f"page error: {error}"))

    def on_failed(request: Any) -> None:
        if request.failure == "net::ERR_ABORTED":
            return  # the browser dropped it on leaving the page (a click navigated on)
        watched.problems.append(f"failed: {request.url} ({request.failure})")

    page.on("requestfailed", on_failed)
    page.on("response", on_response)


@pytest.fixture(params=["desktop"])
def view(request: pytest.FixtureRequest, browser: Any) -> Iterator[Watched]:
    """A fresh browser context and page (no cookies), watched for errors."""
    size = PHONE if request.param == "phone" else DESKTOP
    context = browser.new_context(viewport=size)
    page = context.new_page()
    page.set_default_timeout(15_000)
    watched = Watched(page)
    _watch(page, watched)
    yield watched
    context.close()
    assert not watched.problems, "\n".join(watched.problems)


def sign_in(view: Watched, site: SiteProcesses, token: str, next_path: str = "") -> None:
    """Sign in on `site`'s admin UI with `token` through the form, as a person would."""
    page = view.page
    page.goto(f"{site.url}admin/geo/sign_in" + (f"?next={next_path}" if next_path else ""))
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()


def csrf_of(page: Any) -> str:
    """The CSRF token of the page shown (the sign-out form carries it on every page)."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.content())
    assert match, "no CSRF token on the page"
    return match.group(1)
