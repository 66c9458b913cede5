"""Helpers for verification tests: demo records with real files, registries in given states."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sqlalchemy import select

from geosync.app import Geo
from geosync.demo.models import PackageFile, Snippet, Upload
from geosync.demo.replicators import PackageFileReplicator, UploadReplicator
from geosync.registry import Registry, SyncClaim
from geosync.replicator import Replicator
from geosync.verification import Verifiable, primary_verifiable, registry_verifiable

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def sha256(content: bytes) -> str:
    """SHA-256 hex of `content`."""
    return hashlib.sha256(content).hexdigest()


def upload_file(geo: Geo, record_id: int) -> Path:
    """Where upload `record_id`'s file lives on site `geo`."""
    return geo.settings.blob_storage("uploads") / f"u/{record_id}.bin"


def add_upload(geo: Geo, content: bytes | None, namespace_id: int = 1) -> int:
    """Create an upload through the ORM (hooks run) and write its file on the primary."""
    with geo.session() as session:
        record = Upload(path="pending", namespace_id=namespace_id, size=len(content or b""))
        session.add(record)
        session.flush()
        record.path = f"u/{record.id}.bin"
        session.commit()
        record_id = int(record.id)
    if content is not None:
        write(upload_file(geo, record_id), content)
    return record_id


def add_package_file(geo: Geo, content: bytes, namespace_id: int = 1) -> int:
    """Create a package file (verification columns on its own table) and write its file."""
    with geo.session() as session:
        record = PackageFile(file_name="pkg.tgz", namespace_id=namespace_id, size=len(content))
        session.add(record)
        session.commit()
        record_id = int(record.id)
    write(package_file_path(geo, record_id, namespace_id), content)
    return record_id


def package_file_path(geo: Geo, record_id: int, namespace_id: int = 1) -> Path:
    """Where package file `record_id` lives on site `geo`."""
    return geo.settings.blob_storage("packages") / f"{namespace_id}/{record_id}/pkg.tgz"


def add_snippet(geo: Geo, namespace_id: int = 1) -> int:
    """Create a snippet record (its repository is up to the test)."""
    with geo.session() as session:
        record = Snippet(title="s", namespace_id=namespace_id)
        session.add(record)
        session.commit()
        return int(record.id)


def write(path: Path, content: bytes) -> None:
    """Write a file, creating its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def state_of(geo: Geo, replicator: type[Replicator], record_id: int) -> dict[str, Any] | None:
    """The primary's verification row of one record."""
    with geo.main_engine.connect() as conn:
        return primary_verifiable(geo, replicator).get(conn, record_id)


def primary_states(geo: Geo) -> Verifiable:
    """The uploads' primary verification state (the `upload_states` table)."""
    return primary_verifiable(geo, UploadReplicator)


def package_states(geo: Geo) -> Verifiable:
    """The package files' primary verification state (columns on `package_files`)."""
    return primary_verifiable(geo, PackageFileReplicator)


def registry_row(geo: Geo, replicator: type[Replicator], record_id: int) -> dict[str, Any]:
    """A secondary's registry row, as a dict."""
    with geo.tracking_engine.connect() as conn:
        row = registry_verifiable(geo, replicator).get(conn, record_id)
    assert row is not None
    return row


def make_synced(
    geo: Geo, replicator: type[Replicator], record_id: int, verification: int = 0
) -> SyncClaim:
    """Put a registry row through pending → started → synced with `verification` state."""
    from geosync.states import VerificationState

    registry = Registry(geo, replicator)
    with geo.tracking() as conn:
        registry.ensure_pending(conn, record_id)
        started = registry.start(conn, record_id)
        assert registry.synced(
            conn, record_id, started, verification=VerificationState(verification)
        )
    return started


def event_names(geo: Geo) -> list[tuple[str, str, int]]:
    """Every event in the primary's log: (replicable, event, record id)."""
    from geosync.db.tables import geo_events

    with geo.main_engine.connect() as conn:
        rows = conn.execute(select(geo_events).order_by(geo_events.c.id)).all()
    return [(r.replicable_name, r.event_name, r.payload["model_record_id"]) for r in rows]
