"""The proof that a worker's process is dead: given for a process killed (reaped or a zombie)
or whose pid another process got since, never for a live one — busy, stopped, or this one —
nor for a process whose pid means nothing here (another machine or pid namespace)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from geosync.liveness import ProcessIdentity, process_identity, proven_dead, this_process
from geosync.testing.workers import wait_for

pytestmark = pytest.mark.skipif(this_process() is None, reason="needs Linux /proc")


def identity_of(process: subprocess.Popen[bytes]) -> ProcessIdentity:
    """The identity a worker running as `process` would write into its liveness lease."""
    identity = process_identity(process.pid)
    assert identity is not None
    return identity


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A live process with a few threads, as a worker has."""
    code = (
        "import threading, time\n"
        "for _ in range(3): threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
        "print('ready', flush=True); time.sleep(60)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    yield process
    process.kill()
    process.wait()


def test_a_live_process_is_never_proven_dead(child: subprocess.Popen[bytes]) -> None:
    identity = identity_of(child)
    assert not proven_dead(identity)
    child.send_signal(signal.SIGSTOP)  # stopped, as a debugger or a frozen VM would leave it
    try:
        assert not proven_dead(identity)
    finally:
        child.send_signal(signal.SIGCONT)
    assert not proven_dead(this_process())


def test_a_killed_process_is_proven_dead_as_a_zombie_and_once_reaped(
    child: subprocess.Popen[bytes],
) -> None:
    identity = identity_of(child)
    child.kill()
    # Not reaped: a zombie, once the kernel has ended every thread (a moment).
    wait_for(lambda: proven_dead(identity), timeout=5, what="the killed process proven dead")
    assert ") Z " in Path(f"/proc/{child.pid}/stat").read_text()
    child.wait()
    assert proven_dead(identity)  # reaped: no such process


def test_a_pid_taken_by_a_later_process_proves_the_first_dead(
    child: subprocess.Popen[bytes],
) -> None:
    earlier = replace(identity_of(child), start=identity_of(child).start - 1)
    assert proven_dead(earlier)
    here = this_process()
    assert here is not None
    assert proven_dead(replace(here, start=here.start - 1))


def test_a_process_of_another_machine_or_namespace_is_left_to_its_lease(
    child: subprocess.Popen[bytes],
) -> None:
    identity = identity_of(child)
    child.kill()
    child.wait()
    elsewhere = replace(identity, scope="another-boot:pid:[4026531836]")
    assert proven_dead(identity)
    assert not proven_dead(elsewhere)
    assert not proven_dead(None)
    assert not proven_dead(replace(identity, pid=1))


def test_an_identity_reads_back_from_its_stored_form() -> None:
    here = this_process()
    assert here is not None
    assert ProcessIdentity.parse(here.text()) == here
    for garbage in (None, "", "no slashes", "scope/x/1", "/12/34", "scope/0/5"):
        assert ProcessIdentity.parse(garbage) is None
