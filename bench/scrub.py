"""Benchmark: the scrub's throughput alone and its cost beside a backfill.

Builds a primary and a secondary in this process (the primary served on 127.0.0.1 in a thread,
the secondary's sync loops as a `Worker`), backfills `--count` small blobs, then:

1. the scrub alone, with no rate limit, over every copy, beside a bare `hashlib.sha256` loop
   over the same files (files/s and the ratio);
2. a backfill of `--count` more blobs without the scrub, then another one with the scrub
   running beside it at its default budget: both backfills' files/s (from the blobs' creation
   on the primary to the last copy verified, the primary's checksums included), their ratio,
   the scrub's items/s and its share of the process's CPU time while they ran side by side.

    .venv/bin/python bench/scrub.py                         # SQLite, 2,000 x 64 KiB
    .venv/bin/python bench/scrub.py --backend postgres --count 3000
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select

from geosync.demo.models import Upload
from geosync.demo.replicators import PackageFileReplicator, SnippetReplicator, UploadReplicator
from geosync.log import configure
from geosync.scrub import IDLE, Budget, ScrubLoop
from geosync.secondary.log_cursor import LogCursorLoop
from geosync.secondary.scheduler import SchedulerLoop, StuckSweepLoop
from geosync.states import SyncState, VerificationState
from geosync.testing import DatabaseFactory, SitePair, build_site_pair
from geosync.testing.workers import checksum_on_primary, run_worker, wait_for
from geosync.worker import LoopFactory, Worker

KiB = 1024
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REPLICATORS = [UploadReplicator, PackageFileReplicator, SnippetReplicator]
#: Short, so that every copy is due again a second after it was verified.
PERIOD = timedelta(seconds=2)
UNLIMITED = Budget(items_per_second=1e9, bytes_per_second=1e15)


@dataclass(frozen=True)
class Rate:
    """Files handled in some seconds."""

    files: int
    seconds: float

    @property
    def per_second(self) -> float:
        """Files per second."""
        return self.files / self.seconds if self.seconds else 0.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Sizes: `--count` files of `--kib` KiB per batch."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--kib", type=int, default=64)
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--postgres-url", default=POSTGRES_URL)
    return parser.parse_args(argv)


def create_blobs(sites: SitePair, count: int, size: int, tag: str) -> None:
    """`count` uploads with distinct files of `size` bytes on the primary; each file is
    written before its row commits, so a running secondary never asks for a missing file."""
    storage = sites.primary.settings.blob_storage("uploads")
    block = os.urandom(size)
    with sites.primary.session() as session:
        records = [Upload(path="", namespace_id=1, size=size) for _ in range(count)]
        session.add_all(records)
        session.flush()
        for record in records:
            record.path = f"{tag}/{record.id // 1000:03d}/{record.id}.bin"
            path = storage / record.path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(int(record.id).to_bytes(8, "big") + block[8:])
        session.commit()


def verified_count(sites: SitePair) -> int:
    """Registry rows synced and verified."""
    table = sites.secondary.tables.registry(UploadReplicator)
    c = table.c
    query = select(func.count()).where(
        c.state == SyncState.SYNCED, c.verification_state == VerificationState.SUCCEEDED
    )
    with sites.secondary.tracking_engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def backfill(sites: SitePair, count: int, size: int, tag: str) -> Rate:
    """Create `count` blobs on the primary and wait until the running secondary worker has
    synced and verified them all."""
    before = verified_count(sites)
    started = time.monotonic()
    create_blobs(sites, count, size, tag)
    checksum_on_primary(sites)
    wait_for(lambda: verified_count(sites) >= before + count, timeout=900, interval=0.05)
    return Rate(count, time.monotonic() - started)


def scrub_alone(sites: SitePair, count: int) -> Rate:
    """The scrub over `count` due copies with no rate limit (once over: a copy it verified
    is due again after half the short period)."""
    loop = ScrubLoop(sites.secondary)
    loop.budget = UNLIMITED
    started = time.monotonic()
    try:
        while loop.scrubbed < count and loop.run_once() != IDLE:
            pass
    finally:
        loop.close()
    return Rate(loop.scrubbed, time.monotonic() - started)


def bare_hashing(root: Path) -> Rate:
    """A plain loop hashing every file under `root` in 1 MiB chunks."""
    started = time.monotonic()
    files = 0
    for path in sorted(root.rglob("*.bin")):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1024 * KiB):
                digest.update(chunk)
        files += 1
    return Rate(files, time.monotonic() - started)


class ScrubThread:
    """The scrub at its default budget in a thread, counting items and its own CPU time."""

    def __init__(self, sites: SitePair) -> None:
        self.loop = ScrubLoop(sites.secondary)
        self.stop = threading.Event()
        self.cpu = 0.0
        self.thread = threading.Thread(target=self._run, name="scrub")

    def _run(self) -> None:
        cpu_start = time.thread_time()
        while not self.stop.is_set():
            pause = self.loop.run_once()
            self.stop.wait(min(pause, 1.0))
        self.cpu = time.thread_time() - cpu_start

    def __enter__(self) -> ScrubThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.loop.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the phases and print the figures."""
    args = parse_args(argv)
    configure("console", "warning")
    root = Path(tempfile.mkdtemp(prefix="geosync-bench-scrub-"))
    databases = DatabaseFactory(args.backend, root / "db", args.postgres_url)
    sites = build_site_pair(
        root / "sites",
        REPLICATORS,
        databases,
        poll_interval=0.2,
        scrub_period=PERIOD,
        log_format="console",
        log_level="warning",
    )
    size = args.kib * KiB
    try:
        loops: list[LoopFactory] = [LogCursorLoop, SchedulerLoop, StuckSweepLoop]
        with sites.primary_served(), run_worker(Worker(sites.secondary, loops)):
            backfill(sites, args.count, size, "first")
            time.sleep(PERIOD.total_seconds() / 2 + 0.1)
            alone = scrub_alone(sites, args.count)
            bare = bare_hashing(sites.secondary.settings.blob_storage("uploads"))
            plain = backfill(sites, args.count, size, "second")
            time.sleep(PERIOD.total_seconds() / 2 + 0.1)
            cpu_start = time.process_time()
            with ScrubThread(sites) as scrub:
                beside = backfill(sites, args.count, size, "third")
            cpu = time.process_time() - cpu_start
        scrubbed = Rate(scrub.loop.scrubbed, beside.seconds)
        print(f"backend {args.backend}, {args.count} x {args.kib} KiB per batch")
        print(
            f"scrub alone, unlimited:   {alone.per_second:8.0f} files/s"
            f"   bare hashlib loop {bare.per_second:8.0f} files/s"
            f"   ratio {alone.per_second / bare.per_second:.2f}x"
        )
        print(f"backfill without scrub:   {plain.per_second:8.0f} files/s")
        print(
            f"backfill beside scrub:    {beside.per_second:8.0f} files/s"
            f"   ratio {beside.per_second / plain.per_second:.2f}x"
        )
        print(
            f"scrub beside backfill:    {scrubbed.per_second:8.0f} items/s (budget"
            f" {sites.secondary.settings.scrub_items_per_second:.0f}/s),"
            f" {100 * scrub.cpu / cpu if cpu else 0:.1f}% of the process's CPU"
        )
    finally:
        sites.dispose()
        databases.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
