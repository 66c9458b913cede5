"""What dead workers leave beside their copies, removed when the stuck sweep recovers their rows.

A sync writes beside its copy: a clone's `tmp_<16 hex>` directory next to the mirror (renamed
into place when done), the mirror's lock file `<mirror>.lock`, and a blob download's
`tmp_<16 hex>` file where the file system has no unnamed files (an `O_TMPFILE` file vanishes
with its process). A worker that stops removes its own; a killed one (SIGKILL, the OOM killer,
a power cut) leaves them. Each is held (flock, `geosync.file_locks`) while in use and the kernel
drops the holds of a dead process, so an entry whose hold can be taken at once is abandoned;
one in use by a live worker, in this process or another, is left alone.

`remove_leftovers` looks only in the directories the recovered rows' copies live in — from the
row's `local_path` and from the record's own path — never across a whole storage.

A blob's partial file is never kept for resuming: a download resumes (HTTP Range) only within
the process that wrote it, through its open descriptor, so a dead worker's partial file cannot
be resumed by anyone and is removed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence, Set
from pathlib import Path
from typing import TYPE_CHECKING

from geosync.errors import ConfigurationError, ValidationError
from geosync.file_locks import is_temp_name, lock_file_of, remove_if_unheld
from geosync.log import get_logger
from geosync.paths import resolve_inside
from geosync.registry import Registry

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.replicator import Replicator

log = get_logger("leftovers")


def remove_leftovers(geo: Geo, recovered: Mapping[type[Replicator], Sequence[int]]) -> int:
    """Remove the abandoned temps beside the copies of the `recovered` rows (by replicator, the
    ids of rows failed because their worker died); returns how many entries went."""
    removed = 0
    for replicator, ids in recovered.items():
        if not ids:
            continue
        mirrors = replicator.copy_lock_file
        locations = copy_locations(geo, replicator, ids)
        count = sum(
            remove_beside(copy, mirror=mirrors, keep=locations) for copy in sorted(locations)
        )
        if count:
            log.info(
                "removed what dead workers left",
                replicable=replicator.replicable_name,
                removed=count,
                directories=len({copy.parent for copy in locations}),
            )
        removed += count
    return removed


def copy_locations(geo: Geo, replicator: type[Replicator], ids: Sequence[int]) -> set[Path]:
    """Where the copies of `ids` live on this site (absolute paths): each row's `local_path`
    (where its last sync put it) and each record's own path (where a first sync puts it)."""
    return _recorded_paths(geo, replicator, ids) | _record_paths(geo, replicator, ids)


def _recorded_paths(geo: Geo, replicator: type[Replicator], ids: Sequence[int]) -> set[Path]:
    registry = Registry(geo, replicator)
    with geo.tracking_engine.connect() as conn:
        relative = [row.local_path for i in ids if (row := registry.get(conn, i)) is not None]
    paths: set[Path] = set()
    for local_path in relative:
        if local_path:
            try:
                paths.add(resolve_inside(replicator.storage_root(geo.settings), local_path))
            except (ConfigurationError, ValidationError) as exc:
                _skipped(replicator, exc)
    return paths


def _record_paths(geo: Geo, replicator: type[Replicator], ids: Sequence[int]) -> set[Path]:
    from geosync.records import load_records

    try:
        with geo.main_reads() as main:
            records = load_records(main, replicator.model, ids)
    except Exception as exc:  # the main database is away: the rows' local paths must do
        _skipped(replicator, exc)
        return set()
    paths: set[Path] = set()
    for record in records.values():
        try:
            paths.add(replicator(record, geo=geo).copy_path())
        except (ConfigurationError, ValidationError) as exc:
            _skipped(replicator, exc)
    return paths


def _skipped(replicator: type[Replicator], exc: Exception) -> None:
    log.warning(
        "leftovers not looked for",
        replicable=replicator.replicable_name,
        error=str(exc),
        error_class=type(exc).__name__,
    )


def remove_beside(copy: Path, *, mirror: bool, keep: Set[Path] = frozenset()) -> int:
    """Remove the abandoned temps in `copy`'s directory (only there, not below it), and for a
    `mirror` its lock file if nobody holds it; returns how many entries went.

    Only entries named exactly as temps are named (`tmp_` and 16 hex digits) are looked at; the
    copy itself, the copies in `keep` and every other name are never touched.
    """
    try:
        names = [entry.name for entry in os.scandir(copy.parent) if is_temp_name(entry.name)]
    except (FileNotFoundError, NotADirectoryError):
        return 0
    kept = {copy, *keep}
    removed = sum(_remove(copy.parent / name) for name in names if copy.parent / name not in kept)
    if mirror:
        removed += _remove(lock_file_of(copy), empty_file_only=True)
    return removed


def _remove(path: Path, *, empty_file_only: bool = False) -> int:
    try:
        return int(remove_if_unheld(path, empty_file_only=empty_file_only))
    except OSError as exc:
        log.warning("leftover not removed", path=str(path), error=str(exc))
        return 0
