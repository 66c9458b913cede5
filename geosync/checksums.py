"""Checksums of claimed records, computed on a thread pool, with clear reasons when they fail.

Blobs hash in 1 MiB chunks and hashlib releases the GIL on each, so threads use every core;
repositories run `git for-each-ref`. Records are loaded in one query per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
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
