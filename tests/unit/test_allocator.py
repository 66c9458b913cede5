"""The allocator tuning of streaming processes: freed chunk buffers stay for the next chunk."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

PROBE = """
import ctypes, json, sys
if sys.argv[1] == "tuned":
    from geosync.allocator import tune_for_streaming
    assert tune_for_streaming()

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
chunks = [bytes(1 << 20) for _ in range(4)]  # four 1 MiB chunk buffers, as a download holds
during = libc.mallinfo2()
del chunks
after = libc.mallinfo2()
print(json.dumps({"mapped_during": during.hblkhd, "free_kept_after": after.fordblks}))
"""

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the tuning is for glibc's allocator"
)


def probe(mode: str) -> dict[str, int]:
    """Run the probe in a fresh interpreter (the tuning is process-wide and for good)."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    result: dict[str, int] = json.loads(done.stdout)
    return result


def test_tuned_buffers_come_from_the_heap_and_stay_after_free() -> None:
    MiB = 1 << 20
    default, tuned = probe("default"), probe("tuned")
    assert default["mapped_during"] >= 4 * MiB  # each its own mapping, unmapped when freed
    assert default["free_kept_after"] < MiB
    assert tuned["mapped_during"] < 4 * MiB
    assert tuned["free_kept_after"] >= 4 * MiB  # kept: the next chunks reuse these pages
