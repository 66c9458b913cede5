"""A throwaway PostgreSQL primary and streaming standby for tests (ARCHITECTURE.md §14).

`initdb` on a free loopback port with trust auth, then `pg_basebackup -R -X stream -c fast` for
the standby, in a scratch directory owned by `postgres`. The binaries live in
`/usr/lib/postgresql/<version>/bin`; as root they run through `runuser -u postgres --`
(initdb refuses to run as root). Both clusters take about three seconds to make.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from geosync.testing.servers import free_port

POSTGRES_ROOT = Path("/usr/lib/postgresql")
NEEDED = ("initdb", "pg_ctl", "pg_basebackup")
SERVER_OPTIONS = (
    "-c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    " -c shared_buffers=16MB -c max_connections=200 -c max_wal_senders=5"
)


def postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's binary directory with what the pair needs, or None."""
    if not POSTGRES_ROOT.is_dir():
        return None
    versions = sorted(
        (p for p in POSTGRES_ROOT.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
    )
    for version in reversed(versions):
        if all((version / "bin" / tool).is_file() for tool in NEEDED):
            return version / "bin"
    return None


def missing_reason() -> str | None:
    """Why a standby pair cannot be made here, or None when it can."""
    if postgres_bin_dir() is None:
        return f"PostgreSQL server binaries ({', '.join(NEEDED)}) not found in {POSTGRES_ROOT}"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root needs `runuser` to start PostgreSQL as the postgres user"
    return None


@dataclass(frozen=True)
class Cluster:
    """One running PostgreSQL cluster on 127.0.0.1."""

    data_dir: Path
    port: int

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL of `database` on this cluster."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def conninfo(self, database: str = "postgres") -> str:
        """libpq connection string of `database` on this cluster."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def scalar(self, sql: str) -> object:
        """Run one statement in autocommit mode; the first column of its first row, if any."""
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            cursor = conn.execute(sql.encode())
            row = cursor.fetchone() if cursor.description is not None else None
        return None if row is None else row[0]


@dataclass(frozen=True)
class StandbyPair:
    """A primary and its streaming standby."""

    primary: Cluster
    standby: Cluster

    def wait_for_replay(self, timeout: float = 30.0) -> None:
        """Block until the standby has replayed everything the primary has written so far."""
        target = str(self.primary.scalar("SELECT pg_current_wal_lsn()"))
        query = f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"
        self._wait(lambda: self.standby.scalar(query) is True, timeout, "replay")

    def wait_for_receipt(self, timeout: float = 30.0) -> None:
        """Block until the standby has received everything the primary has written so far."""
        target = str(self.primary.scalar("SELECT pg_current_wal_lsn()"))
        query = f"SELECT pg_last_wal_receive_lsn() >= '{target}'::pg_lsn"
        self._wait(lambda: self.standby.scalar(query) is True, timeout, "receipt")

    def pause_replay(self) -> None:
        """Stop the standby from applying WAL (it keeps receiving it)."""
        self.standby.scalar("SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        """Let the standby apply WAL again."""
        self.standby.scalar("SELECT pg_wal_replay_resume()")

    @staticmethod
    def _wait(ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the standby did not catch up ({what}) in {timeout} s")
            time.sleep(0.02)


@contextmanager
def _scratch() -> Iterator[tuple[Path, list[Cluster]]]:
    """A scratch directory owned by `postgres`; the clusters listed in it are stopped (newest
    first) and the directory removed at the end."""
    reason = missing_reason()
    if reason is not None:
        raise RuntimeError(reason)
    scratch = Path(tempfile.mkdtemp(prefix="geosync-pg-"))
    started: list[Cluster] = []
    try:
        if os.geteuid() == 0:
            shutil.chown(scratch, "postgres", "postgres")
        yield scratch, started
    finally:
        for cluster in reversed(started):
            stop_cluster(cluster)
        shutil.rmtree(scratch, ignore_errors=True)


def _bin_dir() -> Path:
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise RuntimeError(missing_reason() or "PostgreSQL server binaries not found")
    return bin_dir


def _new_cluster(scratch: Path, name: str) -> Cluster:
    cluster = Cluster(scratch / name, free_port())
    _run(_bin_dir(), "initdb", "-D", str(cluster.data_dir), "-A", "trust", "-U", "postgres",
         "--no-sync", "-E", "UTF8", "--locale=C")  # fmt: skip
    return cluster


@contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """Make, start and finally remove one PostgreSQL cluster of its own (a test may stop and
    restart it with `stop_cluster` and `start_cluster`; nobody else uses it)."""
    with _scratch() as (scratch, started):
        cluster = _new_cluster(scratch, "cluster")
        start_cluster(cluster)
        started.append(cluster)
        yield cluster


@contextmanager
def streaming_standby() -> Iterator[StandbyPair]:
    """Make, start and finally remove a primary and a streaming standby."""
    with _scratch() as (scratch, started):
        primary = _new_cluster(scratch, "primary")
        start_cluster(primary)
        started.append(primary)
        standby = Cluster(scratch / "standby", free_port())
        _run(_bin_dir(), "pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port),
             "-U", "postgres", "-D", str(standby.data_dir), "-R", "-X", "stream", "-c", "fast",
             "--no-sync")  # fmt: skip
        start_cluster(standby)
        started.append(standby)
        yield StandbyPair(primary, standby)


def start_cluster(cluster: Cluster) -> None:
    """Start a cluster made here (again, after `stop_cluster`); returns once it accepts
    connections."""
    scratch = cluster.data_dir.parent
    options = f"-p {cluster.port} -k {scratch} {SERVER_OPTIONS}"
    log = scratch / f"{cluster.data_dir.name}.log"
    _run(_bin_dir(), "pg_ctl", "-D", str(cluster.data_dir), "-l", str(log), "-w", "-t", "60",
         "-o", options, "start")  # fmt: skip


def stop_cluster(cluster: Cluster, mode: str = "immediate") -> None:
    """Stop a cluster made here (`mode` as pg_ctl's `-m`: immediate is a crash, fast a clean
    shutdown that cuts every connection); stopping a stopped cluster does nothing."""
    try:
        _run(_bin_dir(), "pg_ctl", "-D", str(cluster.data_dir), "-m", mode, "-w", "stop")
    except RuntimeError:
        pass  # already gone: nothing to stop


def _run(bin_dir: Path, tool: str, *args: str) -> None:
    command = [str(bin_dir / tool), *args]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    # The postgres user may not be able to enter the caller's working directory.
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=120, check=False, cwd=tempfile.gettempdir()
    )
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{tool} failed ({result.returncode}): {' | '.join(tail)}")
