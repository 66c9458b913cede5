"""Child process groups that die with their worker: a git clone never outlives the process
that started it.

git runs in a session of its own, so that a timeout kills it and its helpers
(`git-remote-http`, `index-pack`) as one group. A group outlives its parent unless something
ends it, and a SIGKILLed worker runs no code. Two things end it:

- the leader's parent-death signal (Linux `PR_SET_PDEATHSIG`, SIGKILL), set in the child
  between fork and exec: the kernel kills git when the thread that started it ends (that
  thread waits for git, so it ends only with its process). Where prctl is missing (not Linux)
  this is a no-op;
- the reaper: one small process per worker process, started with the first group, that reads
  the groups in use from a pipe and SIGKILLs those still listed when the pipe reaches its end
  — which the kernel gives it when the worker dies, however it dies. It ends the helpers (the
  parent-death signal is not inherited: a `git-remote-http` blocked on a silent primary would
  not notice that git is gone), and the leaders where prctl is missing.

A group is forgotten once its leader has been waited for; a group id is not reused while any
process of the group lives, so the reaper never kills a stranger's group in practice.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["ended", "kill_group", "start"]

_PR_SET_PDEATHSIG = 1

_REAPER = """
import os, signal, sys
groups = set()
for line in sys.stdin:
    (groups.add if line[0] == "+" else groups.discard)(int(line[1:]))
for group in groups:
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
"""


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl: Callable[..., int] = libc.prctl
    except (OSError, AttributeError):
        return None
    return prctl


_prctl = _load_prctl()


def _die_with_parent(parent: int) -> Callable[[], None]:
    """The `preexec_fn` of a group leader: SIGKILL when its parent dies, or exit at once if it
    has died already (the signal is only armed for deaths after the prctl call).

    `preexec_fn` is unsafe in general because the child of a threaded parent may block on a
    lock another thread held at the fork. This one takes none: it calls a C function resolved
    before the fork, `getppid` and `_exit` — no import, no logging, no allocation beyond the
    interpreter's own (which only the GIL guards, and the child holds it).
    """
    prctl = _prctl

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class _Reaper:
    """The reaper process of this worker process, and the groups it has been told of."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._groups: set[int] = set()

    def watch(self, group: int) -> None:
        with self._lock:
            self._groups.add(group)
            if not self._tell(f"+{group}\n"):  # a reaper that died: start another, tell it all
                self._process = None
                self._tell("".join(f"+{g}\n" for g in self._groups))

    def forget(self, group: int) -> None:
        with self._lock:
            self._groups.discard(group)
            self._tell(f"-{group}\n")

    def _tell(self, lines: str) -> bool:
        process = self._process or self._start()
        if process is None or process.stdin is None:
            return True  # no reaper can run here: the parent-death signal must do
        try:
            process.stdin.write(lines.encode())
            process.stdin.flush()
        except (BrokenPipeError, ValueError):
            return False
        return True

    def _start(self) -> subprocess.Popen[bytes] | None:
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _REAPER],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a terminal's Ctrl-C must not end it before the worker
            )
        except OSError:
            return None
        atexit.register(self._close)
        return self._process

    def _close(self) -> None:
        """At a clean exit: the reaper ends the groups still running, and is waited for."""
        process, self._process = self._process, None
        if process is not None and process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5.0)


_reaper = _Reaper()


def start(
    args: Sequence[str], *, pass_fds: Sequence[int] = (), **popen: Any
) -> subprocess.Popen[bytes]:
    """Start `args` as the leader of a new session that dies with this process; call `ended`
    once it has been waited for. `pass_fds` are inherited by the whole group (its holds)."""
    process: subprocess.Popen[bytes] = subprocess.Popen(
        list(args),
        start_new_session=True,
        preexec_fn=_die_with_parent(os.getpid()),  # thread-safe: see _die_with_parent
        pass_fds=tuple(pass_fds),
        **popen,
    )
    _reaper.watch(process.pid)
    return process


def ended(process: subprocess.Popen[bytes]) -> None:
    """The group of `process` is over (its leader waited for): the reaper forgets it."""
    _reaper.forget(process.pid)


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL `process` and every helper it started (they share its process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
