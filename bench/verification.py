"""Benchmark: the primary's checksum throughput, beside a bare `hashlib.sha256` loop.

Creates a primary (with one secondary node, so `checksum_succeeded` is published as in
production), writes the blobs into its upload storage, and times `PrimaryVerificationLoop` —
claims, record loads, hashing, stored results and events included — with one thread and with
every core, against a plain one-process loop hashing the same files in 1 MiB chunks.

    .venv/bin/python bench/verification.py                       # the issue's sizes, SQLite
    .venv/bin/python bench/verification.py --large-count 4 --small-count 2000 --backend postgres

Targets (issue 4): large files ≥ 0.8x the bare loop with one thread and > 1x with all cores;
small files ≥ 2,000 files/s. Never shells out to `sha256sum` (it is far slower here).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import update

from geosync.demo.models import Upload
from geosync.demo.replicators import PackageFileReplicator, SnippetReplicator, UploadReplicator
from geosync.log import configure
from geosync.primary.verification import PrimaryVerificationLoop
from geosync.states import VerificationState
from geosync.testing import DatabaseFactory, SitePair, build_site_pair
from geosync.verification import primary_verifiable

MiB = 1024 * 1024
KiB = 1024
CHUNK = MiB
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


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
    """Sizes default to the issue's: 20 x 50 MiB and 10,000 x 64 KiB."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large-count", type=int, default=20)
    parser.add_argument("--large-mib", type=int, default=50)
    parser.add_argument("--small-count", type=int, default=10_000)
    parser.add_argument("--small-kib", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--postgres-url", default=POSTGRES_URL)
    parser.add_argument("--keep", action="store_true", help="Keep the scratch directory.")
    return parser.parse_args(argv)


def create_blobs(sites: SitePair, count: int, size: int, tag: str) -> tuple[list[int], list[Path]]:
    """`count` upload records with files of `size` bytes (distinct contents), made via the ORM."""
    storage = sites.primary.settings.blob_storage("uploads")
    block = os.urandom(min(size, MiB)) if size else b""
    with sites.primary.session() as session:
        records = [Upload(path="", namespace_id=1, size=size) for _ in range(count)]
        session.add_all(records)
        session.flush()
        for record in records:
            record.path = f"{tag}/{record.id // 1000:03d}/{record.id}.bin"
        session.commit()
        ids = [int(r.id) for r in records]
        paths = [storage / r.path for r in records]
    for index, path in enumerate(paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_blob(path, index.to_bytes(8, "big"), block, size)
    return ids, paths


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


def requeue(sites: SitePair, ids: Sequence[int]) -> None:
    """Make `ids` pending again, their checksums forgotten (a fresh first verification)."""
    target = primary_verifiable(sites.primary, UploadReplicator)
    with sites.primary.main() as conn:
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            conn.execute(
                update(target.table)
                .where(target.key.in_(chunk))
                .values(
                    verification_state=VerificationState.PENDING,
                    verification_checksum=None,
                    verified_at=None,
                )
            )


def geosync_run(sites: SitePair, ids: Sequence[int], threads: int) -> float:
    """Seconds for `PrimaryVerificationLoop` to verify `ids`, bookkeeping included."""
    requeue(sites, ids)
    loop = PrimaryVerificationLoop(sites.primary, threads=threads)
    try:
        start = time.perf_counter()
        while loop.run_once() == 0:
            pass
        seconds = time.perf_counter() - start
    finally:
        loop.close()
    check_all_succeeded(sites, ids)
    return seconds


def check_all_succeeded(sites: SitePair, ids: Sequence[int]) -> None:
    """A benchmark that verified nothing proves nothing: every record must have succeeded."""
    target = primary_verifiable(sites.primary, UploadReplicator)
    with sites.primary.main_engine.connect() as conn:
        counts = target.count_by_state(conn)
    if counts[VerificationState.SUCCEEDED] < len(ids):
        raise SystemExit(f"verification did not succeed for every record: {counts}")


def scenario(
    sites: SitePair, name: str, count: int, size: int, threads: int
) -> tuple[Result, list[Result]]:
    """Bare loop and geosync runs over one set of files."""
    ids, paths = create_blobs(sites, count, size, name)
    total = count * size
    bare_loop(paths)  # warm the page cache so every run reads from memory alike
    bare = Result("bare hashlib loop, 1 process", bare_loop(paths), count, total)
    runs = [Result("geosync, 1 thread", geosync_run(sites, ids, 1), count, total)]
    if threads > 1:
        label = f"geosync, {threads} threads"
        runs.append(Result(label, geosync_run(sites, ids, threads), count, total))
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


def verdicts(large: tuple[Result, list[Result]], small: tuple[Result, list[Result]]) -> None:
    """The issue's targets, each marked met or missed."""
    bare, runs = large
    single = runs[0].bytes_per_second / bare.bytes_per_second
    best = max(r.bytes_per_second for r in runs) / bare.bytes_per_second
    small_rate = max(r.files_per_second for r in small[1])
    checks = [
        (f"large files, 1 thread >= 0.8x bare ({single:.2f}x)", single >= 0.8),
        (f"large files, all cores > 1x bare ({best:.2f}x)", best > 1.0),
        (f"small files >= 2,000 files/s ({small_rate:.0f})", small_rate >= 2000),
    ]
    print("targets")
    for text, met in checks:
        print(f"  [{'met' if met else 'MISSED'}] {text}")


def main(argv: Sequence[str] | None = None) -> None:
    """Build a primary, run both scenarios, print the numbers."""
    args = parse_args(argv)
    configure("console", "error")
    scratch = Path(tempfile.mkdtemp(prefix="geosync-bench-"))
    databases = DatabaseFactory(args.backend, scratch / "db", args.postgres_url)
    replicators = [UploadReplicator, PackageFileReplicator, SnippetReplicator]
    sites = build_site_pair(scratch / "sites", replicators, databases)
    try:
        print(f"primary verification benchmark: {args.backend}, {os.cpu_count()} CPUs")
        large = scenario(sites, "large", args.large_count, args.large_mib * MiB, args.threads)
        show(f"large: {args.large_count} x {args.large_mib} MiB", *large)
        small = scenario(sites, "small", args.small_count, args.small_kib * KiB, args.threads)
        show(f"small: {args.small_count} x {args.small_kib} KiB", *small)
        verdicts(large, small)
    finally:
        sites.dispose()
        databases.cleanup()
        if args.keep:
            print(f"scratch directory kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
