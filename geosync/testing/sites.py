"""A primary and a secondary site on one machine, as tests and the demo need them."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Table

from geosync.app import Geo
from geosync.clock import Clock
from geosync.db.schema import upgrade
from geosync.nodes import Node, NodeStore
from geosync.replicator import Replicator
from geosync.settings import Settings
from geosync.testing.databases import DatabaseFactory


@dataclass
class SitePair:
    """A registered primary and secondary sharing a main database (the secondary read-only)."""

    primary: Geo
    secondary: Geo
    primary_node: Node
    secondary_node: Node
    root: Path

    @contextmanager
    def primary_served(self, wrap: Callable[[Any], Any] | None = None) -> Iterator[str]:
        """Serve the primary's web app on a free loopback port and point its node at it.

        `wrap` takes the ASGI app and returns the one to serve: a test injects faults with it.
        """
        from geosync.testing.servers import serve_in_thread
        from geosync.web.app import create_app

        app = create_app(self.primary)
        with serve_in_thread(wrap(app) if wrap else app) as url:
            with self.primary.main() as conn:
                NodeStore(self.primary, conn).update(self.primary_node.id, url=url)
            yield url

    def dispose(self) -> None:
        """Close both sites' connections."""
        self.secondary.dispose()
        self.primary.dispose()


def site_settings(
    name: str,
    root: Path,
    replicators: Sequence[type[Replicator]],
    main_url: str,
    tracking_url: str | None,
    secret_key_base: str,
    **extra: Any,
) -> Settings:
    """Settings for one site with its own storages under `root/name`; `blob_storages` in
    `extra` replaces some of them (by name: an object store, say)."""
    storages: dict[str, Any] = {
        storage: root / name / "storages" / storage
        for storage in sorted({str(getattr(r, "storage", "")) for r in replicators} - {""})
    }
    storages.update(extra.pop("blob_storages", None) or {})
    for path in storages.values():
        if isinstance(path, Path):
            path.mkdir(parents=True, exist_ok=True)
    repositories = root / name / "repositories"
    repositories.mkdir(parents=True, exist_ok=True)
    return Settings.load(
        node_name=name,
        main_database_url=main_url,
        tracking_database_url=tracking_url,
        blob_storages=storages,
        repository_storage_root=repositories,
        secret_key_base=secret_key_base,
        **extra,
    )


def build_site_pair(
    root: Path,
    replicators: Sequence[type[Replicator]],
    databases: DatabaseFactory,
    *,
    clock: Clock | None = None,
    primary_url: str = "http://127.0.0.1:1/",
    register_secondary: bool = True,
    primary_storages: dict[str, Any] | None = None,
    secondary_storages: dict[str, Any] | None = None,
    secondary_node_settings: dict[str, Any] | None = None,
    **extra: Any,
) -> SitePair:
    """Create, migrate and register a primary and a secondary for `replicators`.

    `primary_storages` and `secondary_storages` replace named blob storages of one site
    (an `ObjectStorage`, say); the others are directories under `root`.
    `secondary_node_settings` are node settings of the secondary's registration
    (`sync_object_storage=True`, say).

    The tables of the replicators' models (and the tables they refer to) are created on the
    shared main database before `geosync db upgrade`'s work, as on a real site.
    """
    secret = secrets.token_urlsafe(32)
    main_url = databases.url("main")
    primary = Geo(
        site_settings(
            "primary",
            root,
            replicators,
            main_url,
            None,
            secret,
            blob_storages=primary_storages,
            **extra,
        ),
        list(replicators),
        clock=clock,
    )
    # The application's tables first, as its migrations would: each model's table and the
    # tables it refers to (users, projects), so that its foreign keys can be created.
    for replicator in primary.catalog:
        table = replicator.model.__table__
        table.metadata.create_all(primary.main_engine, tables=_with_referred(table))
    upgrade(primary)
    with primary.main() as conn:
        store = NodeStore(primary, conn)
        primary_node = store.add("primary", primary_url, primary=True)
        secondary_node = (
            store.add("secondary", "http://127.0.0.1:2/", **(secondary_node_settings or {}))
            if register_secondary
            else primary_node
        )
    secondary = Geo(
        site_settings(
            "secondary",
            root,
            replicators,
            main_url,
            databases.url("tracking"),
            secret,
            blob_storages=secondary_storages,
            **extra,
        ),
        list(replicators),
        clock=clock,
    )
    upgrade(secondary)
    return SitePair(primary, secondary, primary_node, secondary_node, root)


def _with_referred(table: Table) -> list[Table]:
    """`table` and every table its foreign keys refer to, directly or through others."""
    found: dict[str, Table] = {}
    todo = [table]
    while todo:
        current = todo.pop()
        if current.key not in found:
            found[current.key] = current
            todo.extend(key.column.table for key in current.foreign_keys)
    return list(found.values())
