"""Benchmark: how soon a worker started after a SIGKILL transfers again, beside the lease length.

For each backend a fresh primary and secondary are built with COUNT small Upload blobs; the
primary runs as `geosync serve` and the secondary's `geosync worker` starts the backfill. Then,
KILLS times (bounded): wait until the worker is mid-backfill (syncs started, some finished since
it started), SIGKILL it, start a new worker and time, from the new process's start,

- `ready`: until it logged "worker started" (interpreter, imports, settings, databases);
- `takeover`: until the dead worker's started rows were given back (their `interrupted`
  attempts appear);
- `first transfer`: until the registry counts one more synced row than the dead worker left.

The dead worker's rows hold the site's whole `files_max_capacity`, so nothing transfers before
they are taken over. Before geosync proved a dead worker's death from its process, that took the
lease (`lease_seconds`, 30 s by default): the `lease only` rows show that path, by starting the
new worker in a pid namespace of its own (`unshare --pid`), from where the dead worker's pid
means nothing — as for a worker on another machine — so only the lapse of its lease tells.

    .venv/bin/python bench/takeover.py                           # both databases, 5 kills each
    .venv/bin/python bench/takeover.py --backend sqlite --kills 10 --lease-only-kills 0

Target (issue 21): after a SIGKILL, a restarted worker transfers again within 3 s (p50 and max
of `first transfer`, on both databases).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select

from geosync.db.tables import geo_sync_attempts
from geosync.demo.models import Upload
from geosync.demo.replicators import PackageFileReplicator, SnippetReplicator, UploadReplicator
from geosync.log import configure
from geosync.registry import Registry
from geosync.states import SyncState
from geosync.testing import DatabaseFactory, SitePair, build_site_pair
from geosync.testing.processes import SiteProcesses, site_processes

KiB = 1024
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REPLICATORS_MODULE = "geosync.demo.replicators"
REPLICATORS = [UploadReplicator, PackageFileReplicator, SnippetReplicator]
TARGET_SECONDS = 3.0
#: Seconds between two looks at the tracking database while timing.
POLL = 0.02
#: Rows synced by a worker before it is killed: it is well into the backfill by then.
SYNCED_BEFORE_KILL = 50
MAX_KILLS = 20
ROWS_PER_COMMIT = 1000


@dataclass(frozen=True)
class Restart:
    """One kill and restart, in seconds from the new worker's process start."""

    held: int
    ready: float
    takeover: float
    first_transfer: float


@dataclass
class Report:
    """Every restart of one backend, by path (`proof` or `lease only`)."""

    backend: str
    lease: float
    restarts: dict[str, list[Restart]] = field(default_factory=dict)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The sizes: enough small blobs that the backfill outlasts every kill."""
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--count", type=int, default=5_000, help="Number of blobs.")
    parser.add_argument("--kib", type=int, default=16, help="Size of a blob, KiB.")
    parser.add_argument("--kills", type=int, default=5, help=f"Kills timed (at most {MAX_KILLS}).")
    parser.add_argument(
        "--lease-only-kills",
        type=int,
        default=1,
        help="Further kills whose new worker cannot see the dead one's process (each waits"
        " out a lease; 0 to skip).",
    )
    parser.add_argument("--lease", type=float, default=30.0, help="lease_seconds of the site.")
    parser.add_argument("--postgres-url", default=POSTGRES_URL, help="PostgreSQL server URL.")
    parser.add_argument("--timeout", type=float, default=120.0, help="Give up a wait after S s.")
    parser.add_argument("--keep", action="store_true", help="Keep the scratch directory.")
    args = parser.parse_args(argv)
    if not 1 <= args.kills <= MAX_KILLS or not 0 <= args.lease_only_kills <= MAX_KILLS:
        parser.error(f"--kills must be 1..{MAX_KILLS} and --lease-only-kills 0..{MAX_KILLS}")
    if args.lease_only_kills and shutil.which("unshare") is None:
        parser.error("--lease-only-kills needs `unshare` (util-linux); pass 0 to skip")
    return args


@contextlib.contextmanager
def site_pair(backend: str, root: Path, args: argparse.Namespace) -> Iterator[SitePair]:
    """A fresh primary and secondary with their own databases, dropped afterwards."""
    databases = DatabaseFactory(backend, root / "db", args.postgres_url)
    pair = build_site_pair(
        root / "sites",
        REPLICATORS,
        databases,
        log_format="json",
        lease_seconds=args.lease,
        poll_interval=2.0,
    )
    try:
        yield pair
    finally:
        pair.dispose()
        databases.cleanup()


def create_blobs(pair: SitePair, count: int, size: int) -> None:
    """Upload rows (which publish `created`) and their files."""
    storage = pair.primary.settings.blob_storage("uploads")
    made = 0
    while made < count:
        batch = min(ROWS_PER_COMMIT, count - made)
        with pair.primary.session() as session:
            records = [Upload(path="", namespace_id=1, size=size) for _ in range(batch)]
            session.add_all(records)
            session.flush()
            for record in records:
                record.path = f"takeover/{record.id // 1000:03d}/{record.id}.bin"
            session.commit()
            paths = [str(r.path) for r in records]
        for path in paths:
            target = storage / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(random.randbytes(size))
        made += batch


class Secondary:
    """The secondary's `geosync worker` processes, one at a time, and what they did."""

    def __init__(self, pair: SitePair, site: SiteProcesses, count: int, timeout: float) -> None:
        self.pair = pair
        self.count = count
        self.site = site
        self.timeout = timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.log: Path | None = None
        self.starts = 0

    def start(self, own_namespace: bool = False) -> float:
        """Start a worker (in a pid namespace of its own if asked); its start time."""
        self.starts += 1
        self.log = self.site.logs / f"worker-{self.starts}.log"
        command = [sys.executable, "-m", "geosync", "--config", str(self.site.config), "worker"]
        if own_namespace:  # the worker dies with unshare: a SIGKILL of it kills the worker
            command = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGKILL"]
            command += [sys.executable, "-m", "geosync", "--config", str(self.site.config)]
            command += ["worker"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GEOSYNC_")}
        started = time.time()
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        return started

    def kill(self) -> None:
        """SIGKILL the worker and reap it."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process = None

    def stop(self) -> None:
        """Stop the worker, if one runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def counts(self) -> tuple[int, int, int]:
        """Synced rows, started rows and `interrupted` sync attempts, in one connection."""
        registry = Registry(self.pair.secondary, UploadReplicator)
        state = registry.table.c.state
        t = geo_sync_attempts
        with self.pair.secondary.tracking_engine.connect() as conn:
            rows = conn.execute(select(state, func.count()).group_by(state)).all()
            states: dict[int, int] = {int(s): int(n) for s, n in rows}
            interrupted = conn.execute(
                select(func.count()).where(t.c.outcome == "interrupted")
            ).scalar_one()
        synced = int(states.get(SyncState.SYNCED, 0))
        return synced, int(states.get(SyncState.STARTED, 0)), int(interrupted)

    def wait_mid_backfill(self, synced_at_start: int) -> None:
        """Until the worker has synced a few rows and holds started ones."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            synced, started, _ = self.counts()
            if synced >= synced_at_start + SYNCED_BEFORE_KILL and started:
                return
            if synced >= self.count:
                raise RuntimeError("the backfill ended before the last kill: raise --count")
            self._alive()
            time.sleep(POLL)
        raise RuntimeError("the worker did not get into the backfill in time")

    def time_restart(self, own_namespace: bool) -> Restart:
        """Kill the worker mid-backfill, start another, time it (see the module docstring).

        A worker killed between two claims holds no row; it is killed again a moment later,
        so that every timed restart finds the capacity taken by a dead worker's rows.
        """
        synced, held = self.counts()[0], 0
        while not held:
            self.wait_mid_backfill(synced)
            self.kill()
            synced, held, interrupted = self.counts()
            if not held:
                self.start()
        started = self.start(own_namespace)
        deadline = time.monotonic() + self.timeout + self.pair.secondary.settings.lease_seconds
        takeover = first = None
        while takeover is None or first is None:
            now = time.time() - started
            now_synced, _, now_interrupted = self.counts()
            if takeover is None and now_interrupted > interrupted:
                takeover = now
            if first is None and now_synced > synced:
                first = now
            if time.monotonic() > deadline:
                raise RuntimeError("the new worker did not transfer in time")
            self._alive()
            time.sleep(POLL)
        return Restart(held, self.ready(started), takeover, first)

    def ready(self, started: float) -> float:
        """Seconds from `started` until the worker logged "worker started"."""
        assert self.log is not None
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for line in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
                with contextlib.suppress(ValueError, KeyError, AttributeError):
                    entry = json.loads(line)
                    if entry.get("event") == "worker started":
                        moment = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00"))
                        return moment.timestamp() - started
            time.sleep(POLL)
        raise RuntimeError(f"no 'worker started' line in {self.log}")

    def _alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"the worker exited; see {self.log}")


def measure(backend: str, scratch: Path, args: argparse.Namespace) -> Report:
    """Build the sites, start the backfill, time every kill and restart of one backend."""
    root = scratch / backend
    report = Report(backend, args.lease)
    with site_pair(backend, root, args) as pair:
        create_blobs(pair, args.count, args.kib * KiB)
        primary, secondary_site = site_processes(pair, root, REPLICATORS_MODULE)
        secondary = Secondary(pair, secondary_site, args.count, args.timeout)
        try:
            primary.start("serve")
            secondary.start()
            plan = [False] * args.kills + [True] * args.lease_only_kills
            for n, own_namespace in enumerate(plan, 1):
                restart = secondary.time_restart(own_namespace)
                path = "lease only" if own_namespace else "proof"
                report.restarts.setdefault(path, []).append(restart)
                print(
                    f"  {backend} kill {n}/{len(plan)} ({path}): {restart.held} rows held,"
                    f" ready {restart.ready:.2f} s, takeover {restart.takeover:.2f} s,"
                    f" first transfer {restart.first_transfer:.2f} s",
                    flush=True,
                )
        finally:
            secondary.stop()
            primary.stop_all()
    return report


def show(reports: list[Report]) -> bool:
    """The table of p50/max per backend and path; whether the target is met."""
    print()
    print(
        f"{'backend':<9} {'path':<11} {'kills':>5} {'lease':>7} {'ready p50':>10}"
        f" {'takeover p50/max':>17} {'first transfer p50/max':>23}"
    )
    met = True
    for report in reports:
        for path, restarts in report.restarts.items():
            ready = statistics.median(r.ready for r in restarts)
            take = [r.takeover for r in restarts]
            first = [r.first_transfer for r in restarts]
            print(
                f"{report.backend:<9} {path:<11} {len(restarts):>5} {report.lease:>6.0f}s"
                f" {ready:>9.2f}s {statistics.median(take):>8.2f} / {max(take):>5.2f}s"
                f" {statistics.median(first):>13.2f} / {max(first):>5.2f}s"
            )
            if path == "proof":
                met = met and max(first) <= TARGET_SECONDS
    verdict = "met" if met else "MISSED"
    print(f"\ntarget: first transfer within {TARGET_SECONDS:g} s of a restart (max): {verdict}")
    return met


def main(argv: Sequence[str] | None = None) -> int:
    """Run every chosen backend; print the figures; 1 if the target is missed."""
    args = parse_args(argv)
    configure("console", "error")
    scratch = Path(tempfile.mkdtemp(prefix="geosync-takeover-"))
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    print(
        f"takeover benchmark: {os.cpu_count()} CPUs, {args.count} x {args.kib} KiB blobs,"
        f" lease {args.lease:g} s, scratch {scratch}"
    )
    try:
        reports = [measure(backend, scratch, args) for backend in backends]
    finally:
        if args.keep:
            print(f"scratch directory kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0 if show(reports) else 1


if __name__ == "__main__":
    sys.exit(main())
