"""Benchmark: checksum throughput on the primary and on a secondary, beside a bare hashlib loop.

Creates a primary and a secondary (one main database, the secondary's own tracking database),
writes small blobs into the primary's upload storage and copies them to the secondary's, then
times each side's verification loop over every blob — claims, record loads, hashing, stored
results, attempt rows and events included — against a plain one-process loop hashing the same
files in 1 MiB chunks in the same run:

- primary: `PrimaryVerificationLoop` checksums pending records (publishing
  `checksum_succeeded`, as there is a secondary node);
- secondary: `SecondaryVerificationLoop` verifies synced registry rows against the primary's
  checksums.

    .venv/bin/python bench/verification.py                              # SQLite, both sides
    .venv/bin/python bench/verification.py --backend both --repeat 3
    .venv/bin/python bench/verification.py --backend postgres --side secondary --count 5000

Target (issue 21): >= 5,000 files/s of 64 KiB on each side and database. `--large-count`
adds large files (issue 4: >= 0.8x the bare loop with one thread, > 1x with every core).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import insert, select, update

from geosync.demo.models import Upload
from geosync.demo.replicators import PackageFileReplicator, SnippetReplicator, UploadReplicator
from geosync.log import configure
from geosync.primary.verification import PrimaryVerificationLoop
from geosync.secondary.verification import SecondaryVerificationLoop
from geosync.states import SyncState, VerificationState
from geosync.testing import DatabaseFactory, SitePair, build_site_pair
from geosync.verification import primary_verifiable, registry_verifiable

MiB = 1024 * 1024
KiB = 1024
CHUNK = MiB
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SMALL_TARGET = 5000


@dataclass(frozen=True)
class Result:
    """One timed run over a set of files."""

    label: str
    seconds: float
    files: int
    total_bytes: int

    @property
    def bytes_per_second(self) -> float:
        """Throughput in bytes per second."""
        return self.total_bytes / self.seconds

    @property
    def files_per_second(self) -> float:
        """Throughput in files per second."""
        return self.files / self.seconds


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Sizes default to 3,000 x 64 KiB and no large files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", "--small-count", type=int, default=3000, dest="count")
    parser.add_argument("--kib", "--small-kib", type=int, default=64, dest="kib")
    parser.add_argument("--large-count", type=int, default=0)
    parser.add_argument("--large-mib", type=int, default=50)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=1, help="Timed runs per side (best shown).")
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="sqlite")
    parser.add_argument("--side", choices=("primary", "secondary", "both"), default="both")
    parser.add_argument("--postgres-url", default=POSTGRES_URL)
    parser.add_argument("--keep", action="store_true", help="Keep the scratch directory.")
    return parser.parse_args(argv)


# -- files ----------------------------------------------------------------------------------------


def create_blobs(sites: SitePair, count: int, size: int, tag: str) -> tuple[list[int], list[Path]]:
    """`count` upload records with files of `size` bytes (distinct contents), made via the ORM,
    on the primary and copied to the secondary's storage."""
    storage = sites.primary.settings.blob_storage("uploads")
    copies = sites.secondary.settings.blob_storage("uploads")
    block = os.urandom(min(size, MiB)) if size else b""
    with sites.primary.session() as session:
        records = [Upload(path="", namespace_id=1, size=size) for _ in range(count)]
        session.add_all(records)
        session.flush()
        for record in records:
            record.path = f"{tag}/{record.id // 1000:03d}/{record.id}.bin"
        session.commit()
        ids = [int(r.id) for r in records]
        relative = [str(r.path) for r in records]
    for index, path in enumerate(relative):
        for root in (storage, copies):
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            write_blob(root / path, index.to_bytes(8, "big"), block, size)
    return ids, [storage / path for path in relative]


def write_blob(path: Path, prefix: bytes, block: bytes, size: int) -> None:
    """A file of exactly `size` bytes: a distinct prefix, then `block` repeated."""
    with path.open("wb") as handle:
        remaining = size
        for piece in (prefix, *([block] * (size // max(len(block), 1) + 1))):
            if remaining <= 0:
                break
            handle.write(piece[:remaining])
            remaining -= len(piece[:remaining])


def bare_loop(paths: Sequence[Path]) -> float:
    """Seconds for one process to SHA-256 every file in 1 MiB chunks, nothing else."""
    start = time.perf_counter()
    for path in paths:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        digest.hexdigest()
    return time.perf_counter() - start


# -- the two sides --------------------------------------------------------------------------------


def requeue_primary(sites: SitePair, ids: Sequence[int]) -> None:
    """Make `ids` pending again on the primary, their checksums forgotten."""
    target = primary_verifiable(sites.primary, UploadReplicator)
    with sites.primary.main() as conn:
        for start in range(0, len(ids), 500):
            conn.execute(
                update(target.table)
                .where(target.key.in_(list(ids[start : start + 500])))
                .values(
                    verification_state=VerificationState.PENDING,
                    verification_checksum=None,
                    verified_at=None,
                )
            )


def primary_run(sites: SitePair, ids: Sequence[int], threads: int) -> float:
    """Seconds for `PrimaryVerificationLoop` to checksum `ids`, bookkeeping included."""
    requeue_primary(sites, ids)
    loop = PrimaryVerificationLoop(sites.primary, threads=threads)
    try:
        start = time.perf_counter()
        while loop.run_once() == 0:
            pass
        seconds = time.perf_counter() - start
    finally:
        loop.close()
    with sites.primary.main_engine.connect() as conn:
        counts = primary_verifiable(sites.primary, UploadReplicator).count_by_state(conn)
    check_succeeded("primary", counts, len(ids))
    return seconds


def ensure_synced(sites: SitePair, ids: Sequence[int]) -> None:
    """Registry rows for `ids` on the secondary, synced and pending verification (as after a
    download), whether or not they existed."""
    geo = sites.secondary
    target = registry_verifiable(geo, UploadReplicator)
    now = geo.clock.now()
    with geo.tracking() as conn:
        known = set(conn.execute(select(target.key)).scalars())
        missing = [i for i in ids if i not in known]
        if missing:
            conn.execute(
                insert(target.table),
                [
                    {
                        target.key.name: i,
                        "created_at": now,
                        "state": int(SyncState.SYNCED),
                        "last_synced_at": now,
                    }
                    for i in missing
                ],
            )
        for start in range(0, len(ids), 500):
            conn.execute(
                update(target.table)
                .where(target.key.in_(list(ids[start : start + 500])))
                .values(
                    state=SyncState.SYNCED,
                    verification_state=VerificationState.PENDING,
                    verification_checksum=None,
                    verified_at=None,
                )
            )


def secondary_run(sites: SitePair, ids: Sequence[int], threads: int) -> float:
    """Seconds for `SecondaryVerificationLoop` to verify `ids` against the primary's checksums."""
    ensure_synced(sites, ids)
    loop = SecondaryVerificationLoop(sites.secondary, threads=threads)
    try:
        start = time.perf_counter()
        while loop.run_once() == 0:
            pass
        seconds = time.perf_counter() - start
    finally:
        loop.close()
    with sites.secondary.tracking_engine.connect() as conn:
        counts = registry_verifiable(sites.secondary, UploadReplicator).count_by_state(conn)
    check_succeeded("secondary", counts, len(ids))
    return seconds


def check_succeeded(side: str, counts: dict[VerificationState, int], wanted: int) -> None:
    """A benchmark that verified nothing proves nothing: every record must have succeeded."""
    if counts[VerificationState.SUCCEEDED] < wanted:
        raise SystemExit(f"{side} verification did not succeed for every record: {counts}")


# -- the report -----------------------------------------------------------------------------------

Run = Callable[[SitePair, Sequence[int], int], float]


def timed(
    label: str, run: Run, sites: SitePair, ids: list[int], args: argparse.Namespace, total: int
) -> Result:
    """The best of `--repeat` runs."""
    seconds = min(run(sites, ids, args.threads) for _ in range(max(1, args.repeat)))
    return Result(label, seconds, len(ids), total)


def scenario(
    sites: SitePair, args: argparse.Namespace, sides: list[str], count: int, size: int, tag: str
) -> tuple[Result, list[Result]]:
    """The bare loop and each side's run over one set of files."""
    ids, paths = create_blobs(sites, count, size, tag)
    total = count * size
    bare_loop(paths)  # warm the page cache so every run reads from memory alike
    bare = Result("bare hashlib loop, 1 process", bare_loop(paths), count, total)
    threads = f"{args.threads} thread{'s' if args.threads > 1 else ''}"
    runs = []
    # The secondary compares with the primary's checksums: the primary runs first either way.
    primary = timed(f"primary, {threads}", primary_run, sites, ids, args, total)
    if "primary" in sides:
        runs.append(primary)
    if "secondary" in sides:
        runs.append(timed(f"secondary, {threads}", secondary_run, sites, ids, args, total))
    return bare, runs


def show(title: str, bare: Result, runs: list[Result]) -> None:
    """One block of the report."""
    print(title)
    for result in [bare, *runs]:
        ratio = result.bytes_per_second / bare.bytes_per_second
        print(
            f"  {result.label:<30} {result.bytes_per_second / 1e9:6.2f} GB/s"
            f" {result.files_per_second:10.0f} files/s  {result.seconds:7.2f} s  {ratio:5.2f}x bare"
        )


def bench_backend(backend: str, args: argparse.Namespace, sides: list[str]) -> list[str]:
    """Build a site pair on `backend`, run the scenarios, print them; returns target lines."""
    scratch = Path(tempfile.mkdtemp(prefix="geosync-bench-"))
    databases = DatabaseFactory(backend, scratch / "db", args.postgres_url)
    replicators = [UploadReplicator, PackageFileReplicator, SnippetReplicator]
    sites = build_site_pair(scratch / "sites", replicators, databases)
    targets = []
    try:
        print(f"verification benchmark: {backend}, {os.cpu_count()} CPUs")
        small = scenario(sites, args, sides, args.count, args.kib * KiB, "small")
        show(f"small: {args.count} x {args.kib} KiB", *small)
        for run in small[1]:
            met = run.files_per_second >= SMALL_TARGET
            targets.append(
                f"  [{'met' if met else 'MISSED'}] {backend} {run.label}: small files"
                f" >= {SMALL_TARGET:,} files/s ({run.files_per_second:.0f},"
                f" {run.bytes_per_second / small[0].bytes_per_second:.2f}x bare)"
            )
        if args.large_count:
            large = scenario(sites, args, sides, args.large_count, args.large_mib * MiB, "large")
            show(f"large: {args.large_count} x {args.large_mib} MiB", *large)
            for run in large[1]:
                ratio = run.bytes_per_second / large[0].bytes_per_second
                targets.append(f"  [info] {backend} {run.label}: large files {ratio:.2f}x bare")
    finally:
        sites.dispose()
        databases.cleanup()
        if args.keep:
            print(f"scratch directory kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return targets


def main(argv: Sequence[str] | None = None) -> None:
    """Run the chosen sides on the chosen databases, print the numbers and the targets."""
    args = parse_args(argv)
    configure("console", "error")
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    sides = ["primary", "secondary"] if args.side == "both" else [args.side]
    targets: list[str] = []
    for backend in backends:
        targets += bench_backend(backend, args, sides)
    print("targets")
    for line in targets:
        print(line)


if __name__ == "__main__":
    main()
