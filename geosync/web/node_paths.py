"""The URL paths of the node-to-node API: what a secondary requests and signs its tokens for.

Kept apart from the endpoints so a worker, which only requests them, does not load the web
framework.
"""

from __future__ import annotations

from collections.abc import Sequence

GEO_API = "/api/v4/geo"


def retrieve_path(replicable_name: str, model_record_id: int) -> str:
    """The URL path of one blob; its token is scoped to exactly this path."""
    return f"{GEO_API}/retrieve/{replicable_name}/{model_record_id}"


def batch_path(replicable_name: str, ids: Sequence[int]) -> str:
    """The URL path and query of a blob batch; its token is scoped to exactly this string."""
    return f"{GEO_API}/retrieve/{replicable_name}?ids={','.join(str(i) for i in ids)}"


def repository_base_path(replicable_name: str, model_record_id: int) -> str:
    """The URL path of one repository; tokens for git fetches are scoped to it."""
    return f"{GEO_API}/repositories/{replicable_name}/{model_record_id}.git"
