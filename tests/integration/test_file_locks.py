"""The mirror lock across real processes and threads, and the holds that mark temps in use."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from geosync.file_locks import (
    hold_new,
    lock_file_of,
    mirror_lock,
    remove_if_unheld,
    temp_name,
)
from geosync.secondary import sync

#: A child that takes the mirror lock of argv[1], says so, and lets go when told (a line on
#: stdin) or when killed.
HOLDER = """
import sys
from pathlib import Path
from geosync.file_locks import mirror_lock
with mirror_lock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


def start(script: str, *args: str) -> subprocess.Popen[str]:
    """`script` in a fresh Python process, its stdin and stdout piped as text."""
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def line_of(process: subprocess.Popen[str]) -> str:
    """The next line the child prints (a child that dies prints nothing more)."""
    assert process.stdout is not None
    return process.stdout.readline().strip()


def test_a_second_process_waits_until_the_first_releases(tmp_path: Path) -> None:
    dest = tmp_path / "mirrors" / "one.git"
    first = start(HOLDER, str(dest))
    second = None
    try:
        assert line_of(first) == "held"
        assert lock_file_of(dest).is_file() and not dest.exists()
        second = start(HOLDER, str(dest))
        time.sleep(0.5)
        assert second.poll() is None  # still waiting: it has said nothing yet
        assert first.stdin is not None
        first.stdin.write("\n")
        first.stdin.flush()
        assert line_of(first) == "released"
        assert line_of(second) == "held"
        assert second.stdin is not None
        second.stdin.write("\n")
        second.stdin.flush()
        assert line_of(second) == "released"
        assert first.wait(10) == 0 and second.wait(10) == 0
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert not lock_file_of(dest).exists()  # the last holder took its lock file with it


def test_a_lock_held_by_a_killed_process_is_free_at_once(tmp_path: Path) -> None:
    dest = tmp_path / "killed.git"
    holder = start(HOLDER, str(dest))
    assert line_of(holder) == "held"
    lock = mirror_lock(dest)
    assert not lock.acquire(cancel=_set_after(0.3))  # held by the other process
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(10)
    assert lock_file_of(dest).exists()  # a killed holder cannot remove its lock file
    assert lock.acquire(cancel=_set_after(5.0))
    lock.release()
    assert not lock_file_of(dest).exists()


def test_threads_of_one_process_take_turns(tmp_path: Path) -> None:
    dest = tmp_path / "threads.git"
    inside = 0
    most = 0
    guard = threading.Lock()

    def sync_once() -> None:
        nonlocal inside, most
        with mirror_lock(dest):
            with guard:
                inside += 1
                most = max(most, inside)
            time.sleep(0.02)
            with guard:
                inside -= 1

    threads = [threading.Thread(target=sync_once) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert most == 1
    assert sync.mirror_lock is mirror_lock  # the sync still finds its lock where it was
    assert sync.mirror_lock(dest) is mirror_lock(dest)


def test_a_cancelled_wait_gives_up_and_holds_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "cancelled.git"
    holder = start(HOLDER, str(dest))
    try:
        assert line_of(holder) == "held"
        started = time.monotonic()
        assert not mirror_lock(dest).acquire(cancel=_set_after(0.2))
        assert time.monotonic() - started < 3
    finally:
        holder.kill()
        holder.wait()
    lock = mirror_lock(dest)
    assert lock.acquire(cancel=_set_after(5.0))  # the cancelled wait left nothing held
    lock.release()


def test_only_unheld_temps_are_removed(tmp_path: Path) -> None:
    held_path = temp_name(tmp_path)
    held_fd = os.open(held_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    abandoned_dir = temp_name(tmp_path)
    (abandoned_dir / "objects").mkdir(parents=True)
    (abandoned_dir / "objects" / "pack").write_bytes(b"partial")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"keep")
    link = temp_name(tmp_path)
    link.symlink_to(outside)
    not_empty_lock = tmp_path / "x.git.lock"
    not_empty_lock.write_bytes(b"not a lock file of ours")
    try:
        assert hold_new(held_fd, held_path)
        assert not remove_if_unheld(held_path)
        assert held_path.exists()
        assert remove_if_unheld(abandoned_dir)
        assert not abandoned_dir.exists()
        assert not remove_if_unheld(link)  # a symlink is never followed nor removed
        assert link.is_symlink() and (outside / "keep").read_bytes() == b"keep"
        assert not remove_if_unheld(not_empty_lock, empty_file_only=True)
        assert not_empty_lock.exists()
    finally:
        os.close(held_fd)
    assert remove_if_unheld(held_path)  # its writer closed it: nobody holds it any more


def _set_after(seconds: float) -> threading.Event:
    """An event that a timer sets after `seconds`."""
    event = threading.Event()
    timer = threading.Timer(seconds, event.set)
    timer.daemon = True
    timer.start()
    return event
