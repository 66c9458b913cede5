"""Checksums of claimed records, computed on a thread pool, with clear reasons when they fail.

Blobs hash in 1 MiB chunks into a buffer each thread reuses, and hashlib releases the GIL on
each, so threads use every core; repositories run `git for-each-ref`. Records are loaded in one
query per batch. `Hashers` hashes a whole batch in the background, a slice per thread, so that
the caller can store the previous batch's results meanwhile (`geosync.pipeline`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from geosync.errors import GeoError, NotFound
from geosync.log import get_logger

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.replicator import Replicator

log = get_logger("checksums")


@dataclass(frozen=True)
class ChecksumResult:
    """The checksum of one record's resource on this site, or why there is none."""

    model_record_id: int
    checksum: str | None = None
    failure: str | None = None


def failure_message(exc: BaseException) -> str:
    """A clear, short reason for a checksum that could not be computed."""
    if isinstance(exc, FileNotFoundError):
        return "File is missing"
    if isinstance(exc, IsADirectoryError):
        return "File is a directory"
    if isinstance(exc, NotFound) and str(exc).startswith("Repository"):
        return "Repository is missing"
    if isinstance(exc, OSError):
        return f"Error reading file: {exc.strerror or exc}"
    if isinstance(exc, GeoError):
        return str(exc)
    return f"Error calculating checksum: {type(exc).__name__}: {exc}"


def checksum_one(geo: Geo, replicator: type[Replicator], record: Any) -> ChecksumResult:
    """The checksum of one record's resource on this site; never raises."""
    model_record_id = int(record.id)
    try:
        return ChecksumResult(model_record_id, replicator(record, geo=geo).checksum())
    except (OSError, GeoError) as exc:
        return ChecksumResult(model_record_id, failure=failure_message(exc))
    except Exception as exc:  # a per-item boundary: one broken item must not stop the batch
        log.exception("checksum crashed", replicable=replicator.replicable_name, id=model_record_id)
        return ChecksumResult(model_record_id, failure=failure_message(exc))


def checksum_loaded(
    geo: Geo,
    replicator: type[Replicator],
    ids: Sequence[int],
    records: dict[int, Any],
    pool: Executor | None = None,
) -> list[ChecksumResult]:
    """Checksums of already loaded `records`, in the order of `ids`; a missing record fails."""
    present = [records[i] for i in ids if i in records]

    def one(record: Any) -> ChecksumResult:
        return checksum_one(geo, replicator, record)

    # A pool pays a hand-off per file; below two files it only costs time.
    if pool is not None and len(present) > 1:
        computed = list(pool.map(one, present))
    else:
        computed = [one(record) for record in present]
    by_id = {result.model_record_id: result for result in computed}
    return [by_id.get(i) or ChecksumResult(i, failure="Record is missing") for i in ids]


class PendingChecksums:
    """The checksums of one batch, being computed; `results()` waits for them."""

    def __init__(self, ids: Sequence[int], parts: list[Future[list[ChecksumResult]]]) -> None:
        self.ids = list(ids)
        self._parts = parts

    def done(self) -> bool:
        """Whether every checksum of the batch is computed."""
        return all(part.done() for part in self._parts)

    def results(self) -> list[ChecksumResult]:
        """The checksums in the order of `ids` (waits for them); a missing record fails."""
        by_id: dict[int, ChecksumResult] = {}
        for part in self._parts:
            by_id.update((r.model_record_id, r) for r in part.result())
        return [by_id.get(i) or ChecksumResult(i, failure="Record is missing") for i in self.ids]


class Hashers:
    """The threads a verification loop hashes with: a batch is split into one slice per
    thread (a hand-off per slice, not per file), and `start` returns at once.

    With one thread there is no pool: `start` hashes the batch in the calling thread.
    """

    def __init__(self, threads: int | None = None, name: str = "checksum") -> None:
        self.threads = max(1, threads or os.cpu_count() or 1)
        self.pool = (
            ThreadPoolExecutor(self.threads, thread_name_prefix=name) if self.threads > 1 else None
        )

    def start(
        self, geo: Geo, replicator: type[Replicator], ids: Sequence[int], records: dict[int, Any]
    ) -> PendingChecksums:
        """Start hashing the loaded `records` of `ids`; the checksums come from `results()`."""
        present = [records[i] for i in ids if i in records]

        def hash_slice(part: list[Any]) -> list[ChecksumResult]:
            return [checksum_one(geo, replicator, record) for record in part]

        if self.pool is None or len(present) < 2:
            done: Future[list[ChecksumResult]] = Future()
            done.set_result(hash_slice(present))
            return PendingChecksums(ids, [done])
        count = min(self.threads, len(present))
        slices = [present[index::count] for index in range(count)]
        return PendingChecksums(ids, [self.pool.submit(hash_slice, part) for part in slices])

    def close(self) -> None:
        """Let running checksums finish, then stop the threads."""
        if self.pool is not None:
            self.pool.shutdown(wait=True)
