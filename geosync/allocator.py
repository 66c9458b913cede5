"""Tuning of the C allocator for processes that stream blobs (`geosync serve`, `geosync worker`).

Every chunk of a streamed blob is a new 1 MiB buffer. With glibc's defaults the heap is trimmed
as soon as 2 MiB lie free at its top, so buffers freed by one chunk are handed back to the kernel
and the next chunk's buffer is made of fresh pages the kernel must fault in and zero: on the
primary that was a quarter of its CPU while serving large files. Keeping up to `KEEP_FREE` per
arena, and serving buffers up to `MMAP_FROM` from the heap, lets chunks reuse the same memory.
It changes no behaviour, only where memory comes from; elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

from geosync.log import get_logger

log = get_logger("allocator")

#: Free memory an arena keeps at its top before giving it back to the kernel.
KEEP_FREE = 8 * 1024 * 1024
#: Allocations from this size on are mapped on their own (and unmapped when freed).
MMAP_FROM = 4 * 1024 * 1024
_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3


def tune_for_streaming() -> bool:
    """Ask glibc to reuse freed chunk buffers; True when it was asked and agreed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # Both at once: setting either turns off glibc's own adjustment of the other.
    agreed = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_FROM)) and bool(
        mallopt(_M_TRIM_THRESHOLD, KEEP_FREE)
    )
    if not agreed:
        log.warning("allocator tuning refused", mmap_from=MMAP_FROM, keep_free=KEEP_FREE)
    return agreed
