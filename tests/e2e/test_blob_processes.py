"""Blob replication with both sites as real processes on 127.0.0.1 (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from geosync.attempts import SITE_UNREACHABLE
from geosync.db.tables import geo_sync_attempts
from geosync.demo.models import PackageFile, Upload
from geosync.demo.replicators import PackageFileReplicator, UploadReplicator
from geosync.nodes import NodeStore
from geosync.registry import Registry
from geosync.secondary.reachability import PRIMARY, stored_states
from geosync.settings import Settings
from geosync.states import SyncState
from geosync.testing.servers import serve_in_thread
from geosync.testing.workers import wait_for
from tests.e2e.conftest import ProcessSites

pytestmark = pytest.mark.slow


def make_upload(sites: ProcessSites, name: str, data: bytes) -> int:
    """A file on the primary and its row (which publishes `created`)."""
    primary = sites.pair.primary
    path = primary.settings.blob_storage("uploads") / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    with primary.session() as session:
        upload = Upload(path=name, namespace_id=1, size=len(data))
        session.add(upload)
        session.commit()
        return upload.id


def states(sites: ProcessSites) -> dict[int, int]:
    registry = Registry(sites.pair.secondary, UploadReplicator)
    with sites.pair.secondary.tracking_engine.connect() as conn:
        return {
            int(k): int(s) for k, s in conn.execute(select(registry.key, registry.table.c.state))
        }


def synced(sites: ProcessSites, ids: list[int]) -> bool:
    current = states(sites)
    return all(current.get(i) == SyncState.SYNCED for i in ids)


def secondary_copy(sites: ProcessSites, name: str) -> Path:
    return sites.pair.secondary.settings.blob_storage("uploads") / name


def test_blobs_created_updated_and_deleted_reach_the_secondary(
    process_sites: ProcessSites,
) -> None:
    sites = process_sites
    sites.primary.start("serve")
    sites.primary.start("worker")
    sites.secondary.start("worker")
    contents = {f"{n % 7}/{n}.bin": os.urandom(n * 331 % 40_000) for n in range(200)}
    ids = {make_upload(sites, name, data): name for name, data in contents.items()}
    wait_for(lambda: synced(sites, list(ids)), timeout=120, what="200 uploads synced")
    for name, data in contents.items():
        assert secondary_copy(sites, name).read_bytes() == data

    doomed = list(ids)[:20]
    with sites.pair.primary.session() as session:
        for upload_id in doomed:
            session.delete(session.get(Upload, upload_id))
        session.commit()
    wait_for(lambda: not set(doomed) & set(states(sites)), timeout=60, what="deletes applied")
    assert all(not secondary_copy(sites, ids[i]).exists() for i in doomed)

    with sites.pair.primary.session() as session:
        package = PackageFile(file_name="p.tgz", namespace_id=2, size=0)
        session.add(package)
        session.flush()
        replicator = PackageFileReplicator(package)
        replicator.file_path().parent.mkdir(parents=True, exist_ok=True)
        replicator.file_path().write_bytes(b"first")
        session.commit()
        primary_file, relative, package_id = (
            replicator.file_path(),
            replicator.blob_path(),
            package.id,
        )
    copy = sites.pair.secondary.settings.blob_storage("packages") / relative
    wait_for(lambda: copy.is_file() and copy.read_bytes() == b"first", timeout=60, what="v1")
    primary_file.write_bytes(b"second, rewritten")
    with sites.pair.primary.session() as session:
        record = session.get(PackageFile, package_id)
        assert record is not None
        record.replicator.handle_after_update()
        session.commit()
    wait_for(lambda: copy.read_bytes() == b"second, rewritten", timeout=60, what="v2")
    assert sites.secondary.stop("worker") == 0


def test_primary_outage_defers_syncs_then_everything_syncs_without_retries(
    process_sites: ProcessSites,
) -> None:
    sites = process_sites
    sites.secondary.start("worker")
    ids = [make_upload(sites, f"outage/{n}.bin", os.urandom(1000 + n)) for n in range(20)]
    registry = Registry(sites.pair.secondary, UploadReplicator)

    def primary_unreachable() -> bool:
        state = stored_states(sites.pair.secondary).get(PRIMARY)
        return state is not None and not state.reachable

    # A primary that does not answer is the site's fault, not the items': the worker marks it
    # unreachable and defers the syncs instead of failing them.
    wait_for(primary_unreachable, timeout=60, what="the primary marked unreachable")
    with sites.pair.secondary.tracking_engine.connect() as conn:
        rows = [registry.get(conn, i) for i in ids]
    assert not [r for r in rows if r is not None and r.sync_state is SyncState.FAILED]
    sites.primary.start("serve")
    wait_for(lambda: synced(sites, ids), timeout=90, what="sync after the primary returned")
    outcomes = {i: [outcome for outcome, _message in a] for i, a in attempts_of(sites, ids).items()}
    assert any(SITE_UNREACHABLE in o for o in outcomes.values()), outcomes
    assert all(o[0] == "synced" and "failed" not in o for o in outcomes.values()), outcomes
    assert not primary_unreachable()


class SlowProxy:
    """An injected fault: forwards to the primary but trickles response bodies."""

    def __init__(self, target: str, bytes_per_second: int) -> None:
        self.target = target.rstrip("/")
        self.rate = bytes_per_second
        #: Body bytes passed on so far, over all requests.
        self.relayed = 0

    async def handle(self, request: Request) -> Response:
        client = httpx.AsyncClient()
        upstream = await client.send(
            client.build_request(
                request.method,
                self.target + request.url.path,
                headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
            ),
            stream=True,
        )

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_bytes(64 * 1024):
                    yield chunk
                    self.relayed += len(chunk)
                    if self.rate:
                        await asyncio.sleep(len(chunk) / self.rate)
            finally:
                await upstream.aclose()
                await client.aclose()

        headers = {k: v for k, v in upstream.headers.items() if k.lower() != "content-length"}
        return StreamingResponse(body(), status_code=upstream.status_code, headers=headers)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.handle, methods=["GET"])])


@contextmanager
def primary_behind(sites: ProcessSites, url: str) -> Iterator[None]:
    """Point the primary's internal URL at `url` for the block."""
    with sites.pair.primary.main() as conn:
        NodeStore(sites.pair.primary, conn).update(sites.pair.primary_node.id, internal_url=url)
    try:
        yield
    finally:
        with sites.pair.primary.main() as conn:
            NodeStore(sites.pair.primary, conn).update(
                sites.pair.primary_node.id, internal_url=None
            )


def test_worker_killed_mid_download_leaves_no_partial_file_and_recovers(
    process_sites: ProcessSites,
) -> None:
    sites = process_sites
    sites.primary.start("serve")
    data = os.urandom(4 * 1024 * 1024)
    proxy = SlowProxy(sites.primary.url, bytes_per_second=512 * 1024)
    with serve_in_thread(proxy.app()) as proxy_url, primary_behind(sites, proxy_url):
        upload_id = make_upload(sites, "big/blob.bin", data)
        worker = sites.secondary.start("worker")
        directory = secondary_copy(sites, "big/blob.bin").parent
        wait_for(lambda: proxy.relayed >= len(data) // 8, timeout=60, what="a download in progress")
        os.kill(worker.pid, signal.SIGKILL)
        sites.secondary.stop("worker")
        assert not secondary_copy(sites, "big/blob.bin").exists()
        assert states(sites)[upload_id] == SyncState.STARTED
    # The proxy is gone and the primary is reachable directly again.
    sites.secondary.start("worker")
    wait_for(lambda: synced(sites, [upload_id]), timeout=90, what="recovery after SIGKILL")
    assert secondary_copy(sites, "big/blob.bin").read_bytes() == data
    # The killed download's temp file had no name: nothing of it is left.
    assert sorted(p.name for p in directory.iterdir()) == ["blob.bin"]


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_two_workers_on_one_tracking_database_sync_each_row_once(
    process_sites: ProcessSites,
) -> None:
    sites = process_sites
    sites.primary.start("serve")
    ids = [make_upload(sites, f"pair/{n}.bin", os.urandom(2000)) for n in range(300)]
    sites.secondary.start("worker")
    sites.secondary.start("worker2")
    wait_for(lambda: synced(sites, ids), timeout=120, what="300 uploads synced by two workers")
    t = geo_sync_attempts
    with sites.pair.secondary.tracking_engine.connect() as conn:
        per_item: dict[int, int] = dict(
            conn.execute(
                select(t.c.model_record_id, func.count())
                .where(t.c.replicable_name == "upload", t.c.kind == "sync", t.c.outcome == "synced")
                .group_by(t.c.model_record_id)
            ).all()
        )
    assert set(per_item) == set(ids)
    assert set(per_item.values()) == {1}


def held_rows(sites: ProcessSites) -> dict[int, str]:
    """The started upload rows and the worker holding each."""
    registry = Registry(sites.pair.secondary, UploadReplicator)
    c = registry.table.c
    with sites.pair.secondary.tracking_engine.connect() as conn:
        found = conn.execute(
            select(registry.key, c.claimed_by).where(c.state == SyncState.STARTED)
        ).all()
    return {int(key): str(holder) for key, holder in found}


def attempts_of(sites: ProcessSites, ids: list[int]) -> dict[int, list[tuple[str, str | None]]]:
    """The sync attempts of `ids`, newest first: outcome and message."""
    t = geo_sync_attempts
    found: dict[int, list[tuple[str, str | None]]] = {i: [] for i in ids}
    with sites.pair.secondary.tracking_engine.connect() as conn:
        for key, outcome, message in conn.execute(
            select(t.c.model_record_id, t.c.outcome, t.c.message)
            .where(t.c.replicable_name == "upload", t.c.kind == "sync")
            .where(t.c.model_record_id.in_(ids))
            .order_by(t.c.id.desc())
        ):
            found[int(key)].append((outcome, message))
    return found


def test_a_worker_started_after_a_sigkill_takes_the_dead_workers_rows_over_at_once(
    process_sites: ProcessSites,
) -> None:
    sites = process_sites
    config = sites.secondary.config
    settings = Settings.load(config).model_copy(update={"lease_seconds": 60.0})
    config.write_text(settings.to_toml(), encoding="utf-8")  # a lapse would take a minute
    sites.primary.start("serve")
    contents = {f"takeover/{n}.bin": os.urandom(1536 * 1024) for n in range(12)}
    ids = [make_upload(sites, name, data) for name, data in contents.items()]
    proxy = SlowProxy(sites.primary.url, bytes_per_second=256 * 1024)
    with serve_in_thread(proxy.app()) as proxy_url, primary_behind(sites, proxy_url):
        worker = sites.secondary.start("worker")
        wait_for(lambda: proxy.relayed > 0 and bool(held_rows(sites)), timeout=60, what="syncs")
        os.kill(worker.pid, signal.SIGKILL)
        sites.secondary.stop("worker")
        dead = held_rows(sites)
    (holder,) = set(dead.values())
    sites.secondary.start("worker")

    def taken_over() -> bool:
        attempts = attempts_of(sites, list(dead))
        return all(any(o == "interrupted" for o, _ in a) for a in attempts.values())

    # Well before the dead worker's 60 s lease lapses: its process is known to be gone.
    wait_for(taken_over, timeout=30, what="the dead worker's rows taken over")
    wait_for(lambda: synced(sites, ids), timeout=120, what="every upload synced")
    for name, data in contents.items():
        assert secondary_copy(sites, name).read_bytes() == data
    message = f"Sync interrupted: the worker running it stopped ({holder}: its process is gone)"
    for attempts in attempts_of(sites, list(dead)).values():
        assert attempts == [("synced", None), ("interrupted", message)]
    registry = Registry(sites.pair.secondary, UploadReplicator)
    with sites.pair.secondary.tracking_engine.connect() as conn:
        rows = [registry.require(conn, i) for i in dead]
    assert all(r.claimed_by not in (None, holder) and r.retry_count == 0 for r in rows)
