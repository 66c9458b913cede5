"""Blob download from the primary straight into this secondary's object store.

The body streams from the primary's response into the store's atomic write (`BlobStore.write`):
hashed while streaming, visible under the real key only when whole and matching the primary's
checksum. There is no resume: a broken transfer is retried whole by the sync's backoff.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from geosync.errors import TransferError, TransportFailure
from geosync.secondary.transfer import CHUNK, Download, check_response
from geosync.storage import BlobStore

if TYPE_CHECKING:
    from geosync.secondary.sync import SyncService


def download_to_store(
    job: SyncService,
    url: str,
    auth: Callable[[], dict[str, str]],
    store: BlobStore,
    key: str,
    expected_sha256: str | None,
) -> Download:
    """Stream `url` into `store` under `key`; checks `expected_sha256` when given."""
    try:
        with job.client.get(url, auth()) as response:
            check_response(response)
            written = store.write(
                key,
                response.iter_bytes(CHUNK),
                expected_sha256=expected_sha256,
                cancel=job.cancel,
            )
    except TransportFailure as exc:
        raise TransferError(f"Connection to the primary failed: {exc}") from exc
    return Download(Path(key), written.bytes, written.sha256)
