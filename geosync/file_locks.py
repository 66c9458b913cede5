"""Cross-process locks on files (flock(2)): a mirror's lock, and the hold on a temp in use.

Two worker processes of one secondary may sync the same mirror at once (a sync superseded by an
`updated` event still runs when the row is claimed again, maybe by another process); two clones
or fetches into one mirror would let the older one win. `mirror_lock` serialises them: a
threading lock for the threads of this process (flock belongs to an open file description, and
each waiter opens its own), then an exclusive flock on `<mirror>.lock`, an empty regular file
beside the mirror — never inside it, and never a directory, so it is never taken for a
repository. The kernel releases the flock of a process that dies, even by SIGKILL.

The lock file exists only while a sync holds it: the holder unlinks it before it lets go. A
waiter that then gets the lock of the unlinked file sees that the path no longer names it and
opens the path again. A lock file left by a killed holder is removed by the next holder of that
mirror, or by the stuck sweep (`geosync.secondary.leftovers`).

Temps (a blob download's file where the file system has no unnamed files, a clone's directory)
are named `tmp_<16 hex digits>` (`temp_name`) in the directory of their copy. A writer holds its
temp (`hold_new`) until it is renamed into place or removed, so a temp whose lock can be taken
without waiting (`remove_if_unheld`) belongs to nobody alive.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import stat
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

__all__ = [
    "LOCK_SUFFIX",
    "TEMP_PREFIX",
    "MirrorLock",
    "hold_new",
    "is_temp_name",
    "lock_file_of",
    "mirror_lock",
    "remove_if_unheld",
    "temp_name",
]

LOCK_SUFFIX = ".lock"
"""What a mirror's lock file adds to the mirror's name."""

TEMP_PREFIX = "tmp_"
"""How the name of a temp file or clone directory begins."""

_TEMP_NAME = re.compile(r"tmp_[0-9a-f]{16}")

_POLL_FIRST = 0.005
_POLL_MAX = 0.1
"""Seconds between two tries of a cancellable wait: the first, and the most it grows to."""

_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


def lock_file_of(dest: Path) -> Path:
    """The lock file of the mirror at `dest`: `<dest>.lock` in the same directory."""
    return dest.with_name(dest.name + LOCK_SUFFIX)


class MirrorLock:
    """Serialises the syncs of one mirror across the threads and processes of a site.

    Use it as a context manager (waits as long as it takes), or `acquire(cancel)` and `release`
    for a wait that a set `cancel` event ends (`acquire` then returns False).
    """

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.path = lock_file_of(dest)
        self._threads = threading.Lock()
        self._fd: int | None = None

    def acquire(self, cancel: threading.Event | None = None) -> bool:
        """Wait for the lock; False (nothing held) if `cancel` was set before it came."""
        if not _acquire_thread_lock(self._threads, cancel):
            return False
        try:
            fd = _lock_file(self.path, cancel)
        except BaseException:
            self._threads.release()
            raise
        if fd is None:
            self._threads.release()
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        """Remove the lock file and let the next waiter in (of any process)."""
        fd, self._fd = self._fd, None
        if fd is None:
            raise RuntimeError(f"release of an unheld mirror lock: {self.dest}")
        try:
            if _names(fd, self.path):
                self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)
            self._threads.release()

    def held(self) -> tuple[int, ...]:
        """The descriptor holding the flock, for child processes to inherit: the lock then
        lasts until they are gone as well (none when unheld)."""
        return () if self._fd is None else (self._fd,)

    def __enter__(self) -> MirrorLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


_mirror_locks: weakref.WeakValueDictionary[Path, MirrorLock] = weakref.WeakValueDictionary()
_mirror_locks_guard = threading.Lock()


def mirror_lock(dest: Path) -> MirrorLock:
    """The lock that serialises every sync of the mirror at `dest` on this site.

    One object per mirror in a process (while anyone uses it), so its threads queue on it.
    """
    with _mirror_locks_guard:
        lock = _mirror_locks.get(dest)
        if lock is None:
            lock = MirrorLock(dest)
            _mirror_locks[dest] = lock
        return lock


def _acquire_thread_lock(lock: threading.Lock, cancel: threading.Event | None) -> bool:
    if cancel is None:
        return lock.acquire()
    while not cancel.is_set():
        if lock.acquire(timeout=_POLL_MAX):
            return True
    return False


def _lock_file(path: Path, cancel: threading.Event | None) -> int | None:
    """An open descriptor of `path` holding its exclusive flock; None if cancelled first."""
    while True:
        fd = _open_creating(path)
        try:
            locked = _wait_flock(fd, cancel)
        except BaseException:
            os.close(fd)
            raise
        if not locked:
            os.close(fd)
            return None
        if _names(fd, path):
            return fd
        os.close(fd)  # its last holder unlinked it before letting go: open the path again


def _open_creating(path: Path) -> int:
    while True:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except FileNotFoundError:  # the mirror's directory is new, or was just pruned
            path.parent.mkdir(parents=True, exist_ok=True)


def _wait_flock(fd: int, cancel: threading.Event | None) -> bool:
    if cancel is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    delay = _POLL_FIRST
    while not cancel.is_set():
        if _try_flock(fd):
            return True
        cancel.wait(delay)
        delay = min(delay * 2, _POLL_MAX)
    return False


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in _BUSY:
            return False
        raise
    return True


def _names(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open at `fd` (not unlinked, not replaced)."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def temp_name(directory: Path) -> Path:
    """A fresh temp name in `directory`: `tmp_` and 16 random hex digits."""
    return directory / f"{TEMP_PREFIX}{secrets.token_hex(8)}"


def is_temp_name(name: str) -> bool:
    """Whether `name` has exactly the form `temp_name` gives (nothing looser)."""
    return _TEMP_NAME.fullmatch(name) is not None


def hold_new(fd: int, path: Path | None) -> bool:
    """Hold the temp just created at `path` (open at `fd`) until `fd` is closed.

    False if a sweep removed it between its creation and now: the caller closes `fd` and takes
    another name. An unnamed temp (`path` None) is held for the moment it is given a name.
    """
    fcntl.flock(fd, fcntl.LOCK_EX)  # only `remove_if_unheld` holds someone else's, briefly
    return path is None or _names(fd, path)


def remove_if_unheld(path: Path, *, empty_file_only: bool = False) -> bool:
    """Remove the regular file or directory `path` if nobody holds it; returns whether it went.

    A symlink, a device or a FIFO is never touched; with `empty_file_only` (a lock file) only
    an empty regular file is. The lock is taken without waiting and kept while removing, so no
    writer starts using the entry meanwhile.
    """
    try:
        seen = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    is_dir = stat.S_ISDIR(seen.st_mode)
    if empty_file_only and (is_dir or seen.st_size):
        return False
    if not (is_dir or stat.S_ISREG(seen.st_mode)):
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except (FileNotFoundError, PermissionError):
        return False
    try:
        if not _try_flock(fd) or not _names(fd, path):
            return False
        remove: Callable[[Path], None] = _remove_tree if is_dir else _unlink
        remove(path)
        return not os.path.lexists(path)
    finally:
        os.close(fd)


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
