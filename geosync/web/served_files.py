"""Opening a blob's file on the primary to serve it, or saying why it is not served.

One item's problem is that item's answer: the single endpoint turns a `Refusal` into a 4xx
with a `geo_code`, a batch into that item's frame (`geosync.wire`), and the other items of the
batch are served as if it were not there.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from geosync.errors import StorageError, UnsafePath
from geosync.replicator import Replicator
from geosync.wire import FILE_NOT_FOUND, NOT_A_FILE, UNREADABLE, UNSAFE_PATH

#: A FIFO opened without O_NONBLOCK would hang the request until a writer comes.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class Refusal:
    """Why one blob is not served: `reason` is the wire's (`file_not_found`, `unsafe_path`,
    `not_a_file`, `unreadable`), `message` says it to an operator."""

    reason: str
    message: str

    @property
    def geo_code(self) -> str:
        """The single endpoint's `geo_code` (`FILE_NOT_FOUND`, `UNSAFE_PATH`, ...)."""
        return self.reason.upper()


def open_served(replicator: Replicator) -> tuple[BinaryIO, Path, os.stat_result] | Refusal:
    """The open file `replicator` serves, its path and its status, or why it is not served."""
    name = replicator.replicable_name
    try:
        path = replicator.served_file()
    except UnsafePath as exc:
        return Refusal(UNSAFE_PATH, f"{name} file is not served: {exc}")
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return Refusal(FILE_NOT_FOUND, f"{name} file not found")
    except OSError as exc:
        return Refusal(UNREADABLE, f"{name} file cannot be read: {exc.strerror}")
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            os.close(fd)
            return Refusal(NOT_A_FILE, f"{name} file is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), path, status
    except BaseException:
        os.close(fd)
        raise


def open_served_object(replicator: Replicator) -> tuple[BinaryIO, int] | Refusal | None:
    """The open object and its size `replicator` streams from the primary's object store, why
    it is not served, or None when the blob is a file (`open_served`)."""
    name = replicator.replicable_name
    try:
        return replicator.served_object()
    except UnsafePath as exc:
        return Refusal(UNSAFE_PATH, f"{name} file is not served: {exc}")
    except FileNotFoundError:
        return Refusal(FILE_NOT_FOUND, f"{name} file not found")
    except StorageError as exc:
        return Refusal(UNREADABLE, f"{name} file cannot be read: {exc}")
