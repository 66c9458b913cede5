"""Benchmark: event → synced lag at a fixed event rate, on the demo and the production topology.

Each topology is the one `geosync demo` runs (`geosync.demo.topology`): the embedded one
(SQLite, one web process and one worker per site) and the production one (a PostgreSQL primary,
its streaming standby as the secondary's main database, a tracking cluster, two web processes
per site, three secondary workers; `--postgres`). This process plays the application: at RATE
events a second, for SECONDS, a mix of creates (new small uploads and package files), updates
(a package file rewritten) and deletes (an upload removed), each through the ORM as the demo
does. Then it waits until the secondary has caught up and reads, per event:

- *replayed*: when the secondary's main database (the standby; in the demo the same SQLite
  file) first had the event (sampled every 20 ms);
- *applied*: when the secondary's log cursor had passed the event (sampled every 20 ms from the
  tracking database): the wake-up latency of the log cursor — on a standby, which cannot
  deliver NOTIFY, the newest-event-id poll (`NEWEST_EVENT_POLL`);
- *synced*: for a create or an update, when the first successful sync of the record after the
  event finished (the attempt history's `finished_at`); for a delete, when it was applied (the
  copy and the row go in the same step).

Lag is measured from the event's `created_at` on the primary. Printed: p50, p99 and max of
both, per topology, against the goal p99 < 1 s.

    .venv/bin/python bench/lag.py                           # 50 events/s for 60 s, both
    .venv/bin/python bench/lag.py --rate 20 --seconds 20 --topology production
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from geosync.app import Geo
from geosync.db.tables import geo_event_log_state, geo_events
from geosync.demo.models import PackageFile, Upload
from geosync.demo.replicators import PackageFileReplicator, UploadReplicator
from geosync.demo.seed import write_atomically
from geosync.demo.topology import Topology, postgres_missing, topology
from geosync.log import configure

GOAL_P99 = 1.0
#: Bytes of each blob the benchmark writes (small files: the lag, not the bandwidth, is measured).
SIZES = (1024, 16 * 1024)
#: Seconds the secondary may take to catch up after the load.
DRAIN_TIMEOUT = 120.0
SAMPLE_EVERY = 0.02
#: The events the load causes (the primary's `checksum_succeeded` ones are not measured).
CHANGES = ("created", "updated", "deleted")


class Load:
    """Creates, updates and deletes blobs on the primary at a fixed rate."""

    def __init__(self, geo: Geo, rng: random.Random) -> None:
        self.geo = geo
        self.rng = rng
        self.uploads: list[int] = []
        self.packages: list[int] = []

    def one(self) -> None:
        """One operation: 50% create, 25% update, 25% delete (creates when nothing exists)."""
        pick = self.rng.random()
        if pick < 0.25 and self.packages:
            self.update()
        elif pick < 0.5 and self.uploads:
            self.delete()
        else:
            self.create()

    def _data(self) -> bytes:
        return self.rng.randbytes(self.rng.randint(*SIZES))

    def create(self) -> None:
        """A new upload or package file."""
        data = self._data()
        with self.geo.session() as session:
            if self.rng.random() < 0.5:
                name = f"1/{self.rng.getrandbits(64):016x}.bin"
                write_atomically(self.geo.settings.blob_storage("uploads") / name, data)
                upload = Upload(path=name, namespace_id=1, size=len(data))
                session.add(upload)
                session.commit()
                self.uploads.append(upload.id)
                return
            package = PackageFile(file_name="p.tgz", namespace_id=1, size=len(data))
            session.add(package)
            session.flush()
            write_atomically(PackageFileReplicator(package).file_path(), data)
            session.commit()
            self.packages.append(package.id)

    def update(self) -> None:
        """A package file rewritten (publishes `updated`)."""
        with self.geo.session() as session:
            package = session.get(PackageFile, self.rng.choice(self.packages))
            assert package is not None
            data = self._data()
            write_atomically(PackageFileReplicator(package).file_path(), data)
            package.size = len(data)
            package.replicator.handle_after_update()
            session.commit()

    def delete(self) -> None:
        """An upload removed: its row (publishes `deleted`), then its file."""
        upload_id = self.uploads.pop(self.rng.randrange(len(self.uploads)))
        with self.geo.session() as session:
            upload = session.get(Upload, upload_id)
            assert upload is not None
            path = UploadReplicator(upload).file_path()
            session.delete(upload)
            session.commit()
        path.unlink(missing_ok=True)

    def run(self, rate: float, seconds: float) -> int:
        """Operations at `rate` per second for `seconds`, on schedule; returns how many."""
        start = time.monotonic()
        done = 0
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(elapsed * rate) + 1
            while done < due:
                self.one()
                done += 1
            time.sleep(max(0.0, (done / rate) - (time.monotonic() - start)))
        return done


class Watch(threading.Thread):
    """Every `SAMPLE_EVERY` seconds: copies the primary's new events (the primary prunes what
    the secondary has read) and samples the secondary's stored cursor position."""

    def __init__(self, primary: Geo, secondary: Geo, after: int) -> None:
        super().__init__(name="lag-watch", daemon=True)
        self.primary = primary
        self.secondary = secondary
        self.after = after
        self.events: list[Any] = []
        self.samples: list[tuple[datetime, int]] = []
        #: The newest event id the secondary's main database has (a standby: what it replayed).
        self.replayed: list[tuple[datetime, int]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        """Sample until stopped."""
        position = select(geo_event_log_state.c.event_id)
        newest = select(func.max(geo_events.c.id))
        while not self.stopping.wait(SAMPLE_EVERY):
            try:
                with self.primary.main_engine.connect() as conn:
                    new = list(
                        conn.execute(
                            select(geo_events)
                            .where(geo_events.c.id > self.after)
                            .order_by(geo_events.c.id)
                        )
                    )
                if new:
                    self.after = new[-1].id
                    self.events.extend(e for e in new if e.event_name in CHANGES)
                with self.secondary.main_engine.connect() as conn:
                    seen = conn.execute(newest).scalar()
                self.replayed.append((datetime.now(UTC), int(seen or 0)))
                with self.secondary.tracking_engine.connect() as conn:
                    at = conn.execute(position).scalar()
            except Exception:  # a busy SQLite file: the next sample
                continue
            if at is not None:
                self.samples.append((datetime.now(UTC), int(at)))

    def applied_at(self, event_id: int) -> datetime | None:
        """The first cursor sample at or past `event_id`."""
        return first_at(self.samples, event_id)

    def replayed_at(self, event_id: int) -> datetime | None:
        """The first sample of the secondary's main database that had `event_id`."""
        return first_at(self.replayed, event_id)


def first_at(samples: list[tuple[datetime, int]], event_id: int) -> datetime | None:
    """When the first of `samples` (time, newest id) reached `event_id`."""
    for at, position in samples:
        if position >= event_id:
            return at
    return None


@dataclass(frozen=True)
class Lags:
    """Lags of one run, in seconds."""

    topology: str
    events: int
    replayed: list[float]
    applied: list[float]
    synced: list[float]
    unsynced: int


def percentile(values: Sequence[float], fraction: float) -> float:
    """The `fraction` quantile of `values` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def sync_finishes(built: Topology) -> dict[tuple[str, int], list[datetime]]:
    """When each record's syncs finished, from the secondary workers' JSON logs (the attempt
    history of a deleted record goes with it; the logs stay)."""
    finished: dict[tuple[str, int], list[datetime]] = {}
    for path in built.logs.glob(f"{built.secondary.name}-worker*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if '"sync finished"' not in line:
                continue
            record = json.loads(line)
            at = datetime.fromisoformat(record["timestamp"])
            finished.setdefault((record["replicable"], int(record["id"])), []).append(at)
    return finished


def measure(name: str, built: Topology, watch: Watch) -> Lags:
    """Per event the watch saw: when it was applied and when it was synced."""
    events = watch.events
    finished = sync_finishes(built)
    replayed: list[float] = []
    applied: list[float] = []
    synced: list[float] = []
    unsynced = 0
    for event in events:
        created = event.created_at
        there = watch.replayed_at(event.id)
        if there is not None:
            replayed.append((there - created).total_seconds())
        seen = watch.applied_at(event.id)
        if seen is not None:
            applied.append((seen - created).total_seconds())
        if event.event_name == "deleted":
            if seen is not None:
                synced.append((seen - created).total_seconds())
            continue
        key = (event.replicable_name, int(event.payload["model_record_id"]))
        after = [at for at in finished.get(key, []) if at >= created]
        if after:
            synced.append((min(after) - created).total_seconds())
        else:
            unsynced += 1  # deleted before it was synced
    return Lags(name, len(events), replayed, applied, synced, unsynced)


def caught_up(built: Topology, last_event: int) -> bool:
    """Whether the secondary's cursor passed `last_event` and nothing is left to sync."""
    from geosync.registry import Registry
    from geosync.states import SyncState

    secondary = built.geo(built.secondary)
    with secondary.tracking_engine.connect() as conn:
        position = conn.execute(select(geo_event_log_state.c.event_id)).scalar() or 0
        if position < last_event:
            return False
        for replicator in secondary.catalog:
            registry = Registry(secondary, replicator)
            busy = conn.execute(
                select(func.count())
                .select_from(registry.table)
                .where(registry.table.c.state != SyncState.SYNCED)
            ).scalar()
            if busy:
                return False
    return True


def run(name: str, postgres: bool, rate: float, seconds: float, seed: int) -> Lags:
    """One topology: start it, load it, wait for it, measure."""
    root = Path(tempfile.mkdtemp(prefix=f"geosync-lag-{name}-"))
    try:
        with topology(root, postgres=postgres, log_format="json") as built:
            built.start()
            primary = built.geo(built.primary)
            load = Load(primary, random.Random(seed))
            for _ in range(20):  # something to update and delete from the start
                load.create()
            with primary.main_engine.connect() as conn:
                first = int(conn.execute(select(func.max(geo_events.c.id))).scalar() or 0)
            deadline = time.monotonic() + DRAIN_TIMEOUT
            while not caught_up(built, first) and time.monotonic() < deadline:
                time.sleep(0.2)
            watch = Watch(primary, built.geo(built.secondary), first)
            watch.start()
            operations = load.run(rate, seconds)
            with primary.main_engine.connect() as conn:
                last = int(conn.execute(select(func.max(geo_events.c.id))).scalar() or 0)
            deadline = time.monotonic() + DRAIN_TIMEOUT
            while not caught_up(built, last) and time.monotonic() < deadline:
                time.sleep(0.2)
            watch.stopping.set()
            watch.join()
            print(
                f"{name}: {operations} operations in {seconds:g} s ({operations / seconds:.1f}/s)"
            )
            return measure(name, built, watch)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def report(lags: Lags) -> None:
    """Print one topology's figures."""
    print(f"\n{lags.topology}: {lags.events} events")
    stages = (
        ("event → replayed", lags.replayed),
        ("event → applied", lags.applied),
        ("event → synced", lags.synced),
    )
    for stage, values in stages:
        if not values:
            print(f"  {stage:16} no samples")
            continue
        p50, p99, top = percentile(values, 0.5), percentile(values, 0.99), max(values)
        print(
            f"  {stage:16} p50 {p50 * 1000:7.0f} ms   p99 {p99 * 1000:7.0f} ms"
            f"   max {top * 1000:7.0f} ms   ({len(values)} events,"
            f" mean {statistics.fmean(values) * 1000:.0f} ms)"
        )
    synced = lags.synced
    if synced:
        p99 = percentile(synced, 0.99)
        verdict = "meets" if p99 < GOAL_P99 else "misses"
        print(f"  goal p99 < {GOAL_P99:g} s: {verdict} it (p99 / goal = {p99 / GOAL_P99:.2f})")
    print(f"  records deleted before their sync: {lags.unsynced}")


def main() -> None:
    """Parse arguments and run the chosen topologies."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the load lasts")
    parser.add_argument("--topology", choices=["demo", "production", "both"], default="both")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    configure("console", "warning")
    chosen = ["demo", "production"] if args.topology == "both" else [args.topology]
    if "production" in chosen and (missing := postgres_missing()) is not None:
        print(f"production topology skipped: {missing}")
        chosen.remove("production")
    print(f"load: {args.rate:g} events/s for {args.seconds:g} s (50% create, 25% update,"
          " 25% delete; 1-16 KiB blobs)")  # fmt: skip
    results = [run(name, name == "production", args.rate, args.seconds, args.seed)
               for name in chosen]  # fmt: skip
    for lags in results:
        report(lags)


if __name__ == "__main__":
    main()
