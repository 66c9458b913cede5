"""`geosync check`: a preflight of one site, like GitLab's `geo:check`.

Each check says what it found and, when it fails, the one thing to do about it. Checks that
need an earlier one (a database, a registered node) are skipped when it failed.

A secondary whose primary does not answer gets a warning, not a failure: the documented order
runs `geosync check` on every site before any `geosync serve`, and a secondary's worker waits
for its primary by itself (retries with backoff). A primary that answers wrongly (no `Date`
header, skewed clock) is still a failure.
"""

from __future__ import annotations

import email.utils
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from geosync.db.engines import error_line, is_sqlite
from geosync.errors import GeoError

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.nodes import Node

#: Node tokens live one minute with 60 s leeway: more skew than this breaks them.
MAX_CLOCK_SKEW = timedelta(seconds=30)
HTTP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Check:
    """The outcome of one check; `fix` is set when it failed or warns.

    A warning is `ok` (it fails nothing) but says what to look at.
    """

    name: str
    ok: bool
    message: str
    fix: str | None = None
    warning: bool = False


def passed(name: str, message: str) -> Check:
    """A check that passed."""
    return Check(name, True, message)


def failed(name: str, message: str, fix: str) -> Check:
    """A check that failed, with the one-line fix."""
    return Check(name, False, message, fix)


def warned(name: str, message: str, fix: str) -> Check:
    """A check that does not fail the preflight but names something to look at."""
    return Check(name, True, message, fix, warning=True)


def run_checks(load: Callable[[], Geo]) -> list[Check]:
    """Every check of the site that `load` builds (its settings are the first check)."""
    try:
        geo = load()
    except GeoError as exc:
        return [failed("settings", str(exc), "set it in the config file or its GEOSYNC_* variable")]
    secondary = geo.has_tracking_database
    role = "secondary" if secondary else "primary"
    checks = [passed("settings", f"node {geo.settings.node_name!r}, configured as {role}")]
    main = database_check("main database", geo.main_engine, "main_database_url")
    checks.append(main)
    if main.ok:
        checks.append(schema_check(geo, "main"))
    if secondary:
        tracking = database_check("tracking database", geo.tracking_engine, "tracking_database_url")
        checks.append(tracking)
        if tracking.ok:
            checks.append(schema_check(geo, "tracking"))
        checks.append(tracking_writable(geo))
    if main.ok:
        checks.append(main_database_role(geo))
        node_check, node = registration(geo)
        checks.append(node_check)
        if secondary and node is not None:
            checks.extend(primary_checks(geo))
    checks.append(git_present())
    checks.extend(storages_writable(geo))
    return checks


def database_check(name: str, engine: Engine, setting: str) -> Check:
    """The database answers a query."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return failed(
            name,
            f"cannot connect: {error_line(exc)}",
            f"check the setting '{setting}' and that the database server is running",
        )
    return passed(name, f"reachable ({engine.dialect.name})")


def schema_check(geo: Geo, database: str) -> Check:
    """The database is at the framework's Alembic head and has every derived table and index."""
    from geosync.db.schema import schema_state

    name = f"{database} database schema"
    if database == "main":
        engine, derived = geo.main_engine, geo.tables.main
        # A secondary's main database is the primary's replica: it is upgraded there.
        where = " on the primary" if geo.main_readonly else ""
    else:
        engine, derived, where = geo.tracking_engine, geo.tables.tracking, ""
    try:
        state = schema_state(engine, database, derived)
    except SQLAlchemyError as exc:
        return failed(name, f"cannot read: {error_line(exc)}", f"run `geosync db upgrade`{where}")
    if not state.current:
        return failed(name, state.describe(), f"run `geosync db upgrade`{where}")
    return passed(name, state.describe())


def tracking_writable(geo: Geo) -> Check:
    """The tracking database takes writes (SQLite: a write lock; PostgreSQL: not a standby)."""
    name = "tracking database writable"
    try:
        with geo.tracking() as conn:
            if not is_sqlite(geo.tracking_engine):
                read_only = conn.execute(text("SELECT pg_is_in_recovery()")).scalar()
                if read_only:
                    return failed(
                        name,
                        "the tracking database is a read-only standby",
                        "point tracking_database_url at a writable database of this site",
                    )
    except SQLAlchemyError as exc:
        return failed(
            name, f"cannot write: {error_line(exc)}", "give the geosync user write access to it"
        )
    return passed(name, "writable")


def main_database_role(geo: Geo) -> Check:
    """A secondary's main database must be a read-only replica; a primary's must be writable."""
    name = "main database role"
    secondary = geo.has_tracking_database
    if is_sqlite(geo.main_engine):
        mode = "read-only (mode=ro)" if geo.main_readonly else "writable"
        return passed(name, f"SQLite file opened {mode}")
    try:
        with geo.main_engine.connect() as conn:
            standby = bool(conn.execute(text("SELECT pg_is_in_recovery()")).scalar())
    except SQLAlchemyError as exc:
        return failed(name, error_line(exc), "check main_database_url")
    if secondary and not standby:
        return failed(
            name,
            "the main database is writable: a secondary must read a streaming standby",
            "point main_database_url at a standby of the primary (pg_basebackup -R)",
        )
    if not secondary and standby:
        return failed(
            name,
            "the main database is a read-only standby, but this site is configured as primary",
            "point main_database_url at the writable primary database",
        )
    return passed(name, "streaming standby (read-only)" if standby else "writable primary")


def registration(geo: Geo) -> tuple[Check, Node | None]:
    """This site's node is registered, enabled and in the role its settings say."""
    name = "node registration"
    fix = "run `geosync node add NAME URL` on the primary (with --primary for the primary)"
    try:
        node = geo.current_node()
        primary = geo.primary_node()
    except SQLAlchemyError as exc:
        return failed(name, error_line(exc), "run `geosync db upgrade` on the primary"), None
    if node is None:
        return failed(name, f"no node named {geo.settings.node_name!r}", fix), None
    secondary = geo.has_tracking_database
    if node.primary == secondary:
        registered = "primary" if node.primary else "secondary"
        return failed(
            name,
            f"node {node.name!r} is registered as {registered} but configured otherwise",
            "set or remove tracking_database_url to match the node's role",
        ), node
    if not node.enabled:
        return failed(
            name,
            f"node {node.name!r} is disabled",
            f"run `geosync node update {node.name} --enabled`",
        ), node
    if secondary and primary is None:
        return failed(name, "no primary node is registered", fix), node
    return passed(name, f"node {node.name!r} (id {node.id}) registered"), node


def primary_checks(geo: Geo) -> list[Check]:
    """A secondary's primary answers over HTTP (a warning if not) and its clock agrees."""
    name = "primary reachable"
    primary = geo.primary_node()
    assert primary is not None
    url = primary.effective_internal_url
    try:
        before = time.monotonic()
        response = httpx.get(url, timeout=HTTP_TIMEOUT)
        half_trip = timedelta(seconds=(time.monotonic() - before) / 2)
    except httpx.HTTPError:
        return [
            warned(
                name,
                f"primary not reachable at {url} (is `geosync serve` running there?)",
                "start `geosync serve` on the primary (or correct its node's internal_url);"
                " the clock skew is checked once it answers",
            )
        ]
    return [passed(name, f"{url} answers"), clock_skew(geo, url, response, half_trip)]


def clock_skew(geo: Geo, url: str, response: httpx.Response, half_trip: timedelta) -> Check:
    """This machine's clock agrees with the primary's (the `Date` of its HTTP answer)."""
    name = "clock skew with the primary"
    date = response.headers.get("date")
    if not date:
        return failed(name, f"{url} sent no Date header", "serve the primary with `geosync serve`")
    try:
        theirs = email.utils.parsedate_to_datetime(date).astimezone(UTC)
    except (TypeError, ValueError):
        return failed(
            name, f"unreadable Date header {date!r}", "serve the primary with `geosync serve`"
        )
    skew = (geo.clock.now() - half_trip) - theirs
    seconds = abs(skew.total_seconds())
    if abs(skew) > MAX_CLOCK_SKEW:
        return failed(
            name,
            f"clocks differ by {seconds:.0f} s (at most {MAX_CLOCK_SKEW.seconds} s allowed)",
            "synchronise both machines' clocks with NTP (chrony or systemd-timesyncd)",
        )
    return passed(name, f"within {max(seconds, 1.0):.0f} s")


def git_present() -> Check:
    """The `git` binary is installed."""
    found = shutil.which("git")
    if found is None:
        return failed(
            "git", "git is not installed or not on PATH", "install git (apt-get install git)"
        )
    try:
        version = subprocess.run(
            [found, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return failed("git", f"{found} does not run", "reinstall git")
    return passed("git", version)


def storages_writable(geo: Geo) -> list[Check]:
    """Every blob storage and the repository root exist and take new files."""
    places: dict[str, Path] = {}
    checks: list[Check] = []
    for name, entry in sorted(geo.settings.blob_storages.items()):
        if isinstance(entry, Path):
            places[f"storage {name!r}"] = entry
        else:
            checks.append(_object_store_reachable(geo, name))
    if geo.settings.repository_storage_root is not None:
        places["repository storage"] = geo.settings.repository_storage_root
    return [_writable(name, path) for name, path in places.items()] + checks


def _object_store_reachable(geo: Geo, name: str) -> Check:
    """An object-store storage answers a listing with this site's credentials."""
    from geosync.storage import blob_store

    label = f"storage {name!r}"
    try:
        store = blob_store(geo.settings, name)
        store.list_page(limit=1)
    except GeoError as exc:
        return failed(label, exc.message, "check its URL, endpoint, region and credentials")
    return passed(label, f"{store.describe()} answers")


def _writable(name: str, path: Path) -> Check:
    fix = f"create {path} and let the geosync user write to it"
    if not path.is_dir():
        return failed(name, f"{path} is not a directory", fix)
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".geosync-check-"):
            pass
    except OSError as exc:
        return failed(name, f"cannot write to {path}: {exc.strerror}", fix)
    return passed(name, f"{path} is writable")
