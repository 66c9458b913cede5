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

from sqlalchemy import select
from sqlalchemy.engine import make_url

from geosync.demo.replicators import UploadReplicator
from geosync.registry import Registry
from geosync.states import SyncState
from geosync.testing.databases import DatabaseFactory
from geosync.testing.faults.base import FaultContext, Row
from geosync.testing.faults.harness import (
    ProcessPair,
    SplitDatabases,
    Stopwatch,
    add_uploads,
    attempts,
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
    worker_alive: bool = True
    worker_tracebacks: int = 0
    extra: dict[str, float] = field(default_factory=dict)


def _failures(sites: ProcessPair) -> tuple[int, str]:
    """Rows failed now, and one of their failure messages."""
    registry = Registry(sites.pair.secondary, UploadReplicator)
    t = registry.table
    with sites.pair.secondary.tracking_engine.connect() as conn:
        rows = conn.execute(
            select(t.c.last_sync_failure).where(t.c.state == int(SyncState.FAILED))
        ).all()
    return len(rows), str(rows[0][0]) if rows else ""


def outage_story(
    sites: ProcessPair,
    size: int,
    rng: random.Random,
    fault: Callable[[], Iterator[None]],
    down: float,
    *,
    tracking_reachable: bool = True,
) -> tuple[Outage, dict[int, str]]:
    """Backfill `size` uploads (half before the fault, half written during it) through
    `fault`, a generator that starts the fault, yields while it lasts, and ends it."""
    geo = sites.pair.secondary
    paths = add_uploads(sites.pair, blob_sizes(rng, size // 2, large_every=10), rng, "before")
    worker = sites.secondary.start("worker")
    wait_until(lambda: synced_count(geo, UploadReplicator) >= max(1, size // 8), UNDER_WAY)
    result = Outage()
    steps = fault()
    next(steps)
    down_for = Stopwatch()
    paths |= add_uploads(sites.pair, blob_sizes(rng, size - size // 2), rng, "during")
    while down_for.seconds() < down:
        if tracking_reachable:
            count, message = _failures(sites)
            if count > result.failed_while_down:
                result.failed_while_down, result.failure = count, message
        time.sleep(0.2)
    result.down = down_for.seconds()
    next(steps, None)
    back = Stopwatch()
    before = min(synced_count(geo, UploadReplicator), size - 1)
    if wait_until(lambda: synced_count(geo, UploadReplicator) > before, 60 + size * 0.1):
        result.first_transfer = back.seconds()
    if wait_until(lambda: synced_count(geo, UploadReplicator) >= size, 60 + size * 0.1, 0.1):
        result.recovered = back.seconds()
    result.worker_alive = worker.poll() is None
    result.retry_lines = len(sites.log_events(sites.secondary, "worker", "loop failed, retrying"))
    sites.secondary.stop("worker")
    result.worker_tracebacks = tracebacks(sites.secondary, "worker")
    return result, paths


def _row(
    name: str,
    done: str,
    ctx: FaultContext,
    size: int,
    run: Outage,
    paths: dict[int, str],
    sites: ProcessPair,
    expect_failures: bool = True,
) -> Row:
    check = check_blobs(sites.pair, paths)
    counts = state_counts(sites.pair.secondary, UploadReplicator)
    recovered = run.recovered is not None
    serve_tracebacks = int(run.extra.get("serve_tracebacks", 0))
    passed = (
        recovered
        and check.clean
        and run.worker_alive
        and run.worker_tracebacks + serve_tracebacks == 0
        and (run.failed_while_down > 0 or not expect_failures)
    )
    seen = f"{run.failed_while_down} rows failed while down" + (
        f" ({run.failure[:90]!r})" if run.failure else ""
    )
    return Row(
        scenario=name,
        done=f"{done} for {seconds(run.down)} during a backfill of {size} blobs",
        expected=(
            ("rows fail with a clear reason and back off; " if expect_failures else "")
            + "all synced after it ends; worker up, 0 tracebacks in any log; 0 partial files"
        ),
        measured=(
            f"{seen}; {run.retry_lines} loop retry lines; first transfer"
            f" {seconds(run.first_transfer) if run.first_transfer is not None else 'never'}"
            f" and all {counts[SyncState.SYNCED]}/{size} synced"
            f" {seconds(run.recovered) if run.recovered is not None else 'NOT'} after it ended;"
            f" {check.describe()}; worker {'up' if run.worker_alive else 'DEAD'},"
            f" {run.worker_tracebacks + serve_tracebacks} tracebacks"
        ),
        passed=passed,
        figures={
            "failed_while_down": run.failed_while_down,
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


def primary_web_server_outage(ctx: FaultContext, size: int) -> Row:
    """The primary's `geosync serve` is SIGKILLed mid-backfill and started again later."""
    rng = random.Random(ctx.seed)
    with process_pair(ctx, "web-outage") as sites:
        sites.primary.start("serve")

        def fault() -> Iterator[None]:
            sites.primary.stop("serve", signal.SIGKILL)
            yield
            sites.primary.start("serve")

        run, paths = outage_story(sites, size, rng, fault, down=outage_seconds(size))
        return _row(
            "primary web server outage",
            "SIGKILL the primary's web server",
            ctx,
            size,
            run,
            paths,
            sites,
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
                expect_failures=False,
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
                run, paths = outage_story(sites, size, rng, fault, down)
                return _row(
                    "standby unreachable",
                    "cut the secondary's connection to its streaming standby",
                    ctx,
                    size,
                    run,
                    paths,
                    sites,
                    expect_failures=False,
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

            run, paths = outage_story(sites, size, rng, fault, down=outage_seconds(size))
            run.extra["serve_tracebacks"] = tracebacks(sites.primary, "serve")
            return _row(
                "primary database unreachable",
                "cut the primary web server's connection to its database",
                ctx,
                size,
                run,
                paths,
                sites,
            )
