"""Many small blobs in one response: the primary's side of a blob batch.

The request and the frames are `geosync.wire`'s. Per-request costs (a connection turn,
authentication, a record query) dominate the transfer of a small file; a batch pays them once.
The token's `data` covers the path and the exact id list, so it is worthless for any other set
of items.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from geosync.app import Geo
from geosync.errors import NotFound, ValidationError
from geosync.records import load_records
from geosync.replicator import Replicator
from geosync.web.served_files import Refusal, open_served, open_served_object
from geosync.wire import FILE_NOT_FOUND, INLINE_LIMIT, MAX_BATCH_IDS, frame

#: Frames are sent in pieces of about this size (bounds the memory of a response).
PIECE = 1024 * 1024


#: The largest record id a batch names (the databases' bigint).
MAX_RECORD_ID = 2**63 - 1


def parse_ids(raw: str | None) -> list[int]:
    """The ids of a batch request, or `ValidationError` saying what is wrong: decimal digits,
    comma-separated, positive, distinct, at most `MAX_BATCH_IDS` (the document's `ids`)."""
    if not raw:
        raise ValidationError("ids: give one or more record ids, separated by commas")
    parts = raw.split(",")
    if not all(part.isascii() and part.isdigit() for part in parts):
        raise ValidationError("ids: every id must be an integer")
    ids = [int(part) for part in parts]
    if len(ids) > MAX_BATCH_IDS:
        raise ValidationError(f"ids: at most {MAX_BATCH_IDS} ids per request")
    if len(set(ids)) != len(ids) or any(i <= 0 or i > MAX_RECORD_ID for i in ids):
        raise ValidationError("ids: ids must be positive, distinct and below 2**63")
    return ids


@dataclass
class BatchSource:
    """The records of one batch request, loaded up front; files are read as frames are sent."""

    geo: Geo
    replicator: type[Replicator]
    ids: list[int]
    records: dict[int, Any]
    #: Index in `ids` of the first frame not yet sent.
    _next: int = field(default=0, init=False)

    @classmethod
    def load(cls, geo: Geo, name: str, ids: list[int], conn: Any) -> BatchSource:
        """The batch's records, in one query on `conn`."""
        replicator = geo.catalog.served(name, Replicator)
        if not replicator.batches:  # its strategy transfers items alone
            raise NotFound(f"{name} not found")
        return cls(geo, replicator, ids, load_records(conn, replicator.model, ids))

    def first_piece(self) -> tuple[bytes, bool]:
        """The body's first piece, and whether more follows.

        Read on the thread that authenticated the request: most batches fit in one piece, and
        are then sent as one sized body, with no further thread hop and no chunked encoding.
        """
        piece, self._next = self._piece(0)
        return piece, self._next < len(self.ids)

    def rest(self) -> Iterator[bytes]:
        """The pieces after the first (for a thread pool to iterate)."""
        while self._next < len(self.ids):
            piece, self._next = self._piece(self._next)
            yield piece

    def _piece(self, start: int) -> tuple[bytes, int]:
        """Frames from `ids[start]` on until they reach `PIECE` bytes; the index after them."""
        pending: list[bytes] = []
        size = 0
        index = start
        while index < len(self.ids) and size < PIECE:
            data = self._frame(self.ids[index])
            pending.append(data)
            size += len(data)
            index += 1
        return b"".join(pending), index

    def _frame(self, model_id: int) -> bytes:
        name = self.replicator.replicable_name
        record = self.records.get(model_id)
        if record is None:
            return frame({"id": model_id, "status": "not_found", "message": f"{name} not found"})
        replicator = self.replicator(record, geo=self.geo)
        streamed = open_served_object(replicator)
        if isinstance(streamed, Refusal):
            return _refusal_frame(model_id, streamed)
        if streamed is not None:  # an object is streamed alone, by the single endpoint
            streamed[0].close()
            return frame({"id": model_id, "status": "separate", "size": streamed[1]})
        opened = open_served(replicator)
        if isinstance(opened, Refusal):
            return _refusal_frame(model_id, opened)
        handle, _, status = opened
        with handle:
            size = status.st_size
            if size > INLINE_LIMIT:
                return frame({"id": model_id, "status": "separate", "size": size})
            data = handle.read(INLINE_LIMIT + 1)
        if len(data) > INLINE_LIMIT:  # grew since fstat
            return frame({"id": model_id, "status": "separate", "size": len(data)})
        return frame({"id": model_id, "status": "ok", "size": len(data)}, data)


def _refusal_frame(model_id: int, refusal: Refusal) -> bytes:
    """The frame of an item not served: only this item fails, its neighbours are sent."""
    if refusal.reason == FILE_NOT_FOUND:
        return frame({"id": model_id, "status": FILE_NOT_FOUND, "message": refusal.message})
    header = {"id": model_id, "status": "refused", "reason": refusal.reason}
    return frame({**header, "message": refusal.message})
