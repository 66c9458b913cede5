"""Throwaway databases for tests: SQLite files, or fresh PostgreSQL databases on a server."""

from __future__ import annotations

import secrets
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


class DatabaseFactory:
    """Hands out database URLs of one backend and drops them all on `cleanup`."""

    def __init__(self, backend: str, root: Path, server_url: str | None = None) -> None:
        if backend not in ("sqlite", "postgres"):
            raise ValueError(f"unknown backend {backend!r}")
        if backend == "postgres" and not server_url:
            raise ValueError("a PostgreSQL server URL is needed")
        self.backend = backend
        self.root = root
        self.server_url = server_url
        self._created: list[str] = []
        self._prefix = f"geosync_t{secrets.token_hex(4)}"

    def url(self, name: str) -> str:
        """A new empty database called `name` (unique within this factory)."""
        if self.backend == "sqlite":
            self.root.mkdir(parents=True, exist_ok=True)
            return f"sqlite:///{self.root / (name + '.db')}"
        assert self.server_url is not None
        database = f"{self._prefix}_{name}"
        admin = create_engine(self.server_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{database}"'))
        admin.dispose()
        self._created.append(database)
        url = make_url(self.server_url).set(database=database, drivername="postgresql+psycopg")
        return url.render_as_string(hide_password=False)

    def cleanup(self) -> None:
        """Drop every PostgreSQL database this factory created."""
        if not self._created:
            return
        assert self.server_url is not None
        admin = create_engine(self.server_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for database in self._created:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()
        self._created.clear()
