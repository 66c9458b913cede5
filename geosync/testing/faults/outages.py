"""Outages during a backfill: the primary's web server, the secondary's tracking database, the
standby the secondary reads, the primary's own database.

Each runs the same story with real processes: the secondary's worker starts a backfill, the fault
begins while syncs are in flight, the primary's application keeps writing (new uploads, new
events) while it lasts, then it ends. Everything must sync by itself afterwards, the worker must
stay up without a traceback, and no partial file may be left. The database faults need a
PostgreSQL server: the restarted one is a cluster of the scenario's own, the unreachable ones sit
behind a TCP proxy that is cut (the shared server is never touched).
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import make_url

from geosync.attempts import SITE_UNREACHABLE
from geosync.demo.replicators import UploadReplicator
from geosync.registry import Registry
from geosync.secondary.reachability import MAIN_DATABASE, PRIMARY
from geosync.states import SyncState
from geosync.status import compute_status
from geosync.testing.databases import DatabaseFactory
from geosync.testing.faults.base import FaultContext, Row
from geosync.testing.faults.harness import (
    ProcessPair,
    SplitDatabases,
    Stopwatch,
    add_uploads,
    attempts,
    attempts_since,
    blob_sizes,
    check_blobs,
    override_config,
    process_pair,
    seconds,
    state_counts,
    synced_count,
    tracebacks,
    wait_until,
)
from geosync.testing.pg_standby import (
    start_cluster,
    stop_cluster,
    streaming_standby,
    throwaway_cluster,
)
from geosync.testing.servers import free_port
from geosync.testing.tcp_proxy import TcpProxy

#: Seconds the story waits at most for the backfill to be under way before the fault.
UNDER_WAY = 60.0


def outage_seconds(size: int) -> float:
    """How long an outage lasts during a backfill of `size` blobs: 2 s per 100, 2 to 10 s."""
    return min(10.0, max(2.0, size / 50))


@dataclass
class Outage:
    """What an outage story measured."""

    down: float = 0.0
    failed_while_down: int = 0
    failure: str = ""
    first_transfer: float | None = None
    recovered: float | None = None
    retry_lines: int = 0
    #: Failed sync attempts that ended once the fault began (each one retry counted), and
    #: the most of them on one row: what the outage cost the rows' retry counts.
    failed_attempts: int = 0
    retry_growth: int = 0
    #: Syncs deferred because the site was unreachable (their retry count kept).
    deferred: int = 0
    #: What the secondary's status said while the fault lasted: 1 if it showed the site
    #: unreachable (and unhealthy), 0 if not, None when it was not asked.
    status_unreachable: float | None = None
    health: str = ""
    worker_alive: bool = True
    worker_tracebacks: int = 0
    extra: dict[str, float] = field(default_factory=dict)


def _failures(sites: ProcessPair) -> tuple[int, str]:
    """Rows failed now, and one of their failure messages (else that of a row waiting with
    one: a sync deferred while its site was away)."""
    registry = Registry(sites.pair.secondary, UploadReplicator)
    t = registry.table
    with sites.pair.secondary.tracking_engine.connect() as conn:
        rows = conn.execute(
            select(t.c.state, t.c.last_sync_failure)
            .where(t.c.state != int(SyncState.SYNCED), t.c.last_sync_failure.is_not(None))
            .order_by(t.c.state.desc())
        ).all()
    failed = sum(1 for state, _ in rows if state == SyncState.FAILED)
    return failed, str(rows[0][1]) if rows else ""


def outage_story(
    sites: ProcessPair,
    size: int,
    rng: random.Random,
    fault: Callable[[], Iterator[None]],
    down: float,
    *,
    tracking_reachable: bool = True,
    target: str | None = None,
) -> tuple[Outage, dict[int, str]]:
    """Backfill `size` uploads (half before the fault, half written during it) through
    `fault`, a generator that starts the fault, yields while it lasts, and ends it.

    `target` is the reachability target the fault takes away (`geosync.secondary.
    reachability`): the secondary's status is read while it lasts, to see that it says so.
    """
    geo = sites.pair.secondary
    paths = add_uploads(sites.pair, blob_sizes(rng, size // 2, large_every=10), rng, "before")
    worker = sites.secondary.start("worker")
    wait_until(lambda: synced_count(geo, UploadReplicator) >= max(1, size // 8), UNDER_WAY)
    result = Outage()
    began = geo.clock.now()
    steps = fault()
    next(steps)
    down_for = Stopwatch()
    paths |= add_uploads(sites.pair, blob_sizes(rng, size - size // 2), rng, "during")
    while down_for.seconds() < down:
        if tracking_reachable:
            count, message = _failures(sites)
            if count > result.failed_while_down or not result.failure:
                result.failed_while_down = max(count, result.failed_while_down)
                result.failure = message or result.failure
        if target is not None and down_for.seconds() >= min(2.0, down / 2):
            if result.status_unreachable is None or not result.status_unreachable:
                result.status_unreachable, result.health = _status_says(sites, target)
        time.sleep(0.2)
    result.down = down_for.seconds()
    next(steps, None)
    back = Stopwatch()
    before = min(synced_count(geo, UploadReplicator), size - 1)
    if wait_until(lambda: synced_count(geo, UploadReplicator) > before, 60 + size * 0.1):
        result.first_transfer = back.seconds()
    if wait_until(lambda: synced_count(geo, UploadReplicator) >= size, 60 + size * 0.1, 0.1):
        result.recovered = back.seconds()
    if tracking_reachable:
        failed = attempts_since(geo, UploadReplicator, "failed", began)
        result.failed_attempts = sum(failed.values())
        result.retry_growth = max(failed.values(), default=0)
        deferred = attempts_since(geo, UploadReplicator, SITE_UNREACHABLE, began)
        result.deferred = sum(deferred.values())
    result.worker_alive = worker.poll() is None
    result.retry_lines = len(sites.log_events(sites.secondary, "worker", "loop failed, retrying"))
    sites.secondary.stop("worker")
    result.worker_tracebacks = tracebacks(sites.secondary, "worker")
    return result, paths


def _status_says(sites: ProcessPair, target: str) -> tuple[float, str]:
    """Whether the secondary's status (as `geosync status` computes it) shows `target`
    unreachable and the node unhealthy; and its health text."""
    status = compute_status(sites.pair.secondary)
    said = status.get(f"{target}_reachable") == 0 and not status.healthy
    return float(said), str(status.get("health") or "")


#: Seconds within which everything must be synced after a 60 s site-level outage ends
#: (`bench/outage.py` judges it; the fault table prints it, since it depends on the machine's
#: load as much as on the outage).
SYNCED_AFTER = 10.0


def _row(
    name: str,
    done: str,
    ctx: FaultContext,
    size: int,
    run: Outage,
    paths: dict[int, str],
    sites: ProcessPair,
    site_level: bool = False,
) -> Row:
    """The row of an outage story; a `site_level` fault (the primary or the main database
    away) must also cost no retries and show in the status."""
    check = check_blobs(sites.pair, paths)
    counts = state_counts(sites.pair.secondary, UploadReplicator)
    recovered = run.recovered is not None
    serve_tracebacks = int(run.extra.get("serve_tracebacks", 0))
    passed = (
        recovered
        and check.clean
        and run.worker_alive
        and run.worker_tracebacks + serve_tracebacks == 0
    )
    if site_level:
        passed = passed and run.retry_growth == 0 and run.status_unreachable == 1
    seen = f"{run.failed_while_down} rows failed while down" + (
        f" ({run.failure[:90]!r})" if run.failure else ""
    )
    said = (
        ""
        if run.status_unreachable is None
        else f"; status {'said' if run.status_unreachable else 'did NOT say'} unreachable"
        + (f" ({run.health[:80]!r})" if run.health else "")
    )
    expected = (
        "the secondary says the site is unreachable, defers its syncs (0 retries counted) and"
        " probes it; all synced soon after it ends"
        if site_level
        else "all synced after it ends"
    )
    return Row(
        scenario=name,
        done=f"{done} for {seconds(run.down)} during a backfill of {size} blobs",
        expected=expected + "; worker up, 0 tracebacks in any log; 0 partial files",
        measured=(
            f"{seen}; {run.deferred} syncs deferred, {run.failed_attempts} failed attempts,"
            f" retry count grew by at most {run.retry_growth}{said}; {run.retry_lines} loop"
            " retry lines; first transfer"
            f" {seconds(run.first_transfer) if run.first_transfer is not None else 'never'}"
            f" and all {counts[SyncState.SYNCED]}/{size} synced"
            f" {seconds(run.recovered) if run.recovered is not None else 'NOT'} after it ended;"
            f" {check.describe()}; worker {'up' if run.worker_alive else 'DEAD'},"
            f" {run.worker_tracebacks + serve_tracebacks} tracebacks"
        ),
        passed=passed,
        figures={
            "failed_while_down": run.failed_while_down,
            "failed_attempts": run.failed_attempts,
            "retry_growth": run.retry_growth,
            "deferred": run.deferred,
            "status_unreachable": (
                -1.0 if run.status_unreachable is None else run.status_unreachable
            ),
            "recovered": float(recovered),
            "recovery_seconds": run.recovered or 0.0,
            "missing": check.missing,
            "differing": check.differing,
            "partial": check.partial,
            "stray": check.stray,
            "worker_alive": float(run.worker_alive),
            "worker_tracebacks": run.worker_tracebacks,
            **run.extra,
        },
        backend=ctx.backend,
    )


def primary_web_server_outage(
    ctx: FaultContext, size: int, down: float | None = None, backoff_scale: float | None = None
) -> Row:
    """The primary's `geosync serve` is SIGKILLed mid-backfill and started again `down`
    seconds later (default `outage_seconds`); `backoff_scale` replaces the scenarios' short
    retry delays (1.0: the real ones, as `bench/outage.py` runs it)."""
    rng = random.Random(ctx.seed)
    settings: dict[str, Any] = {} if backoff_scale is None else {"backoff_scale": backoff_scale}
    with process_pair(ctx, "web-outage", **settings) as sites:
        sites.primary.start("serve")

        def fault() -> Iterator[None]:
            sites.primary.stop("serve", signal.SIGKILL)
            yield
            sites.primary.start("serve")

        lasts = outage_seconds(size) if down is None else down
        run, paths = outage_story(sites, size, rng, fault, lasts, target=PRIMARY)
        return _row(
            "primary web server outage",
            "SIGKILL the primary's web server",
            ctx,
            size,
            run,
            paths,
            sites,
            site_level=True,
        )


def tracking_database_restart(ctx: FaultContext, size: int) -> Row:
    """The secondary's tracking database (a PostgreSQL cluster of its own) stops mid-backfill
    and starts again: a restart that cuts every connection of the worker."""
    rng = random.Random(ctx.seed)
    with throwaway_cluster() as cluster:
        main = DatabaseFactory("postgres", ctx.root / "main-db", ctx.postgres_url)
        tracking = DatabaseFactory("postgres", ctx.root / "tracking-db", cluster.url())
        with process_pair(ctx, "tracking-restart", SplitDatabases(main, tracking)) as sites:
            sites.primary.start("serve")

            def fault() -> Iterator[None]:
                stop_cluster(cluster, "fast")
                yield
                start_cluster(cluster)

            down = outage_seconds(size)
            run, paths = outage_story(sites, size, rng, fault, down, tracking_reachable=False)
            run.extra["synced_more_than_once"] = _synced_once(sites)
            kept = "sync outcome kept until the tracking database is back"
            run.extra["outcomes_kept"] = len(sites.log_events(sites.secondary, "worker", kept))
            return _row(
                "tracking database restart",
                "stop the secondary's tracking database (pg_ctl stop -m fast), start it",
                ctx,
                size,
                run,
                paths,
                sites,
            )


def _synced_once(sites: ProcessPair) -> float:
    """Records whose copy was synced more than once (a sync redone after an interruption)."""
    counts = attempts(sites.pair.secondary, UploadReplicator, "sync", "synced")
    return float(sum(1 for n in counts.values() if n > 1))


@contextmanager
def _proxied(url: str) -> Iterator[tuple[str, Callable[[], None], Callable[[], None]]]:
    """`url` behind a TCP proxy: the proxied URL, a function cutting it, one restoring it."""
    direct = make_url(url)
    port = free_port()
    upstream = (direct.host or "127.0.0.1", direct.port or 5432)
    proxies = [TcpProxy(port, upstream)]

    def cut() -> None:
        proxies[-1].close()

    def restore() -> None:
        proxies.append(TcpProxy(port, upstream))

    try:
        yield direct.set(port=port).render_as_string(hide_password=False), cut, restore
    finally:
        proxies[-1].close()


def standby_unreachable(ctx: FaultContext, size: int) -> Row:
    """The secondary reads the primary's database through a real streaming standby; the standby
    becomes unreachable (connections cut, new ones refused) mid-backfill, then comes back."""
    rng = random.Random(ctx.seed)
    with streaming_standby() as standby:
        databases = DatabaseFactory("postgres", ctx.root / "db", standby.primary.url())
        with process_pair(ctx, "standby-unreachable", databases) as sites:
            main = make_url(sites.pair.primary.settings.main_database_url)
            standby.wait_for_replay()
            replica = make_url(standby.standby.url(main.database or ""))
            with _proxied(replica.render_as_string(hide_password=False)) as (url, cut, restore):
                override_config(sites.secondary, sites.pair.secondary, main_database_url=url)
                sites.primary.start("serve")

                def fault() -> Iterator[None]:
                    cut()
                    yield
                    restore()

                down = outage_seconds(size)
                run, paths = outage_story(sites, size, rng, fault, down, target=MAIN_DATABASE)
                return _row(
                    "standby unreachable",
                    "cut the secondary's connection to its streaming standby",
                    ctx,
                    size,
                    run,
                    paths,
                    sites,
                    site_level=True,
                )


def primary_database_unreachable(ctx: FaultContext, size: int) -> Row:
    """The primary's web server loses its database mid-backfill (connections cut, new ones
    refused), while the application keeps writing; then the database is back."""
    rng = random.Random(ctx.seed)
    with process_pair(ctx, "primary-db-unreachable") as sites:
        direct = sites.pair.primary.settings.main_database_url
        with _proxied(direct) as (url, cut, restore):
            override_config(sites.primary, sites.pair.primary, main_database_url=url)
            sites.primary.start("serve")

            def fault() -> Iterator[None]:
                cut()
                yield
                restore()

            down = outage_seconds(size)
            run, paths = outage_story(sites, size, rng, fault, down, target=PRIMARY)
            run.extra["serve_tracebacks"] = tracebacks(sites.primary, "serve")
            return _row(
                "primary database unreachable",
                "cut the primary web server's connection to its database",
                ctx,
                size,
                run,
                paths,
                sites,
                site_level=True,
            )
