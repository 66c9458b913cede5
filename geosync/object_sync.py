"""`sync_object_storage`: which blob types a secondary leaves to the object store's replication.

As in GitLab, a secondary whose node has `sync_object_storage` off does not copy blobs that the
primary keeps in an object store: the store's own replication (bucket replication, a replicated
MinIO or Ceph cluster) is trusted to bring them. Such blobs are neither synced nor failures: the
log cursor and the consistency sweep create no registry rows for them and remove none (the copy
in a replicated bucket is not this secondary's to delete), the scheduler and the verification
leave existing rows alone, and status counts them as `<type>_left_to_object_storage_count`.

Which of the primary's blob storages are object stores, the secondary reads from the primary's
own stored status (`object_storages`, comma-separated, in `geo_node_statuses`, which reaches a
secondary through database replication like every primary-side table). Until the primary has
stored a status the answer is unknown, and the secondary copies the blobs as it would with the
setting on: a copy too many is never wrong, a blob wrongly left is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Connection, func, select

from geosync.db.tables import geo_node_statuses, geo_nodes
from geosync.settings import ObjectStorage

if TYPE_CHECKING:
    from geosync.nodes import Node
    from geosync.replicator import Replicator
    from geosync.settings import Settings


def object_storage_names(settings: Settings) -> list[str]:
    """The names of this site's blob storages that are object stores, sorted (its status's
    `object_storages` field)."""
    return sorted(
        name for name, entry in settings.blob_storages.items() if isinstance(entry, ObjectStorage)
    )


def primary_object_storages(main: Connection) -> frozenset[str] | None:
    """The primary's object-store blob storages, from its stored status; None when unknown
    (no primary, or it has not stored a status yet)."""
    query = (
        select(geo_node_statuses.c.status)
        .join(geo_nodes, geo_nodes.c.id == geo_node_statuses.c.geo_node_id)
        .where(geo_nodes.c.primary.is_(True))
    )
    status = main.execute(query).scalar_one_or_none()
    names = status.get("object_storages") if isinstance(status, dict) else None
    if not isinstance(names, str):
        return None
    return frozenset(name for name in names.split(",") if name)


def left_to_store(
    node: Node, replicator: type[Replicator], primary_storages: frozenset[str] | None
) -> bool:
    """Whether `node` leaves `replicator`'s blobs to the object store's own replication: a
    secondary with `sync_object_storage` off, and a blob type whose storage is an object store
    on the primary."""
    if node.primary or node.sync_object_storage or primary_storages is None:
        return False
    storage = getattr(replicator, "storage", None)
    return replicator.strategy == "blob" and storage in primary_storages


def left_to_store_now(main: Connection, node: Node, replicator: type[Replicator]) -> bool:
    """`left_to_store`, reading the primary's storages through `main`."""
    if node.primary or node.sync_object_storage or replicator.strategy != "blob":
        return False
    return left_to_store(node, replicator, primary_object_storages(main))


def left_count(main: Connection, node: Node, replicator: type[Replicator]) -> int:
    """How many of the primary's replicables of `replicator` in `node`'s scope are left to the
    object store (0 when the type is not left to it)."""
    from geosync.scope import scoped_query

    if not left_to_store_now(main, node, replicator):
        return 0
    query = scoped_query(replicator, node).subquery()
    return int(main.execute(select(func.count()).select_from(query)).scalar_one())
