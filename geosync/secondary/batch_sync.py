"""Syncing several blobs of one replicator with one request (`geosync.wire`'s blob batch).

Each item is still its own sync: its own claim, checksum check, atomic write, registry outcome,
attempt row and log line, exactly as `SyncService` does alone. Only the transfer is shared. An
item the primary sends `separate` (too large to inline) is synced alone: handed back to the
scheduler, which runs it as a sync of its own as soon as the batch's answer is read, or, without
a scheduler, after the batch, a few at a time.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from geosync.auth import BLOB_TOKEN_TTL, node_header
from geosync.errors import (
    PrimaryMissing,
    PrimaryRefused,
    PrimaryUnreachable,
    RecordGone,
    TransferError,
    TransportFailure,
)
from geosync.secondary.blob_client import BlobResponse
from geosync.secondary.settlement import Failure, Settled, Success
from geosync.secondary.sync import SyncService, prefetch_missing
from geosync.secondary.transfer import CHUNK, check_response, sync_directory, write_blob
from geosync.wire import FILE_NOT_FOUND, HEADER, MAX_HEADER, batch_path

if TYPE_CHECKING:
    from geosync.secondary.blob_client import BlobClient


#: Files too large for a batch are downloaded this many at a time.
LARGE_AT_ONCE = 4


@dataclass
class _Item:
    """One blob of the batch: its sync, where it goes and what the primary says it is."""

    service: SyncService
    dest: Path
    relative: str
    expected: str | None


class BatchSync:
    """Runs the syncs of `services` (all blobs of one replicator) over one batch request."""

    def __init__(
        self,
        services: list[SyncService],
        client: BlobClient,
        cancel: threading.Event | None,
        writers: ThreadPoolExecutor | None = None,
        hand_off: Callable[[SyncService], None] | None = None,
        on_settled: Callable[[], None] | None = None,
    ) -> None:
        self.services = services
        self.client = client
        self.cancel = cancel
        #: Files are written (created, fsynced, renamed) here while the next ones arrive.
        self.writers = writers
        #: Takes each `separate` item to run as its own sync; the batch then neither waits for
        #: it nor settles it. Without it the batch syncs those items itself, after the others.
        self.hand_off = hand_off
        #: Called once every row is written, before the log lines and metrics: the rows no
        #: longer hold capacity, so the next claim need not wait for the rest.
        self.on_settled = on_settled
        #: Each item's outcome so far, by model id.
        self._results: dict[int, Success | BaseException] = {}
        #: The items whose frames are to be written (None until planned).
        self._wanted: dict[int, _Item] | None = None
        #: Items handed back to run alone.
        self._handed: set[int] = set()

    def execute(self) -> int:
        """Run every sync; returns how many rows ended synced."""
        clock_start = time.monotonic()
        interrupted: BaseException | None = None
        try:
            self._transfer()
        except BaseException as exc:  # every row still gets its outcome written
            for service in self.services:  # even one the interruption kept from being planned
                self._results.setdefault(service.model_record_id, exc)
            interrupted = exc
        done = self._settle(self._results, clock_start)
        if interrupted is not None and not isinstance(interrupted, Exception):
            raise interrupted
        return done

    def _plan_all(self) -> dict[int, _Item]:
        """Read the batch's records and decide, item by item, what its frame is for (once).

        It runs while the primary prepares its answer. An item whose record is gone, or whose
        file is already in place, has its outcome now; its frame is read and dropped.
        """
        if self._wanted is not None:
            return self._wanted
        self._wanted = {}
        prefetch_missing(self.services)
        for service in self.services:
            try:
                item = self._plan(service)
            except Exception as exc:
                self._results[service.model_record_id] = exc
                continue
            if isinstance(item, Success):
                self._results[service.model_record_id] = item
            else:
                self._wanted[service.model_record_id] = item
        return self._wanted

    def _plan(self, service: SyncService) -> _Item | Success:
        plan = service.plan()
        if plan.skip is not None:
            return plan.skip
        bound = plan.replicator
        return _Item(service, bound.copy_path(), bound.local_path(), plan.expected)

    def _transfer(self) -> None:
        """Ask for every item, plan them while the primary works, then take in the answer."""
        first = self.services[0]
        route = first.route()
        ids = [service.model_record_id for service in self.services]
        path = batch_path(first.replicator.replicable_name, ids)
        headers = {"Authorization": node_header(first.geo, path, BLOB_TOKEN_TTL, route.node)}
        results = self._results
        writing: dict[int, Future[Success | BaseException]] = {}
        separate: list[int] = []
        try:
            url = route.primary_url.rstrip("/") + path
            with self.client.get(url, headers, meanwhile=self._plan_all) as response:
                wanted = self._plan_all()
                check_response(response)
                for _ in ids:
                    model_id, outcome = self._receive(response, ids, wanted)
                    if model_id not in wanted:
                        continue  # planned out: its frame was read and dropped
                    if outcome is None:
                        separate.append(model_id)
                    elif isinstance(outcome, Future):
                        writing[model_id] = outcome
                    else:
                        results[model_id] = outcome
                _read_end(response)
        except TransportFailure as exc:
            failure = PrimaryUnreachable(f"Connection to the primary failed: {exc}")
            for model_id in self._plan_all():
                results.setdefault(model_id, failure)
        except TransferError as exc:
            for model_id in self._plan_all():
                results.setdefault(model_id, exc)
        finally:
            results.update((model_id, future.result()) for model_id, future in writing.items())
        wanted = self._plan_all()
        self._sync_directories(wanted, results)
        if separate and self.hand_off is not None:
            for model_id in separate:
                self.hand_off(wanted[model_id].service)
                self._handed.add(model_id)
        elif separate:  # too large for a batch: the single, resumable endpoint, a few at a time
            services = [wanted[model_id].service for model_id in separate]
            workers = min(len(services), LARGE_AT_ONCE)
            with ThreadPoolExecutor(workers, thread_name_prefix="sync-large") as pool:
                results.update(zip(separate, pool.map(self._alone, services), strict=True))

    def _sync_directories(
        self, wanted: dict[int, _Item], results: dict[int, Success | BaseException]
    ) -> None:
        """One directory sync per directory written, before any row is recorded synced."""
        written: dict[Path, list[int]] = {}
        for model_id, result in results.items():
            if isinstance(result, Success) and model_id in wanted:
                written.setdefault(wanted[model_id].dest.parent, []).append(model_id)
        for directory, ids in written.items():
            try:
                sync_directory(directory)
            except OSError as exc:
                for model_id in ids:
                    results[model_id] = TransferError(f"Cannot make the copy durable: {exc}")

    def _receive(
        self, response: BlobResponse, ids: list[int], wanted: dict[int, _Item]
    ) -> tuple[int, Success | BaseException | Future[Success | BaseException] | None]:
        header = _read_header(response)
        model_id = header.get("id")
        if not isinstance(model_id, int) or model_id not in ids:
            raise TransferError(f"the primary's batch answered for an unrequested id {model_id!r}")
        status = header.get("status")
        if status == "separate":
            return model_id, None
        message = str(header.get("message", ""))[:200]
        if status == FILE_NOT_FOUND:
            return model_id, PrimaryMissing(f"File is missing on the primary: {message}")
        if status == "not_found":
            return model_id, RecordGone(f"The primary does not know this record: {message}")
        if status == "refused":
            return model_id, PrimaryRefused(str(header.get("reason")), message)
        size = header.get("size")
        if status != "ok" or not isinstance(size, int) or size < 0:
            raise TransferError(f"the primary's batch sent a malformed frame: {header!r}")
        data = b"".join(_exactly(response, size))  # at most INLINE_LIMIT bytes
        item = wanted.get(model_id)
        if item is None:
            return model_id, None
        if self.writers is None:
            return model_id, self._write(item, data)
        return model_id, self.writers.submit(self._write, item, data)

    def _write(self, item: _Item, data: bytes) -> Success | BaseException:
        """Put one received file in place; its failure (checksum, disk) is its own."""
        try:
            download = write_blob(
                item.dest,
                [data],
                expected_sha256=item.expected,
                cancel=self.cancel,
                sync_directory=False,
            )
        except Exception as exc:
            return exc
        return Success.downloaded(item.relative, item.expected, download)

    def _alone(self, service: SyncService) -> Success | BaseException:
        try:
            return service.transfer()
        except Exception as exc:
            return exc

    def _settle(self, results: dict[int, Success | BaseException], clock_start: float) -> int:
        finished = []
        for service in self.services:
            if service.model_record_id in self._handed:
                continue  # its own sync now, settled when it ends
            result = results[service.model_record_id]
            outcome = service.failure(result) if isinstance(result, BaseException) else result
            finished.append((service, outcome))
        answers = _settle_all(finished) if finished else []
        if self.on_settled is not None:
            self.on_settled()
        done = 0
        for (service, outcome), settled in zip(finished, answers, strict=True):
            if isinstance(outcome, Success):
                done += service.conclude(outcome, settled, clock_start)
        return done


def _settle_all(finished: list[tuple[SyncService, Success | Failure]]) -> list[Settled]:
    """One group commit for the whole batch when a settler is there."""
    first = finished[0][0]
    items = [service.finished(outcome) for service, outcome in finished]
    if first.settler is not None:
        return first.settler.settle_all(items)
    from geosync.secondary.settlement import settle_group

    with first.geo.tracking() as conn:
        return settle_group(conn, items, first.geo.clock.now())


def _read_header(response: BlobResponse) -> dict[str, object]:
    (length,) = HEADER.unpack(b"".join(_exactly(response, HEADER.size)))
    if length > MAX_HEADER:
        raise TransferError("the primary's batch is malformed (frame header too long)")
    try:
        header = json.loads(b"".join(_exactly(response, length)))
    except ValueError:
        raise TransferError("the primary's batch is malformed (frame header is not JSON)") from None
    if not isinstance(header, dict):
        raise TransferError("the primary's batch is malformed (frame header is not an object)")
    return header


def _read_end(response: BlobResponse) -> None:
    """Read the body's end after the last frame, so the connection can serve the next batch
    (a body left unread closes it: a new connection per batch on both sites)."""
    if response.read_chunk(1):
        raise TransferError("the primary's batch sent more frames than were asked for")


def _exactly(response: BlobResponse, size: int) -> Iterator[bytes]:
    """`size` bytes of the body, in chunks; `TransportFailure` if it ends first."""
    left = size
    while left > 0:
        chunk = response.read_chunk(min(left, CHUNK))
        if not chunk:
            raise TransportFailure("the primary's batch ended in the middle of a frame")
        left -= len(chunk)
        yield chunk
