"""The stuck sweep removes what a dead worker left beside the copies of the rows it recovers,
and nothing else: a live worker's temps, other names and other directories stay."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from geosync.demo.models import Snippet, Upload
from geosync.demo.replicators import SnippetReplicator, UploadReplicator
from geosync.file_locks import hold_new, lock_file_of, temp_name
from geosync.leases import acquire
from geosync.registry import Registry
from geosync.secondary.scheduler import StuckSweepLoop
from geosync.states import SyncState
from geosync.testing import SitePair
from geosync.testing.workers import secondary_worker, wait_for
from geosync.worker import Worker

DEAD = "gone-host:4242:deadbeef"

#: A live writer in another process: holds a new temp directory in argv[1] the way a clone does.
LIVE_CLONE = """
import sys
from pathlib import Path
from geosync.git import _temp_dir
tmp, fd = _temp_dir(Path(sys.argv[1]))
(tmp / "HEAD").write_text("ref: refs/heads/main\\n")
print(tmp, flush=True)
sys.stdin.readline()
"""


def claimed_by_dead_worker(sites: SitePair, replicator: type, ids: list[int]) -> None:
    """Rows for `ids`, started by a worker whose lease has expired."""
    registry = Registry(sites.secondary, replicator)
    now = sites.secondary.clock.now()
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, ids)
        assert [i for i, _ in registry.claim(conn, len(ids), DEAD)] == ids
        acquire(conn, f"worker:{DEAD}", DEAD, now - timedelta(hours=1), timedelta(minutes=1))


def snapshot(root: Path) -> set[str]:
    """Every path under `root`, relative, symlinks not followed."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_the_stuck_sweep_removes_only_a_dead_workers_leftovers_beside_its_rows(
    sites: SitePair,
) -> None:
    with sites.primary.session() as session:
        snippet, other = Snippet(title="a", namespace_id=1), Snippet(title="b", namespace_id=1)
        upload = Upload(path="files/a.bin", namespace_id=1, size=3)
        session.add_all([snippet, other, upload])
        session.commit()
        snippet_id, other_path, upload_id = snippet.id, other.disk_path, upload.id
        disk_path = snippet.disk_path
    repositories = sites.secondary.settings.repository_storage_root
    assert repositories is not None
    mirror = repositories / disk_path
    mirror.parent.mkdir(parents=True)
    dead_clone = temp_name(mirror.parent)  # a killed worker's clone: nobody holds it
    (dead_clone / "objects").mkdir(parents=True)
    (dead_clone / "objects" / "pack.tmp").write_bytes(b"half a pack")
    lock_file_of(mirror).touch()  # its lock file, left behind
    (mirror.parent / "tmp_notes").write_text("not a temp's name")
    elsewhere = repositories / "snippets" / "999"  # a directory no recovered row points to
    elsewhere.mkdir(parents=True)
    temp_name(elsewhere).mkdir()
    blobs = sites.secondary.settings.blob_storage("uploads")
    (blobs / "files").mkdir(parents=True)
    dead_partial = temp_name(blobs / "files")
    dead_partial.write_bytes(b"partial download")
    (blobs / "files" / "b.bin").write_bytes(b"another copy")
    live = subprocess.Popen(
        [sys.executable, "-c", LIVE_CLONE, str(mirror.parent)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    live_partial = temp_name(blobs / "files")
    live_fd = os.open(live_partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        assert live.stdout is not None
        live_clone = Path(live.stdout.readline().strip())
        assert hold_new(live_fd, live_partial)  # a download of this process, in flight
        claimed_by_dead_worker(sites, SnippetReplicator, [snippet_id])
        claimed_by_dead_worker(sites, UploadReplicator, [upload_id])
        before = {"repositories": snapshot(repositories), "blobs": snapshot(blobs)}

        worker = Worker(sites.secondary, [StuckSweepLoop])
        worker.loops[0].run_once()

        gone = {
            "repositories": {
                str(p.relative_to(repositories))
                for p in (dead_clone, dead_clone / "objects", dead_clone / "objects" / "pack.tmp")
            }
            | {str(lock_file_of(mirror).relative_to(repositories))},
            "blobs": {str(dead_partial.relative_to(blobs))},
        }
        assert snapshot(repositories) == before["repositories"] - gone["repositories"]
        assert snapshot(blobs) == before["blobs"] - gone["blobs"]
        assert live_clone.is_dir() and (live_clone / "HEAD").is_file()
        assert live_partial.is_file()
        assert not (repositories / other_path).exists()
    finally:
        os.close(live_fd)
        live.kill()
        live.wait()
    with sites.secondary.tracking_engine.connect() as conn:
        for replicator, model_id in (
            (SnippetReplicator, snippet_id),
            (UploadReplicator, upload_id),
        ):
            row = Registry(sites.secondary, replicator).get(conn, model_id)
            # Claimed from pending, interrupted: pending again, as the claim found it.
            assert row is not None and row.sync_state == SyncState.PENDING


def test_a_sweep_that_recovers_nothing_touches_nothing(sites: SitePair) -> None:
    blobs = sites.secondary.settings.blob_storage("uploads")
    blobs.mkdir(parents=True, exist_ok=True)
    abandoned = temp_name(blobs)
    abandoned.write_bytes(b"no row points here")
    worker = Worker(sites.secondary, [StuckSweepLoop])
    worker.loops[0].run_once()
    assert abandoned.read_bytes() == b"no row points here"  # whole storages are never scanned


def test_a_worker_killed_mid_clone_takes_its_git_along_and_the_next_worker_sweeps_away(
    live_sites: SitePair, tmp_path: Path
) -> None:
    from tests.integration.test_repository_replication import (
        _big_history,
        _held_pack,
        create_snippet,
        mirrored,
    )
    from tests.integration.test_worker_outages import write_site_config

    sites = live_sites
    repo = create_snippet(sites, tmp_path, commits=1)
    _big_history(repo.primary, 3000, 500)
    root = sites.secondary.settings.repository_storage_root
    assert root is not None
    config = write_site_config(sites.secondary, tmp_path / "secondary.toml", lease_seconds=2.0)
    pack = _held_pack()
    with sites.primary_served(pack.wrap):
        process = subprocess.Popen(
            [sys.executable, "-m", "geosync", "worker", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if not k.startswith("GEOSYNC_")},
        )
        try:
            wait_for(pack.holding.is_set, timeout=60, what="the clone receiving its pack")
            left = list(root.glob("snippets/*/tmp_*"))
            assert len(left) == 1
            sessions = _sessions_naming(left[0])
            assert sessions and _processes_in(sessions)  # git and its helpers, mid-clone
        finally:
            process.kill()  # SIGKILL: nothing of the worker runs any more
            process.wait()
        # The pack is still held: git's helpers would wait on the primary as long as it does.
        wait_for(lambda: not _processes_in(sessions), timeout=5, what="the worker's git gone")
        assert left[0].is_dir()
        pack.release()
        with secondary_worker(sites):
            wait_for(mirrored(sites, repo), timeout=60, what="the mirror synced by the next worker")
            wait_for(lambda: not left[0].exists(), timeout=30, what="the dead clone removed")
    assert not list(root.glob("snippets/*/tmp_*"))
    assert not lock_file_of(repo.mirror(sites)).exists()


def _proc_stats() -> dict[int, tuple[bytes, int]]:
    """Every process's command line and session id, from /proc."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            stats[int(entry.name)] = (cmdline, int(stat.rsplit(")", 1)[1].split()[3]))
    return stats


def _sessions_naming(directory: Path) -> set[int]:
    """The sessions of the processes whose command line names `directory` (a clone into it)."""
    return {sid for cmdline, sid in _proc_stats().values() if str(directory).encode() in cmdline}


def _processes_in(sessions: set[int]) -> list[int]:
    """The live (not zombie) processes of `sessions`."""
    return [pid for pid, (cmdline, sid) in _proc_stats().items() if sid in sessions and cmdline]
