"""The sites, data and measurements the fault scenarios share.

Sites are the demo application's, built like the tests build them (`build_site_pair`, real
databases, real files, loopback HTTP), with short retry delays and the context's lease. Data is
random but seeded. Measurements read what an operator could check by hand: the registry's states,
the files on both sites, the leftovers beside the copies, the processes still running.
"""

from __future__ import annotations

import filecmp
import json
import os
import random
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from geosync.app import Geo
from geosync.db.tables import geo_sync_attempts
from geosync.demo.models import Snippet, Upload
from geosync.demo.replicators import PackageFileReplicator, SnippetReplicator, UploadReplicator
from geosync.file_locks import LOCK_SUFFIX, is_temp_name
from geosync.nodes import NodeStore
from geosync.registry import Registry
from geosync.replicator import Replicator
from geosync.states import SyncState
from geosync.testing.databases import DatabaseFactory
from geosync.testing.faults.base import FaultContext
from geosync.testing.git import create_bare_repository, repository_refs
from geosync.testing.processes import SiteProcesses, site_processes
from geosync.testing.sites import SitePair, build_site_pair

REPLICATORS_MODULE = "geosync.demo.replicators"
REPLICATORS: list[type[Replicator]] = [UploadReplicator, PackageFileReplicator, SnippetReplicator]
#: Settings every scenario's sites get: retry delays shrunk (a failure is retried within a
#: second or two), idle workers looking again every 0.2 s, JSON logs to read.
SITE_SETTINGS: dict[str, Any] = {"backoff_scale": 0.005, "poll_interval": 0.2, "log_format": "json"}
KiB = 1024
MiB = 1024 * KiB


# -- sites -----------------------------------------------------------------------------------------


@contextmanager
def site_pair(
    ctx: FaultContext, name: str, databases: DatabaseFactory | None = None, **settings: Any
) -> Iterator[SitePair]:
    """A registered primary and secondary of the demo app under `ctx.root/name`, removed (with
    their databases) at the end. `databases` replaces the context's fresh ones."""
    root = ctx.scratch(name)
    factory = databases or DatabaseFactory(ctx.backend, root / "db", ctx.postgres_url)
    options = {**SITE_SETTINGS, "lease_seconds": ctx.lease_seconds, **settings}
    pair = build_site_pair(root / "sites", REPLICATORS, factory, **options)
    try:
        yield pair
    finally:
        pair.dispose()
        if databases is None:
            factory.cleanup()


class SplitDatabases(DatabaseFactory):
    """Databases from two factories: the tracking database from `tracking` (a cluster a
    scenario may restart), every other one from `main`."""

    def __init__(self, main: DatabaseFactory, tracking: DatabaseFactory) -> None:
        super().__init__(main.backend, main.root, main.server_url)
        self.main = main
        self.tracking = tracking

    def url(self, name: str) -> str:
        """A new database from the factory that holds `name`."""
        return (self.tracking if name == "tracking" else self.main).url(name)

    def cleanup(self) -> None:
        """Drop the databases of both factories."""
        self.tracking.cleanup()
        self.main.cleanup()


def override_config(site: SiteProcesses, geo: Geo, **changes: Any) -> None:
    """Rewrite the config file `site`'s processes start with: `geo`'s settings with `changes`
    (a database URL through a proxy, say), for processes started from now on."""
    settings = geo.settings.model_copy(
        update={"replicators": REPLICATORS_MODULE, "internal_url": site.url, **changes}
    )
    site.config.write_text(settings.to_toml(), encoding="utf-8")


def set_capacity(pair: SitePair, **capacities: int) -> None:
    """Set the secondary node's capacities (`files_max_capacity=...`, `repos_max_capacity=...`)."""
    with pair.primary.main() as conn:
        NodeStore(pair.primary, conn).update(pair.secondary_node.id, **capacities)


@dataclass
class ProcessPair:
    """A site pair whose services run as `geosync serve` / `geosync worker` processes."""

    pair: SitePair
    primary: SiteProcesses
    secondary: SiteProcesses

    def log_events(self, site: SiteProcesses, role: str, event: str) -> list[dict[str, Any]]:
        """The JSON log lines of one of `site`'s processes whose event is `event`."""
        return [line for line in log_lines(site, role) if line.get("event") == event]


@contextmanager
def process_pair(
    ctx: FaultContext, name: str, databases: DatabaseFactory | None = None, **settings: Any
) -> Iterator[ProcessPair]:
    """`site_pair` with config files for processes; every process started is stopped at the end."""
    with site_pair(ctx, name, databases, **settings) as pair:
        primary, secondary = site_processes(pair, pair.root, REPLICATORS_MODULE)
        try:
            yield ProcessPair(pair, primary, secondary)
        finally:
            secondary.stop_all()
            primary.stop_all()


def log_lines(site: SiteProcesses, role: str) -> list[dict[str, Any]]:
    """Every JSON line one of `site`'s processes wrote (its log survives the process)."""
    path = site.logs / f"{site.name}-{role}.log"
    if not path.exists():
        return []
    found: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        with suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                found.append(record)
    return found


def tracebacks(site: SiteProcesses, role: str) -> int:
    """How many tracebacks one of `site`'s processes wrote to its log."""
    path = site.logs / f"{site.name}-{role}.log"
    return path.read_text(errors="replace").count("Traceback") if path.exists() else 0


# -- data ------------------------------------------------------------------------------------------


def blob_sizes(rng: random.Random, count: int, *, large_every: int = 0) -> list[int]:
    """Sizes of `count` blobs: mostly 1-48 KiB, every `large_every`-th one 1-3 MiB."""
    return [
        rng.randint(MiB, 3 * MiB)
        if large_every and n % large_every == 0
        else rng.randint(1, 48 * KiB)
        for n in range(1, count + 1)
    ]


def add_uploads(
    pair: SitePair, sizes: list[int], rng: random.Random, prefix: str
) -> dict[int, str]:
    """Upload rows (each publishing `created`) and their files on the primary; id -> path."""
    storage = pair.primary.settings.blob_storage("uploads")
    made: dict[int, str] = {}
    for start in range(0, len(sizes), 500):
        with pair.primary.session() as session:
            uploads = []
            for n, size in enumerate(sizes[start : start + 500], start):
                path = f"{prefix}/{n % 16:02d}/{n}.bin"
                (storage / path).parent.mkdir(parents=True, exist_ok=True)
                (storage / path).write_bytes(rng.randbytes(size))
                uploads.append(Upload(path=path, namespace_id=1, size=size))
            session.add_all(uploads)
            session.commit()
            made.update({u.id: u.path for u in uploads})
    return made


def add_snippets(
    pair: SitePair, count: int, commits: int, rng: random.Random, file_size: int = 32 * KiB
) -> dict[int, str]:
    """Snippet rows (each publishing `created`) with bare repositories of `commits` real commits
    of random `file_size`-byte files on two branches, written in the row's transaction;
    id -> disk path."""
    root = pair.primary.settings.repository_storage_root
    assert root is not None
    made: dict[int, str] = {}
    with pair.primary.session() as session:
        snippets = [Snippet(title=f"snippet {n}", namespace_id=1) for n in range(count)]
        session.add_all(snippets)
        session.flush()
        for snippet in snippets:
            repo = create_bare_repository(root / snippet.disk_path, ())
            subprocess.run(
                ["git", "--git-dir", str(repo), "fast-import", "--quiet"],
                input=history(commits, file_size, rng),
                capture_output=True,
                check=True,
                timeout=120,
            )
            made[snippet.id] = snippet.disk_path
        session.commit()
    return made


def history(commits: int, file_size: int, rng: random.Random) -> bytes:
    """A `git fast-import` stream: `commits` commits on `main`, each rewriting one of seven
    files with random bytes, and a `feature` branch at the tip."""
    stream = bytearray()
    for n in range(commits):
        message = f"commit {n}\n".encode()
        data = rng.randbytes(file_size)
        stream += b"commit refs/heads/main\n"
        stream += f"committer fault <fault@example.invalid> {1_700_000_000 + n} +0000\n".encode()
        stream += f"data {len(message)}\n".encode() + message
        stream += f"M 100644 inline f{n % 7}.bin\ndata {len(data)}\n".encode() + data + b"\n"
    stream += b"reset refs/heads/feature\nfrom refs/heads/main\n\n"
    return bytes(stream)


# -- measurements ----------------------------------------------------------------------------------


def state_counts(geo: Any, replicator: type[Replicator]) -> Counter[SyncState]:
    """How many registry rows of `replicator` are in each sync state on the secondary `geo`."""
    with geo.tracking_engine.connect() as conn:
        return Counter(Registry(geo, replicator).count_by_state(conn))


def synced_count(geo: Any, replicator: type[Replicator]) -> int:
    """How many registry rows of `replicator` are synced on the secondary `geo`."""
    return state_counts(geo, replicator)[SyncState.SYNCED]


def attempts(
    geo: Any, replicator: type[Replicator], kind: str, outcome: str, error_class: str | None = None
) -> Counter[int]:
    """Per record, how many attempts of `kind` ("sync", "verification") ended with `outcome`
    (and `error_class`, when given) in the attempt history of the secondary `geo`."""
    t = geo_sync_attempts
    where = [t.c.replicable_name == replicator.replicable_name, t.c.kind == kind]
    where.append(t.c.outcome == outcome)
    if error_class is not None:
        where.append(t.c.error_class == error_class)
    with geo.tracking_engine.connect() as conn:
        rows = conn.execute(
            select(t.c.model_record_id, func.count()).where(*where).group_by(t.c.model_record_id)
        )
        return Counter({int(k): int(n) for k, n in rows})


def attempts_since(
    geo: Any, replicator: type[Replicator], outcome: str, since: datetime
) -> Counter[int]:
    """Per record, how many sync attempts that ended at or after `since` ended with `outcome`
    (a `failed` one is one more retry counted on the row); the syncs a fault cut began
    before it."""
    t = geo_sync_attempts
    where = [
        t.c.replicable_name == replicator.replicable_name,
        t.c.kind == "sync",
        t.c.outcome == outcome,
        t.c.finished_at >= since,
    ]
    with geo.tracking_engine.connect() as conn:
        rows = conn.execute(
            select(t.c.model_record_id, func.count()).where(*where).group_by(t.c.model_record_id)
        )
        return Counter({int(k): int(n) for k, n in rows})


@dataclass(frozen=True)
class CopyCheck:
    """How the secondary's copies compare with the primary's originals."""

    expected: int
    missing: int
    differing: int
    partial: int
    stray: int

    @property
    def clean(self) -> bool:
        """Every copy there and equal, nothing half-written or unexpected beside them."""
        return not (self.missing or self.differing or self.partial or self.stray)

    def describe(self) -> str:
        """The counts as a table cell."""
        return (
            f"{self.missing} missing, {self.differing} differing, {self.partial} partial,"
            f" {self.stray} stray of {self.expected}"
        )


def is_leftover(path: Path) -> bool:
    """A temp file or clone directory, or a mirror's lock file: what a dead writer leaves."""
    return is_temp_name(path.name) or path.name.endswith(LOCK_SUFFIX)


def check_blobs(pair: SitePair, paths: Mapping[int, str], storage: str = "uploads") -> CopyCheck:
    """Compare the secondary's copies of `paths` (id -> relative path) with the primary's files;
    every other file under the secondary's storage is partial (a temp) or stray."""
    source = pair.primary.settings.blob_storage(storage)
    target = pair.secondary.settings.blob_storage(storage)
    wanted = set(paths.values())
    missing = differing = 0
    for relative in wanted:
        copy = target / relative
        if not copy.is_file():
            missing += 1
        elif not filecmp.cmp(source / relative, copy, shallow=False):
            differing += 1
    others = [
        p for p in target.rglob("*") if not p.is_dir() and str(p.relative_to(target)) not in wanted
    ]
    partial = sum(1 for p in others if is_leftover(p))
    return CopyCheck(len(wanted), missing, differing, partial, len(others) - partial)


def check_mirrors(pair: SitePair, disk_paths: Mapping[int, str]) -> CopyCheck:
    """Compare the secondary's mirrors of `disk_paths` with the primary's repositories by their
    refs; temps and lock files anywhere under the repository root are partial."""
    source = pair.primary.settings.repository_storage_root
    target = pair.secondary.settings.repository_storage_root
    assert source is not None and target is not None
    missing = differing = 0
    for disk_path in disk_paths.values():
        mirror = target / disk_path
        if not (mirror / "HEAD").is_file():
            missing += 1
        elif sorted(repository_refs(mirror)) != sorted(repository_refs(source / disk_path)):
            differing += 1
    mirrors = {target / d for d in disk_paths.values()}
    stray = partial = 0
    for path in target.rglob("*"):
        if any(parent in mirrors for parent in (path, *path.parents)):
            continue
        if is_leftover(path):
            partial += 1
        elif path.name.endswith(".git"):
            stray += 1
    return CopyCheck(len(disk_paths), missing, differing, partial, stray)


def processes_mentioning(marker: Path) -> list[int]:
    """Pids of live processes whose command line names `marker` (a site's storage root: a git
    child of a killed worker that outlived it would)."""
    needle = str(marker).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with suppress(OSError):
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it holds (True) or `timeout` seconds pass (False): a scenario
    reports a timeout as a measurement instead of raising."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class Stopwatch:
    """Seconds since it was made (or last reset), on the monotonic clock."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def reset(self) -> None:
        """Start counting again from now."""
        self.started = time.monotonic()

    def seconds(self) -> float:
        """Seconds since the start."""
        return time.monotonic() - self.started


def seconds(value: float) -> str:
    """A duration for a table cell."""
    return f"{value:.1f} s" if value >= 1 else f"{value * 1000:.0f} ms"
