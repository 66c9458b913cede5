"""Benchmark: backfill throughput of many small blobs with 1, 2 and 3 worker processes on
PostgreSQL, beside `rsync -a --fsync` of the same files in the same run.

For each worker count a fresh primary and secondary are built, both with PostgreSQL main and
tracking databases (fresh databases on the server `--postgres-url` names). The Upload rows and
their files (sizes spread evenly between `--min-kib` and `--max-kib`) are created on the
primary first, publishing `created` events; then the primary runs as `geosync serve` and the
secondary as N `geosync worker` processes sharing its tracking database, all real processes on
127.0.0.1. The clock runs from the first worker's start until the tracking database counts every
row synced. Right after, the same source directory is copied with `rsync -a --fsync` (durable per
file, as geosync is; where rsync lacks `--fsync`, `rsync -a` followed by `sync`) into a fresh
directory. Printed per run: files/s of both and geosync's ratio to rsync (goal, issue 22: >= 1x),
the syncs the worker logs count (a file synced twice shows as more syncs than files).

    .venv/bin/python bench/scale.py                      # 10,000 files, 1, 2 and 3 workers
    .venv/bin/python bench/scale.py --files 2000 --workers 1,3 --rounds 2

Each run is bounded by `--timeout` seconds.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from blob_backfill import (
    POSTGRES_URL,
    REPLICATORS_MODULE,
    check_copies,
    log_events,
    rsync_has_fsync,
    site_pair,
    sites_alive,
    wait_synced,
    write_blob,
)

from geosync.demo.models import Upload
from geosync.log import configure
from geosync.testing import SitePair
from geosync.testing.processes import site_processes

KiB = 1024
ROWS_PER_COMMIT = 1000
GOAL_RATIO = 1.0
SOURCE = "scale"


@dataclass(frozen=True)
class Run:
    """One measured backfill and the rsync copy beside it."""

    workers: int
    files: int
    seconds: float
    rsync_label: str
    rsync_seconds: float
    syncs_logged: int
    problems: list[str]

    @property
    def files_per_second(self) -> float:
        """geosync's throughput."""
        return self.files / self.seconds

    @property
    def rsync_files_per_second(self) -> float:
        """rsync's throughput on the same files."""
        return self.files / self.rsync_seconds

    @property
    def ratio(self) -> float:
        """geosync's files/s over rsync's."""
        return self.files_per_second / self.rsync_files_per_second


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Defaults: issue 22's 10,000 small blobs, 1, 2 and 3 workers, one round."""
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--files", type=int, default=10_000, help="Number of blobs.")
    parser.add_argument("--min-kib", type=int, default=4, help="Smallest blob, KiB.")
    parser.add_argument("--max-kib", type=int, default=16, help="Largest blob, KiB.")
    parser.add_argument("--workers", default="1,2,3", help="Worker process counts to run.")
    parser.add_argument("--rounds", type=int, default=1, help="Runs per worker count.")
    parser.add_argument(
        "--files-capacity",
        type=int,
        default=None,
        help="Set the secondary node's files_max_capacity (default: the node default, 10).",
    )
    parser.add_argument("--postgres-url", default=POSTGRES_URL, help="PostgreSQL server URL.")
    parser.add_argument("--timeout", type=float, default=600.0, help="Give up a run after S s.")
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="Log level of the geosync processes (info writes one line per sync, as deployed).",
    )
    args = parser.parse_args(argv)
    try:
        args.worker_counts = [int(n) for n in args.workers.split(",") if n.strip()]
    except ValueError:
        parser.error(f"--workers must be comma-separated counts, got {args.workers!r}")
    if not args.worker_counts or min(args.worker_counts) < 1:
        parser.error("--workers needs counts of at least 1")
    if args.files < 1 or not 1 <= args.min_kib <= args.max_kib:
        parser.error("--files must be >= 1 and 1 <= --min-kib <= --max-kib")
    return args


def create_blobs(pair: SitePair, count: int, sizes: tuple[int, int]) -> Path:
    """`count` Upload rows (which publish `created`) and their files, sizes spread evenly in
    `sizes` (bytes); returns the source directory."""
    storage = pair.primary.settings.blob_storage("uploads")
    rng = random.Random(22)
    block = rng.randbytes(sizes[1])
    made = 0
    while made < count:
        batch = [rng.randint(*sizes) for _ in range(min(ROWS_PER_COMMIT, count - made))]
        with pair.primary.session() as session:
            records = [Upload(path="", namespace_id=1, size=size) for size in batch]
            session.add_all(records)
            session.flush()
            for record in records:
                record.path = f"{SOURCE}/{record.id // 1000:03d}/{record.id}.bin"
            session.commit()
            written = [(int(r.id), str(r.path), int(r.size)) for r in records]
        for record_id, path, size in written:
            write_blob(storage / path, record_id.to_bytes(8, "big"), block, size)
        made += len(batch)
    return storage / SOURCE


def time_rsync(source: Path, target: Path) -> tuple[str, float]:
    """Seconds `rsync -a --fsync` takes (else `rsync -a` then `sync`), after a `sync`."""
    os.sync()
    start = time.perf_counter()
    if rsync_has_fsync():
        label = "rsync -a --fsync"
        subprocess.run(["rsync", "-a", "--fsync", f"{source}/", f"{target}/"], check=True)
    else:
        label = "rsync -a; sync"
        subprocess.run(["rsync", "-a", f"{source}/", f"{target}/"], check=True)
        os.sync()
    return label, time.perf_counter() - start


def backfill(pair: SitePair, root: Path, workers: int, files: int, timeout: float) -> float:
    """Serve the primary, start `workers` secondary workers, time until every row is synced."""
    primary, secondary = site_processes(pair, root, REPLICATORS_MODULE)
    try:
        primary.start("serve")
        os.sync()
        start = time.perf_counter()
        for n in range(workers):
            secondary.start("worker" if n == 0 else f"worker{n + 1}")
        progress = wait_synced(pair, files, timeout, lambda: sites_alive(primary, secondary))
    finally:
        secondary.stop_all()
        primary.stop_all()
    return progress.done - start


def syncs_logged(logs: Path) -> int:
    """ "sync finished" lines across the secondary's worker logs."""
    counts: Counter[str] = Counter()
    for path in logs.glob("secondary-worker*.log"):
        counts.update(log_events(path))
    return sum(n for event, n in counts.items() if event.startswith("sync finished"))


def measure(workers: int, scratch: Path, args: argparse.Namespace, label: str) -> Run:
    """One fresh site pair: the backfill with `workers` workers, then rsync of the same files."""
    root = scratch / label
    print(f"\n== {workers} worker(s), {label} (load {os.getloadavg()[0]:.1f})", flush=True)
    with site_pair("postgres", root, args) as pair:
        source = create_blobs(pair, args.files, (args.min_kib * KiB, args.max_kib * KiB))
        print(f"  created {args.files} rows and files; backfilling...", flush=True)
        seconds = backfill(pair, root, workers, args.files, args.timeout)
        copy = pair.secondary.settings.blob_storage("uploads") / SOURCE
        problems = check_copies(source, copy)
        shutil.rmtree(copy)
        rsync_label, rsync_seconds = time_rsync(source, root / "rsync-copy")
        logged = syncs_logged(root / "logs")
    shutil.rmtree(root, ignore_errors=True)
    run = Run(workers, args.files, seconds, rsync_label, rsync_seconds, logged, problems)
    print(
        f"  geosync {run.seconds:6.2f} s {run.files_per_second:7.0f} files/s;"
        f" {rsync_label} {run.rsync_seconds:6.2f} s {run.rsync_files_per_second:7.0f} files/s;"
        f" ratio {run.ratio:.2f}x; syncs logged {logged}"
        + "".join(f"\n  PROBLEM: {p}" for p in problems),
        flush=True,
    )
    return run


def summary(runs: list[Run]) -> None:
    """Per worker count: the range of files/s and ratios over the rounds."""
    print("\nsummary (ratio = geosync files/s / rsync files/s in the same run; goal >= 1x)")
    print(f"{'workers':>7} {'runs':>4} {'geosync files/s':>17} {'rsync files/s':>15} {'ratio':>13}")
    for workers in sorted({r.workers for r in runs}):
        mine = [r for r in runs if r.workers == workers]
        rates = [r.files_per_second for r in mine]
        rsyncs = [r.rsync_files_per_second for r in mine]
        ratios = [r.ratio for r in mine]
        print(
            f"{workers:>7} {len(mine):>4} {_span(rates, '.0f'):>17} {_span(rsyncs, '.0f'):>15}"
            f" {_span(ratios, '.2f'):>13}"
        )


def _span(values: list[float], spec: str) -> str:
    if len(values) == 1:
        return format(values[0], spec)
    return f"{format(min(values), spec)}-{format(max(values), spec)}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run every worker count `--rounds` times, interleaved, and print the figures."""
    args = parse_args(argv)
    if shutil.which("rsync") is None:
        print("rsync is not installed: `apt-get install rsync` to compare with it")
        return 2
    configure(level="warning", fmt="console")
    print(
        f"{args.files} blobs of {args.min_kib}-{args.max_kib} KiB, workers"
        f" {args.worker_counts}, {args.rounds} round(s), PostgreSQL; rsync --fsync"
        f" {'supported' if rsync_has_fsync() else 'not supported: rsync -a then sync'}"
    )
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="geosync-scale-") as scratch:
        for round_number in range(1, args.rounds + 1):
            for workers in args.worker_counts:
                label = f"w{workers}-r{round_number}"
                runs.append(measure(workers, Path(scratch), args, label))
    summary(runs)
    bad = [r for r in runs if r.problems]
    if bad:
        print(f"{len(bad)} run(s) left a copy that differs from the primary's files")
    ratios = [
        statistics.median(r.ratio for r in runs if r.workers == w) for w in args.worker_counts
    ]
    met = max(ratios) >= GOAL_RATIO
    print(f"goal (some worker count >= {GOAL_RATIO:g}x rsync): {'met' if met else 'missed'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
