"""What every resolver knows: the site, the admin token that asked, and a way off the loop.

Resolvers run on the server's event loop; their database work goes to the thread pool, so a
slow listing never holds up the blob and git transfers served beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.concurrency import run_in_threadpool
from strawberry.fastapi import BaseContext

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.auth import AdminToken

T = TypeVar("T")


class GeoContext(BaseContext):
    """The request's site and admin token."""

    def __init__(self, geo: Geo, token: AdminToken) -> None:
        super().__init__()
        self.geo = geo
        self.token = token

    @property
    def created_by(self) -> str:
        """Who a job created by this request is recorded as."""
        return f"{self.token.name} (token {self.token.id})"

    async def off_loop(self, function: Callable[..., T], *args: Any) -> T:
        """Run blocking `function(*args)` in the thread pool."""
        return await run_in_threadpool(function, *args)
