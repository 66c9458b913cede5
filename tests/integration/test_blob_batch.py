"""Many small blobs per request: the primary's batch answer and the secondary's batch syncs."""

from __future__ import annotations

import json
import os
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from geosync.attempts import recent_attempts
from geosync.auth import BLOB_TOKEN_TTL, node_header
from geosync.demo.models import Upload
from geosync.demo.replicators import UploadReplicator
from geosync.errors import Interrupted
from geosync.registry import Registry
from geosync.secondary.batch_sync import BatchSync
from geosync.secondary.blob_client import BlobClient
from geosync.secondary.partial_file import DIRECT_MIN
from geosync.secondary.reachability import PRIMARY, reachability_of
from geosync.secondary.settlement import Settler
from geosync.secondary.sync import SyncService, prefetch
from geosync.secondary.transfer import write_blob
from geosync.states import SyncState, VerificationState
from geosync.testing import SitePair
from geosync.testing.workers import checksum_on_primary
from geosync.wire import INLINE_LIMIT, MAX_BATCH_IDS, batch_path

LARGE = INLINE_LIMIT + 12_345


def add_upload(sites: SitePair, name: str, content: bytes | None) -> int:
    """An Upload row on the primary, with its file unless `content` is None."""
    if content is not None:
        path = sites.primary.settings.blob_storage("uploads") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    with sites.primary.session() as session:
        upload = Upload(path=name, namespace_id=1, size=len(content or b""))
        session.add(upload)
        session.commit()
        return int(upload.id)


def frames(body: bytes) -> list[tuple[dict[str, object], bytes]]:
    """Split a batch body into (header, content) pairs."""
    found = []
    while body:
        (length,) = struct.unpack(">I", body[:4])
        header = json.loads(body[4 : 4 + length])
        size = header.get("size", 0) if header["status"] == "ok" else 0
        found.append((header, body[4 + length : 4 + length + size]))
        body = body[4 + length + size :]
    return found


def get(sites: SitePair, base: str, path: str, signed: str | None = None) -> httpx.Response:
    """GET `path`, signed by the secondary for `signed` (default: the path itself)."""
    header = node_header(sites.secondary, signed or path, BLOB_TOKEN_TTL)
    return httpx.get(base.rstrip("/") + path, headers={"Authorization": header}, timeout=30)


def test_the_primary_answers_each_id_in_order(live_sites: SitePair) -> None:
    sites = live_sites
    small, empty = os.urandom(70_000), b""
    ok = add_upload(sites, "b/ok.bin", small)
    blank = add_upload(sites, "b/empty.bin", empty)
    lost = add_upload(sites, "b/lost.bin", None)
    large = add_upload(sites, "b/large.bin", os.urandom(LARGE))
    gone = large + 1000
    with sites.primary_served() as base:
        response = get(sites, base, batch_path("upload", [large, ok, gone, lost, blank]))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/vnd.geosync.blob-batch")
    got = frames(response.content)
    assert [(h["id"], h["status"]) for h, _ in got] == [
        (large, "separate"),
        (ok, "ok"),
        (gone, "not_found"),
        (lost, "file_not_found"),
        (blank, "ok"),
    ]
    assert got[0][0]["size"] == LARGE and got[0][1] == b""
    assert got[1] == ({"id": ok, "status": "ok", "size": len(small)}, small)
    assert got[4][1] == b""


def test_a_batch_in_one_piece_is_sized_and_a_longer_one_streamed(live_sites: SitePair) -> None:
    sites = live_sites
    contents = [os.urandom(INLINE_LIMIT - 1000) for _ in range(3)]  # together > one piece
    ids = [add_upload(sites, f"p/{i}.bin", content) for i, content in enumerate(contents)]
    with sites.primary_served() as base:
        one = get(sites, base, batch_path("upload", ids[:1]))
        many = get(sites, base, batch_path("upload", ids))
    assert one.headers["content-length"] == str(len(one.content))
    assert "transfer-encoding" not in one.headers
    assert frames(one.content) == [
        ({"id": ids[0], "status": "ok", "size": len(contents[0])}, contents[0])
    ]
    assert many.headers.get("transfer-encoding") == "chunked"
    assert [(h["id"], body) for h, body in frames(many.content)] == list(
        zip(ids, contents, strict=True)
    )


def test_a_batch_token_is_good_for_exactly_its_ids(live_sites: SitePair) -> None:
    sites = live_sites
    secret = os.urandom(1000)
    first = add_upload(sites, "s/1.bin", secret)
    second = add_upload(sites, "s/2.bin", secret)
    with sites.primary_served() as base:
        other = get(
            sites, base, batch_path("upload", [first, second]), signed=batch_path("upload", [first])
        )
        bare = httpx.get(base.rstrip("/") + batch_path("upload", [first]), timeout=30)
    for response in (other, bare):
        assert response.status_code == 401
        assert "message" in response.json()
        assert secret not in response.content


@pytest.mark.parametrize(
    "ids",
    ["", "1,x", "1,1", "0", ",".join(str(i) for i in range(1, MAX_BATCH_IDS + 2))],
)
def test_bad_id_lists_are_clear_errors(live_sites: SitePair, ids: str) -> None:
    path = f"/api/v4/geo/retrieve/upload?ids={ids}"
    with live_sites.primary_served() as base:
        response = get(live_sites, base, path)
    assert 400 <= response.status_code < 500
    assert "ids" in response.json()["message"]


def claimed_services(
    sites: SitePair, ids: list[int], settler: Settler | None, *, read_now: bool = True
) -> list[SyncService]:
    """Claim the rows of `ids` and make their syncs. With `read_now`, their records are read
    at once (a replica that lags: the batch then sees them even if the primary has deleted
    them since); without, the batch reads them itself, as under the scheduler."""
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, ids)
        claims = registry.claim(conn, len(ids), "test")
    records = prefetch(sites.secondary, UploadReplicator, ids) if read_now else {}
    client = BlobClient()
    return [
        SyncService(
            sites.secondary,
            UploadReplicator,
            i,
            started,
            client,
            None,
            None,
            settler,
            records.get(i),
        )
        for i, started in claims
    ]


@pytest.mark.parametrize("grouped", [True, False], ids=["settler", "direct"])
def test_a_batch_settles_every_item_as_its_own_sync(live_sites: SitePair, grouped: bool) -> None:
    sites = live_sites
    contents = {f"c/{n}.bin": os.urandom(1000 + n) for n in range(3)}
    ids = {add_upload(sites, name, data): name for name, data in contents.items()}
    changed = add_upload(sites, "c/changed.bin", b"original")
    large_data = os.urandom(LARGE)
    large = add_upload(sites, "c/large.bin", large_data)
    lost = add_upload(sites, "c/lost.bin", None)
    checksum_on_primary(sites)
    (sites.primary.settings.blob_storage("uploads") / "c/changed.bin").write_bytes(b"tampered")
    gone = add_upload(sites, "c/gone.bin", b"x")  # deleted on the primary after the claim
    every = [*ids, changed, large, lost, gone]
    settler = Settler(sites.secondary) if grouped else None
    services = claimed_services(sites, every, settler)
    with sites.primary.session() as session:
        session.delete(session.get(Upload, gone))
        session.commit()
    # As the scheduler runs it: a settler and a pool writing files; or each alone, inline.
    writers = ThreadPoolExecutor(2) if grouped else None
    with sites.primary_served():
        done = BatchSync(services, BlobClient(), None, writers).execute()
    if writers is not None:
        writers.shutdown()
    storage = sites.secondary.settings.blob_storage("uploads")
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        rows = {i: registry.require(conn, i) for i in every}
        attempts = {i: recent_attempts(conn, "upload", i) for i in every}
    assert done == len(ids) + 1
    for record_id, name in ids.items():
        assert (storage / name).read_bytes() == contents[name]
        assert rows[record_id].sync_state is SyncState.SYNCED
        assert rows[record_id].verification is VerificationState.SUCCEEDED
    assert (storage / "c/large.bin").read_bytes() == large_data
    assert rows[large].sync_state is SyncState.SYNCED
    assert rows[changed].sync_state is SyncState.FAILED
    assert "checksum mismatch" in rows[changed].last_sync_failure
    assert not (storage / "c/changed.bin").exists()
    assert rows[lost].sync_state is SyncState.FAILED and rows[lost].missing_on_primary
    assert rows[gone].sync_state is SyncState.FAILED
    assert "does not know this record" in rows[gone].last_sync_failure
    outcomes = {i: a[0].outcome for i, a in attempts.items()}
    assert outcomes == {
        **dict.fromkeys([*ids, large], "synced"),
        **dict.fromkeys([changed, lost, gone], "failed"),
    }
    assert attempts[changed][0].error_class == "checksum_mismatch"
    assert list(storage.rglob("tmp_*")) == []


def test_a_batch_reads_its_records_itself_and_drops_the_frames_it_has_no_use_for(
    live_sites: SitePair,
) -> None:
    sites = live_sites
    contents = {f"r/{n}.bin": os.urandom(2000 + n) for n in range(3)}
    ids = {add_upload(sites, name, data): name for name, data in contents.items()}
    kept, gone, *fresh = ids
    checksum_on_primary(sites)
    storage = sites.secondary.settings.blob_storage("uploads")
    (storage / "r").mkdir(parents=True)
    (storage / ids[kept]).write_bytes(contents[ids[kept]])  # restored from a backup
    inode = (storage / ids[kept]).stat().st_ino
    services = claimed_services(sites, list(ids), Settler(sites.secondary), read_now=False)
    with sites.primary.session() as session:
        session.delete(session.get(Upload, gone))
        session.commit()
    with sites.primary_served():
        done = BatchSync(services, BlobClient(), None).execute()
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        rows = {i: registry.require(conn, i) for i in ids}
    assert done == 2
    assert rows[kept].sync_state is SyncState.SYNCED
    assert (storage / ids[kept]).stat().st_ino == inode  # taken as it was, not downloaded again
    assert rows[gone].sync_state is SyncState.FAILED
    assert "no longer exists" in rows[gone].last_sync_failure
    for record_id in fresh:
        assert rows[record_id].sync_state is SyncState.SYNCED
        assert (storage / ids[record_id]).read_bytes() == contents[ids[record_id]]


def test_a_batch_hands_large_items_back_and_settles_the_rest_at_once(
    live_sites: SitePair,
) -> None:
    """Under the scheduler, a large item is its own sync: the small ones never wait for it."""
    sites = live_sites
    small = {add_upload(sites, f"h/{n}.bin", os.urandom(2000 + n)) for n in range(2)}
    large_data = os.urandom(DIRECT_MIN + 12_345)  # its own sync writes past the page cache
    large = add_upload(sites, "h/large.bin", large_data)
    services = claimed_services(sites, [*small, large], Settler(sites.secondary))
    handed: list[SyncService] = []
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.primary_served():
        done = BatchSync(services, BlobClient(), None, hand_off=handed.append).execute()
        with sites.secondary.tracking() as conn:
            before = {i: registry.require(conn, i).sync_state for i in [*small, large]}
        assert [s.model_record_id for s in handed] == [large]
        assert handed[0].execute()
    assert done == len(small)
    assert before == {**dict.fromkeys(small, SyncState.SYNCED), large: SyncState.STARTED}
    with sites.secondary.tracking() as conn:
        assert registry.require(conn, large).sync_state is SyncState.SYNCED
    storage = sites.secondary.settings.blob_storage("uploads")
    assert (storage / "h/large.bin").read_bytes() == large_data


def test_batches_share_one_kept_alive_connection(live_sites: SitePair) -> None:
    """A batch reads its answer to the end, so the next batch needs no new connection."""
    sites = live_sites
    ids = [add_upload(sites, f"k/{n}.bin", os.urandom(3000 + n)) for n in range(6)]
    client = BlobClient()
    with sites.primary_served():
        for half in (ids[:3], ids[3:]):
            services = claimed_services(sites, half, Settler(sites.secondary))
            assert BatchSync(services, client, None).execute() == len(half)
    client.close()
    assert client.opened == 1
    storage = sites.secondary.settings.blob_storage("uploads")
    assert len(list(storage.rglob("k/*.bin"))) == len(ids)


def test_a_batch_says_once_when_its_rows_are_written(live_sites: SitePair) -> None:
    """The scheduler may claim again as soon as the rows no longer hold capacity."""
    sites = live_sites
    ids = [add_upload(sites, f"w/{n}.bin", os.urandom(2000 + n)) for n in range(3)]
    registry = Registry(sites.secondary, UploadReplicator)
    seen: list[set[SyncState]] = []

    def on_settled() -> None:
        with sites.secondary.tracking() as conn:
            seen.append({registry.require(conn, i).sync_state for i in ids})

    services = claimed_services(sites, ids, Settler(sites.secondary))
    with sites.primary_served():
        done = BatchSync(services, BlobClient(), None, on_settled=on_settled).execute()
    assert done == len(ids)
    assert seen == [{SyncState.SYNCED}]


def test_a_batch_to_a_stopped_primary_defers_every_item_without_a_retry(
    live_sites: SitePair,
) -> None:
    sites = live_sites
    ids = [add_upload(sites, f"d/{n}.bin", b"data") for n in range(3)]
    with sites.primary_served():
        services = claimed_services(sites, ids, None)
    assert BatchSync(services, BlobClient(), None).execute() == 0
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        rows = [registry.require(conn, i) for i in ids]
    # The whole site is away (a probe says so): the items are queued again, no retry counted.
    assert all(r.sync_state is SyncState.PENDING and r.retry_count == 0 for r in rows)
    assert all(r.retry_at is None for r in rows)
    assert all("Connection to the primary failed" in r.last_sync_failure for r in rows)
    assert all("the primary is unreachable" in r.last_sync_failure for r in rows)
    states = reachability_of(sites.secondary).states()
    assert not states[PRIMARY].reachable and states[PRIMARY].next_probe_at is not None
    assert not list(sites.secondary.settings.blob_storage("uploads").rglob("*.bin"))


def test_files_written_by_a_batch_are_never_partial(tmp_path: Path) -> None:
    dest = tmp_path / "x" / "file.bin"
    stop = threading.Event()

    def chunks() -> Iterator[bytes]:
        yield b"a" * 10
        stop.set()
        yield b"b" * 10

    with pytest.raises(Interrupted):
        write_blob(dest, chunks(), cancel=stop)
    assert not dest.exists() and list(dest.parent.iterdir()) == []
