"""Registry rows are written only through their transitions: during a real two-site cycle,
every UPDATE and DELETE of a registry table comes from the registry (or, for the verification
columns, from the verification state machine), whoever asked for it."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from sqlalchemy import event

from geosync.demo.models import Upload
from geosync.demo.replicators import UploadReplicator
from geosync.registry import Registry
from geosync.resync import resync_all, resync_one
from geosync.secondary.consistency import ConsistencySweep
from geosync.states import SyncState, VerificationState
from geosync.testing import SitePair
from geosync.testing.workers import primary_worker, secondary_worker, wait_for

WRITE = re.compile(r"^\s*(UPDATE|DELETE\s+FROM)\s+\"?(\w+)\"?", re.IGNORECASE)
SET_COLUMNS = re.compile(r"\bSET\s+(.*?)(?:\bFROM\b|\bWHERE\b|\bRETURNING\b|$)", re.S | re.I)
#: Registry columns the verification state machine may write.
VERIFICATION_COLUMNS = re.compile(r"^(verification_\w+|verified_at|checksum_mismatch)$")


def issuer() -> str:
    """The geosync module that issued the statement being executed: the first geosync frame
    outside geosync.db, walking out from here."""
    frame: FrameType | None = inspect.currentframe()
    while frame is not None:
        name = str(frame.f_globals.get("__name__", ""))
        if name.startswith("geosync.") and not name.startswith("geosync.db"):
            return name
        frame = frame.f_back
    return "<outside geosync>"


@contextmanager
def registry_writes(sites: SitePair) -> Iterator[list[tuple[str, str, str, set[str]]]]:
    """Record (module, verb, table, columns set) of every UPDATE/DELETE on a registry table of
    the secondary's tracking database while the block runs."""
    tables = {table.name for table in sites.secondary.tables.registries.values()}
    seen: list[tuple[str, str, str, set[str]]] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        match = WRITE.match(statement)
        if match is None or match.group(2) not in tables:
            return
        verb = match.group(1).split()[0].upper()
        columns: set[str] = set()
        if verb == "UPDATE" and (assigned := SET_COLUMNS.search(statement)):
            columns = {
                part.split("=")[0].strip().strip('"') for part in assigned.group(1).split(",")
            }
            columns = {c for c in columns if re.fullmatch(r"\w+", c)}
        seen.append((issuer(), verb, match.group(2), columns))

    engine = sites.secondary.tracking_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def add_uploads(sites: SitePair, files: int, missing: int) -> list[int]:
    """`files` uploads with a file on the primary, then `missing` without one."""
    storage = sites.primary.settings.blob_storage("uploads")
    with sites.primary.session() as session:
        records = [Upload(path=f"w/{i}.bin", namespace_id=1) for i in range(files + missing)]
        for record in records[:files]:
            (storage / "w").mkdir(parents=True, exist_ok=True)
            (storage / record.path).write_bytes(f"upload {record.path}".encode())
        session.add_all(records)
        session.commit()
        return [int(r.id) for r in records]


def test_only_the_registry_and_verification_write_registry_rows(live_sites: SitePair) -> None:
    sites = live_sites
    geo = sites.secondary
    registry = Registry(geo, UploadReplicator)

    def rows() -> dict[int, tuple[SyncState, VerificationState]]:
        with geo.tracking_engine.connect() as conn:
            found = registry.newest(conn, 100)
        return {int(r.upload_id): (r.sync_state, r.verification) for r in found}

    synced_verified = (SyncState.SYNCED, VerificationState.SUCCEEDED)
    with registry_writes(sites) as seen:
        with (
            sites.primary_served(),
            primary_worker(sites),
            secondary_worker(sites, verification=True),
        ):
            *present, absent = add_uploads(sites, files=3, missing=1)
            wait_for(
                lambda: (
                    all(rows().get(i) == synced_verified for i in present)
                    and rows().get(absent, (None,))[0] is SyncState.FAILED
                ),
                timeout=60,
                what="uploads synced and verified, the missing one failed",
            )
            resync_one(geo, UploadReplicator, present[0])
            assert sum(resync_all(geo, UploadReplicator, failed_only=False)) >= 1
            wait_for(
                lambda: all(rows().get(i) == synced_verified for i in present),
                timeout=60,
                what="resynced uploads synced and verified again",
            )
            with sites.primary.session() as session:
                session.delete(session.get(Upload, present[-1]))
                session.commit()
            wait_for(lambda: present[-1] not in rows(), timeout=60, what="delete followed")
        with geo.tracking() as conn:
            registry.insert_pending(conn, [99_999])  # a row for a record the primary lacks
            registry.resync(conn, present[0])
            assert [key for key, _ in registry.claim(conn, 1, "a-worker-now-gone")] == [present[0]]
            taken = registry.interrupted_by(conn, "a-worker-now-gone", "Sync interrupted")
            assert [row.model_record_id for row in taken] == [present[0]]
            assert registry.fail_stuck(conn) == 0
        node = geo.current_node()
        assert node is not None
        ConsistencySweep(geo).run_pass(node)
        assert 99_999 not in rows()
    issuers = {(module, verb) for module, verb, _, _ in seen}
    # The cycle went through the transitions it is meant to cover.
    assert {("geosync.registry", "UPDATE"), ("geosync.registry", "DELETE")} <= issuers
    assert ("geosync.verification", "UPDATE") in issuers
    for module, verb, table, columns in seen:
        if module == "geosync.verification" and verb == "UPDATE":
            assert all(VERIFICATION_COLUMNS.match(c) for c in columns), (table, columns)
        else:
            assert module == "geosync.registry", (module, verb, table)
