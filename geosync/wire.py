"""The node-to-node wire format: the URL paths a secondary requests (and signs its tokens for)
and the framing of a blob batch. Both sites import it: the primary's endpoints
(`geosync.web.geo_api`, `geosync.web.blob_batch`) and the secondary's transfers, which do not
load the web framework.

A blob batch (`GET /api/v4/geo/retrieve/<replicable_name>?ids=1,2,3`) answers with one frame per
requested id, in request order. A frame is a 4-byte big-endian header length, a JSON header and,
for a file sent inline, exactly `size` bytes of content. The header's `status` is one of:

- `ok`: the file follows (`size` bytes);
- `file_not_found`: the record exists but its file does not (the single endpoint's
  `FILE_NOT_FOUND`);
- `not_found`: no such record;
- `refused`: the primary will not serve this file; `reason` says why (`unsafe_path`: its path
  leaves the storage, or a symlink leads out of it; `not_a_file`: not a regular file;
  `unreadable`: the primary cannot read it) and `message` says it to an operator;
- `separate`: the file is too large to send inline; fetch it with the single endpoint, which
  streams it and supports HTTP Range resumes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any

GEO_API = "/api/v4/geo"
#: The node-authenticated endpoint a secondary probes to learn whether the primary answers
#: (its web server and the database behind it): `geosync.secondary.reachability`.
PING_PATH = f"{GEO_API}/ping"
BATCH_MEDIA_TYPE = "application/vnd.geosync.blob-batch"
#: Most ids one batch request may name.
MAX_BATCH_IDS = 100
#: Files up to this size travel inline; larger ones are marked `separate`.
INLINE_LIMIT = 1024 * 1024
HEADER = struct.Struct(">I")
#: Why the primary does not serve a blob: the single endpoint's `geo_code` is the reason in
#: capitals; in a batch, `file_not_found` is a frame status, the others are `refused` reasons.
FILE_NOT_FOUND = "file_not_found"
UNSAFE_PATH = "unsafe_path"
NOT_A_FILE = "not_a_file"
UNREADABLE = "unreadable"
REFUSALS = frozenset({UNSAFE_PATH, NOT_A_FILE, UNREADABLE})
#: A frame header is small; a larger declared length means the stream is not a batch.
MAX_HEADER = 64 * 1024


def retrieve_path(replicable_name: str, model_record_id: int) -> str:
    """The URL path of one blob; its token is scoped to exactly this path."""
    return f"{GEO_API}/retrieve/{replicable_name}/{model_record_id}"


def batch_path(replicable_name: str, ids: Sequence[int]) -> str:
    """The URL path and query of a blob batch; its token is scoped to exactly this string."""
    return f"{GEO_API}/retrieve/{replicable_name}?ids={','.join(str(i) for i in ids)}"


def repository_base_path(replicable_name: str, model_record_id: int) -> str:
    """The URL path of one repository; tokens for git fetches are scoped to it."""
    return f"{GEO_API}/repositories/{replicable_name}/{model_record_id}.git"


def frame(header: dict[str, Any], body: bytes = b"") -> bytes:
    """One frame: header length, JSON header, content."""
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return HEADER.pack(len(encoded)) + encoded + body
