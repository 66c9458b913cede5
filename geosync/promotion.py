"""`geosync promote`: make this secondary the primary, after its plan says what that would lose.

The steps, each safe to run again (a second promotion finds every step done and says so):

1. the plan (`geosync.promotion_plan`): a promotion that would lose data is refused unless
   forced, naming what would be lost; a planned failover (`planned=True`) first makes the old
   primary's database read-only and waits, bounded, until the plan is clean;
2. the main database: `pg_promote()` on a PostgreSQL standby; a writable one is left as it
   is; the demo topology's SQLite file is the primary's own, shared, so nothing is promoted;
3. `geo_nodes`: this node becomes the primary and the old primary a secondary, or a disabled
   secondary when it does not answer (it then replicates nothing until it is re-attached);
4. the processes: a site's role comes from its settings (a tracking database makes a
   secondary), so the result says which setting to change and which processes to restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx
from sqlalchemy import Engine, create_engine, text

from geosync.db.engines import make_engine, parse_database_url, redact_url
from geosync.errors import ConfigurationError, GeoError, PromotionRefused, ValidationError
from geosync.nodes import Node, NodeStore
from geosync.promotion_plan import PromotionPlan, database_state, promotion_plan

if TYPE_CHECKING:
    from geosync.app import Geo


#: Seconds `pg_promote` may take before the promotion gives up on it.
PROMOTE_WAIT = 60
#: Seconds the old primary has to answer before it is taken for unreachable.
REACH_TIMEOUT = 3.0
#: Seconds between two plans of a planned failover.
PLAN_EVERY = 1.0


@dataclass
class Promotion:
    """What a promotion did, step by step, and what the operator still has to do."""

    steps: list[str] = field(default_factory=list)
    restart: list[str] = field(default_factory=list)
    forced_losses: list[str] = field(default_factory=list)


def promote(
    geo: Geo,
    *,
    force: bool = False,
    planned: bool = False,
    primary_database_url: str | None = None,
    timeout: float = 300.0,
    progress: Callable[[PromotionPlan], None] | None = None,
    reachable: Callable[[Node], bool] | None = None,
) -> Promotion:
    """Promote this site (see the module docstring); `PromotionRefused` when the plan shows
    loss and `force` is not given, `ConfigurationError` when this is not a secondary."""
    if not geo.has_tracking_database:
        raise ConfigurationError(
            "geosync promote runs on a secondary: this site has no tracking database"
        )
    result = Promotion()
    node = _own_node(geo)
    if node.primary and database_state(geo).kind != "standby":
        result.steps.append(f"node {node.name!r} is already the primary: nothing to promote")
    else:
        _check_plan(geo, result, force, planned, primary_database_url, timeout, progress)
        _promote_database(geo, result)
        _promote_node(geo, node, result, reachable or old_primary_answers)
    result.restart = restart_instructions(geo)
    return result


def _own_node(geo: Geo) -> Node:
    node = geo.current_node()
    if node is None:
        raise ConfigurationError(f"node {geo.settings.node_name!r} is not registered")
    return node


# -- 1. the plan ---------------------------------------------------------------------------


def _check_plan(
    geo: Geo,
    result: Promotion,
    force: bool,
    planned: bool,
    primary_database_url: str | None,
    timeout: float,
    progress: Callable[[PromotionPlan], None] | None,
) -> None:
    if planned:
        _make_primary_read_only(geo, primary_database_url, result)
        plan = wait_until_clean(geo, timeout, progress)
    else:
        plan = promotion_plan(geo)
    if plan.safe:
        result.steps.append("plan: safe, nothing would be lost")
        return
    losses = plan.losses()
    if not force:
        waited = f" after waiting {timeout:g} s" if planned else ""
        raise PromotionRefused(
            f"promotion refused{waited}: data would be lost: "
            + "; ".join(losses)
            + " (promote with --force to accept the loss)"
        )
    result.forced_losses = losses
    result.steps.append(
        "plan: data would be lost, promoting anyway (--force): " + "; ".join(losses)
    )


def wait_until_clean(
    geo: Geo, timeout: float, progress: Callable[[PromotionPlan], None] | None = None
) -> PromotionPlan:
    """The plan once it is safe, or the last one when `timeout` seconds passed first; each plan
    on the way is given to `progress`."""
    deadline = time.monotonic() + timeout
    while True:
        plan = promotion_plan(geo)
        if progress is not None:
            progress(plan)
        if plan.safe or time.monotonic() >= deadline:
            return plan
        time.sleep(min(PLAN_EVERY, max(0.0, deadline - time.monotonic())))


def _make_primary_read_only(geo: Geo, url: str | None, result: Promotion) -> None:
    """A planned failover's first step: no write may reach the old primary while the plan
    drains, or it would be lost after all."""
    if database_state(geo).kind == "shared_sqlite":
        result.steps.append(
            "old primary: the demo topology shares one SQLite file; stop the old primary's"
            " application writes yourself (geosync cannot make its file read-only)"
        )
        return
    if url is None:
        raise ConfigurationError(
            "a planned failover makes the old primary read-only first: give its main database"
            " with --primary-database-url (a superuser's URL)"
        )
    engine = _admin_engine(url, "--primary-database-url")
    try:
        with engine.connect() as conn:
            conn.execute(text("ALTER SYSTEM SET default_transaction_read_only = on"))
            conn.execute(text("SELECT pg_reload_conf()"))
    finally:
        engine.dispose()
    result.steps.append(
        f"old primary: database {redact_url(url)} set read-only"
        " (default_transaction_read_only = on, configuration reloaded)"
    )


def _admin_engine(url: str, setting: str) -> Engine:
    """An autocommit engine on a PostgreSQL database named by `setting` (never read-only: it
    runs `pg_promote()` or `ALTER SYSTEM`)."""
    parsed = parse_database_url(url, setting)
    if parsed.get_backend_name() != "postgresql":
        raise ValidationError(f"{setting} must be a PostgreSQL database URL")
    return create_engine(parsed.set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")


# -- 2. the main database ------------------------------------------------------------------


def _promote_database(geo: Geo, result: Promotion) -> None:
    state = database_state(geo)
    if state.kind == "shared_sqlite":
        result.steps.append(
            "main database: SQLite shared with the old primary (demo topology): nothing to"
            " promote; it is written by this site once it runs as the primary"
        )
        return
    if state.kind == "writable":
        result.steps.append("main database: already writable, nothing to promote")
        return
    engine = _admin_engine(geo.settings.main_database_url, "main_database_url")
    try:
        with engine.connect() as conn:
            done = conn.execute(
                text("SELECT pg_promote(true, :wait)"), {"wait": PROMOTE_WAIT}
            ).scalar()
    finally:
        engine.dispose()
    if not done:
        raise GeoError(f"pg_promote() did not finish within {PROMOTE_WAIT} s: see the server's log")
    geo.main_engine.dispose()  # pooled connections were opened on the standby
    result.steps.append("main database: PostgreSQL standby promoted (pg_promote), now writable")


# -- 3. the node registry ------------------------------------------------------------------


def _promote_node(
    geo: Geo, node: Node, result: Promotion, reachable: Callable[[Node], bool]
) -> None:
    old = geo.primary_node()
    answers = old is not None and old.id != node.id and reachable(old)  # asked before writing
    engine = make_engine(geo.settings.main_database_url, setting="main_database_url")
    try:
        with engine.begin() as conn:
            store = NodeStore(geo, conn)
            if store.get(node.id).primary:
                result.steps.append(f"geo_nodes: {node.name!r} is already the primary")
            else:
                store.promote(node.id)
                result.steps.append(f"geo_nodes: {node.name!r} is now the primary")
            if old is not None and old.id != node.id:
                _demote(store, old, result, answers)
    finally:
        engine.dispose()


def _demote(store: NodeStore, old: Node, result: Promotion, answers: bool) -> None:
    """The old primary, just made a secondary by `promote`: disabled when it does not answer."""
    if answers:
        result.steps.append(
            f"geo_nodes: old primary {old.name!r} is now a secondary (it answers at"
            f" {old.effective_internal_url}: stop its processes and re-attach it)"
        )
        return
    store.update(old.id, enabled=False)
    result.steps.append(
        f"geo_nodes: old primary {old.name!r} is now a disabled secondary (unreachable at"
        f" {old.effective_internal_url}); re-attach it with `geosync reattach` when it is back"
    )


def old_primary_answers(node: Node) -> bool:
    """Whether anything answers HTTP at the node's internal URL within `REACH_TIMEOUT`."""
    try:
        httpx.get(node.effective_internal_url, timeout=REACH_TIMEOUT)
    except httpx.HTTPError:
        return False
    return True


# -- 4. the processes ----------------------------------------------------------------------


def restart_instructions(geo: Geo) -> list[str]:
    """What the operator must change and restart for this site to run as the primary."""
    name = geo.settings.node_name
    return [
        f"in the settings of site {name!r}, remove tracking_database_url"
        " (GEOSYNC_TRACKING_DATABASE_URL): a site with a tracking database runs as a secondary",
        "keep main_database_url: it names the promoted, now writable, database",
        "restart every `geosync worker` of this site (they run the secondary's loops until"
        " restarted) and every `geosync serve` (it opened the main database read-only)",
        "restart the application's processes that write, pointed at this site's main database",
    ]
