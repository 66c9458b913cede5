"""Benchmark: blobs from an S3 primary to an S3 secondary, beside a plain s3fs copy of them.

moto's S3 server runs as its own process on 127.0.0.1; the primary keeps its uploads in one
bucket, the secondary in another. For each workload the objects are written into the primary's
bucket first (Upload rows publishing `created`), then the primary runs as `geosync serve` and
the secondary as `geosync worker`, real processes, with `sync_object_storage` on. The clock runs
from the worker's start until the tracking database counts every row synced; "copy" is the
same run from the worker's "worker started" line on (without the interpreter's start-up). In the
same run the same objects are then copied twice with plain s3fs into fresh buckets, 10 at a
time (`files_max_capacity`, as many as geosync moves at once): each read whole and written with
one `PutObject` (`cat_file` + `pipe_file`), and streamed through s3fs's files in 8 MiB blocks
(a multipart upload above one block, as geosync writes); the ratios of the rates are printed.

    .venv/bin/python bench/object_storage.py                      # 2,000 x 64 KiB, 20 x 50 MiB
    .venv/bin/python bench/object_storage.py --small 200 --large 4 --rounds 2

Both copies go through the same moto server, whose own speed (Python, objects in memory)
bounds them: the ratio says what geosync costs over the plainest copy through one client, not
what a real object store sustains.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
from blob_backfill import Workload
from sqlalchemy import func, select

from geosync.demo.models import Upload
from geosync.demo.replicators import PackageFileReplicator, SnippetReplicator, UploadReplicator
from geosync.registry import Registry
from geosync.settings import ObjectStorage
from geosync.states import SyncState
from geosync.testing import DatabaseFactory, SitePair, build_site_pair
from geosync.testing.object_storage import ACCESS_KEY, REGION, SECRET_KEY, new_bucket
from geosync.testing.processes import site_processes
from geosync.testing.servers import free_port

KiB = 1024
MiB = 1024 * KiB
REPLICATORS = [UploadReplicator, PackageFileReplicator, SnippetReplicator]
#: Objects copied at once by the plain copy: the secondary node's default `files_max_capacity`.
CONCURRENCY = 10
POLL = 0.05
#: Block of the streamed plain copy: geosync's part size.
PART = 8 * MiB


@dataclass(frozen=True)
class Timing:
    """One timed copy of a workload."""

    label: str
    seconds: float
    workload: Workload

    @property
    def files_per_second(self) -> float:
        """Objects per second."""
        return self.workload.count / self.seconds

    @property
    def mib_per_second(self) -> float:
        """MiB per second."""
        return self.workload.count * self.workload.size / MiB / self.seconds


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Sizes default to the issue's: 2,000 x 64 KiB and 20 x 50 MiB."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--small", type=int, default=2000, help="Number of 64 KiB blobs.")
    parser.add_argument("--large", type=int, default=20, help="Number of 50 MiB blobs.")
    parser.add_argument("--rounds", type=int, default=1, help="Measure each workload N times.")
    parser.add_argument("--timeout", type=float, default=1200.0, help="Give up after S s.")
    return parser.parse_args(argv)


# -- the S3 server -------------------------------------------------------------------------------


@contextlib.contextmanager
def moto_server(logs: Path) -> Iterator[str]:
    """moto's S3 server as a child process on a free loopback port; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (logs / "moto.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("moto's server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(30)


# -- one round -----------------------------------------------------------------------------------


def create_blobs(pair: SitePair, workload: Workload) -> list[str]:
    """Upload rows (publishing `created`) and their objects in the primary's bucket; the keys."""
    with pair.primary.session() as session:
        records = [
            Upload(path="", namespace_id=1, size=workload.size) for _ in range(workload.count)
        ]
        session.add_all(records)
        session.flush()
        for record in records:
            record.path = f"{workload.name}/{record.id // 1000:03d}/{record.id}.bin"
        session.commit()
        paths = {int(r.id): str(r.path) for r in records}
    store = UploadReplicator.store_of(pair.primary.settings)
    block = random.randbytes(min(workload.size, MiB))

    def write(item: tuple[int, str]) -> None:
        record_id, path = item
        store.write(path, blob_chunks(record_id.to_bytes(8, "big"), block, workload.size))

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(write, paths.items()))
    return list(paths.values())


def blob_chunks(prefix: bytes, block: bytes, size: int) -> Iterator[bytes]:
    """Exactly `size` bytes: a distinct prefix, then `block` repeated."""
    yield prefix[:size]
    left = size - len(prefix[:size])
    while left > 0:
        yield block[:left]
        left -= len(block[:left])


def synced(pair: SitePair) -> tuple[int, int]:
    """(synced, failed) registry rows."""
    registry = Registry(pair.secondary, UploadReplicator)
    state = registry.table.c.state
    query = select(state, func.count()).where(state.in_([SyncState.SYNCED, SyncState.FAILED]))
    with pair.secondary.tracking_engine.connect() as conn:
        counts = {int(s): int(n) for s, n in conn.execute(query.group_by(state))}
    return counts.get(SyncState.SYNCED, 0), counts.get(SyncState.FAILED, 0)


def time_geosync(pair: SitePair, root: Path, workload: Workload, timeout: float) -> list[Timing]:
    """Serve the primary, start the secondary's worker, wait until every row is synced."""
    primary, secondary = site_processes(pair, root, "geosync.demo.replicators")
    try:
        primary.start("serve")
        start, wall_start = time.perf_counter(), time.time()
        secondary.start("worker")
        while True:
            done, failed = synced(pair)
            now = time.perf_counter()
            if done >= workload.count:
                break
            if now - start > timeout:
                raise RuntimeError(f"gave up: {done}/{workload.count} synced, {failed} failed")
            time.sleep(POLL)
    finally:
        secondary.stop_all()
        primary.stop_all()
    log = secondary.logs / "secondary-worker.log"
    ready = worker_event_at(log, "worker started") - wall_start
    failures = log.read_text(encoding="utf-8", errors="replace").count('"sync failed"')
    if failures:
        print(f"  ({failures} sync attempts failed and were retried; see {log})")
    return [
        Timing("geosync end to end", now - start, workload),
        Timing("geosync copy", now - start - ready, workload),
    ]


def worker_event_at(path: Path, event: str) -> float:
    """When the worker first logged `event`, as a Unix time."""
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("event") == event:
                return datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
    raise RuntimeError(f"no {event!r} line in {path}")


def time_s3fs(
    source: ObjectStorage, target: ObjectStorage, keys: list[str], w: Workload, streamed: bool
) -> Timing:
    """Plain s3fs, `CONCURRENCY` objects at a time: each read whole and written with one
    `PutObject` (`cat_file`, `pipe_file`), or (`streamed`) read and written as files in 8 MiB
    blocks, a multipart upload above one block as geosync writes."""
    import s3fs

    fs = s3fs.S3FileSystem(
        key=ACCESS_KEY,
        secret=SECRET_KEY,
        endpoint_url=source.endpoint_url,
        client_kwargs={"region_name": REGION},
        use_listings_cache=False,
    )

    def copy(key: str) -> None:
        src, dst = f"{source.bucket}/{source.prefix}{key}", f"{target.bucket}/{target.prefix}{key}"
        if not streamed:
            fs.pipe_file(dst, fs.cat_file(src))
            return
        with (
            fs.open(src, "rb", block_size=PART) as reader,
            fs.open(dst, "wb", block_size=PART) as out,
        ):
            shutil.copyfileobj(reader, out, PART)

    start = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(copy, keys))
    label = "s3fs open + copy" if streamed else "s3fs cat + pipe"
    return Timing(label, time.perf_counter() - start, w)


def one_round(endpoint: str, root: Path, workload: Workload, timeout: float) -> list[Timing]:
    """Fresh sites and buckets; geosync's copy, then s3fs's of the same objects."""
    databases = DatabaseFactory("sqlite", root / "db")
    primary_bucket, secondary_bucket = new_bucket(endpoint), new_bucket(endpoint)
    pair = build_site_pair(
        root / "sites",
        REPLICATORS,
        databases,
        primary_storages={"uploads": primary_bucket},
        secondary_storages={"uploads": secondary_bucket},
        secondary_node_settings={"sync_object_storage": True},
        log_format="json",
    )
    try:
        keys = create_blobs(pair, workload)
        timings = time_geosync(pair, root, workload, timeout)
        check_copies(pair, keys[:: max(1, len(keys) // 20)])
        for streamed in (False, True):
            target = new_bucket(endpoint)
            timings.append(time_s3fs(primary_bucket, target, keys, workload, streamed))
        return timings
    finally:
        pair.dispose()
        databases.cleanup()


def check_copies(pair: SitePair, keys: list[str]) -> None:
    """A sample of the secondary's objects has the primary's bytes."""
    source = UploadReplicator.store_of(pair.primary.settings)
    target = UploadReplicator.store_of(pair.secondary.settings)
    for key in keys:
        if source.sha256(key) != target.sha256(key):
            raise RuntimeError(f"the secondary's copy of {key} differs from the primary's")


# -- main ----------------------------------------------------------------------------------------


def print_round(workload: Workload, timings: list[Timing]) -> float:
    """A table of one round; returns geosync's copy rate over s3fs's."""
    print(f"\n{workload.describe()}")
    for t in timings:
        print(
            f"  {t.label:<20} {t.seconds:8.2f} s {t.files_per_second:9.1f} files/s"
            f" {t.mib_per_second:9.1f} MiB/s"
        )
    by_label = {t.label: t for t in timings}
    copy, e2e = by_label["geosync copy"].seconds, by_label["geosync end to end"].seconds
    for plain in ("s3fs cat + pipe", "s3fs open + copy"):
        seconds = by_label[plain].seconds
        print(
            f"  ratio geosync/{plain} (rate): copy {seconds / copy:.2f},"
            f" end to end {seconds / e2e:.2f}"
        )
    return by_label["s3fs cat + pipe"].seconds / copy


def main(argv: Sequence[str] | None = None) -> int:
    """Run every workload `--rounds` times; print each round and the median ratios."""
    args = parse_args(argv)
    chosen = [
        w
        for w in (Workload("small", args.small, 64 * KiB), Workload("large", args.large, 50 * MiB))
        if w.count > 0
    ]
    with tempfile.TemporaryDirectory(prefix="geosync-bench-s3-") as scratch:
        root = Path(scratch)
        with moto_server(root) as endpoint:
            print(f"moto S3 server at {endpoint}; {os.cpu_count()} CPUs")
            summary: dict[str, list[float]] = {}
            for workload in chosen:
                for n in range(args.rounds):
                    timings = one_round(
                        endpoint, root / f"{workload.name}-{n}", workload, args.timeout
                    )
                    summary.setdefault(workload.describe(), []).append(
                        print_round(workload, timings)
                    )
    print("\nmedian ratio geosync/s3fs cat + pipe (copy rate):")
    for described, ratios in summary.items():
        shown = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"  {described:<16} {statistics.median(ratios):.2f}  (rounds: {shown})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
