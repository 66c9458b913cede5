"""Orphaned objects in a secondary's object-store blob storages, found a page at a time.

An object under a storage's prefix that no registry row knows (no row's `local_path` names it)
and no record waiting for its first sync would write (a row without a `local_path`) is an
orphan: a sync whose row was removed before it was settled, say, or a `deleted` event pruned
before it was read. The consistency sweep lists each such storage one `ListObjectsV2` page per
round (`ORPHAN_PAGE` keys, never the whole bucket at once), checks the page's keys against the
registries in one query per type, and removes the orphans older than `ORPHAN_GRACE` (a sync
in flight writes its object before its row says so).

A storage is not scanned while a type stored in it is turned off (its flag) or left to the
object store's own replication (`geosync.object_sync`): objects without rows are expected
there; nor when another storage's prefix in the same bucket contains its prefix or is inside it;
nor while more than `MAX_UNWRITTEN` rows of its types wait for a first sync (a backfill): their
objects (a seeded bucket, skip-download) are not known by key until they are synced.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Connection, select

from geosync.errors import GeoError
from geosync.log import get_logger
from geosync.registry import Registry
from geosync.storage import BlobStore
from geosync.storage.object_store import ObjectStore

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.replicator import Replicator

log = get_logger("consistency")

#: Keys listed per round and storage.
ORPHAN_PAGE = 1000
#: An unknown object younger than this may be a sync's, written before its row is settled.
ORPHAN_GRACE = timedelta(hours=1)
#: Above this many rows waiting for a first sync, a storage is not scanned.
MAX_UNWRITTEN = 10_000


@dataclass(frozen=True)
class OrphanPage:
    """What scanning one page of one storage found and removed; `after` continues it."""

    storage: str
    listed: int
    orphans: int
    removed: int
    after: str | None


def scanned_storages(
    geo: Geo, replicators: list[type[Replicator]], skipped: set[type[Replicator]]
) -> dict[str, list[type[Replicator]]]:
    """This site's object-store blob storages by name, with the types stored in each; a storage
    holding any type in `skipped` (flag off, left to the store) is left out."""
    by_storage: dict[str, list[type[Replicator]]] = {}
    for replicator in replicators:
        if replicator.strategy == "blob":
            by_storage.setdefault(str(getattr(replicator, "storage", "")), []).append(replicator)
    stores = {name: _store(geo, types[0]) for name, types in by_storage.items()}
    objects = {name: store for name, store in stores.items() if isinstance(store, ObjectStore)}
    return {
        name: by_storage[name]
        for name, store in objects.items()
        if not (set(by_storage[name]) & skipped) and not _overlaps(name, store, objects)
    }


def _overlaps(name: str, store: ObjectStore, others: dict[str, ObjectStore]) -> bool:
    """Whether another storage's prefix in the same bucket contains or is inside this one's:
    each would take the other's objects for orphans, so neither is scanned."""
    for other_name, other in others.items():
        same_bucket = (other.config.endpoint_url, other.bucket) == (
            store.config.endpoint_url,
            store.bucket,
        )
        nested = other.prefix.startswith(store.prefix) or store.prefix.startswith(other.prefix)
        if other_name != name and same_bucket and nested:
            log.warning("orphan scan skipped: storages share a prefix", storages=[name, other_name])
            return True
    return False


def scan_page(
    geo: Geo,
    storage: str,
    replicators: list[type[Replicator]],
    after: str | None,
    page: int = ORPHAN_PAGE,
) -> OrphanPage:
    """List one page of `storage` after key `after` and remove its orphans."""
    store = _store(geo, replicators[0])
    with geo.tracking_engine.connect() as tracking:
        unwritten = _unwritten_rows(geo, tracking, replicators)
        if unwritten is None:
            log.info("orphan scan deferred: a backfill is under way", storage=storage)
            return OrphanPage(storage, 0, 0, 0, after)
        listing = store.list_page("", after, page)
        known = _known_keys(geo, tracking, replicators, listing.keys)
    unknown = [key for key in listing.keys if key not in known]
    if unknown and any(ids for ids in unwritten.values()):
        unknown = [key for key in unknown if key not in _pending_paths(geo, unwritten)]
    removed = sum(_remove_if_old(geo, store, key) for key in unknown)
    if unknown:
        log.info(
            "orphaned objects found",
            storage=storage,
            orphans=len(unknown),
            removed=removed,
        )
    return OrphanPage(storage, len(listing.keys), len(unknown), removed, listing.after)


def _store(geo: Geo, replicator: type[Replicator]) -> BlobStore:
    return replicator.store_of(geo.settings)  # type: ignore[attr-defined,no-any-return]


def _known_keys(
    geo: Geo, tracking: Connection, replicators: list[type[Replicator]], keys: list[str]
) -> set[str]:
    """The `keys` some registry row of `replicators` names as its copy."""
    if not keys:
        return set()
    known: set[str] = set()
    for replicator in replicators:
        c = Registry(geo, replicator).table.c
        query = select(c.local_path).where(c.local_path.in_(keys))
        known.update(str(path) for path in tracking.execute(query).scalars())
    return known


def _unwritten_rows(
    geo: Geo, tracking: Connection, replicators: list[type[Replicator]]
) -> dict[type[Replicator], list[int]] | None:
    """Per type, the rows without a `local_path` (never synced); None above `MAX_UNWRITTEN`."""
    found: dict[type[Replicator], list[int]] = {}
    total = 0
    for replicator in replicators:
        registry = Registry(geo, replicator)
        query = (
            select(registry.key)
            .where(registry.table.c.local_path.is_(None))
            .limit(MAX_UNWRITTEN + 1 - total)
        )
        found[replicator] = [int(i) for i in tracking.execute(query).scalars()]
        total += len(found[replicator])
        if total > MAX_UNWRITTEN:
            return None
    return found


def _pending_paths(geo: Geo, unwritten: dict[type[Replicator], list[int]]) -> set[str]:
    """Where the records of never-synced rows would be written (their `blob_path`s)."""
    from geosync.records import load_records

    paths: set[str] = set()
    with geo.main_reads() as main:
        for replicator, ids in unwritten.items():
            for record in load_records(main, replicator.model, ids).values():
                try:
                    paths.add(replicator(record, geo=geo).local_path())
                except GeoError:  # an unsafe path names no object of the storage
                    continue
    return paths


def _remove_if_old(geo: Geo, store: BlobStore, key: str) -> bool:
    try:
        if geo.clock.now() - store.modified_at(key) < ORPHAN_GRACE:
            return False
        return store.remove(key)
    except FileNotFoundError:
        return False
