"""Relay connections built for any node type: `<Node>Connection` and `<Node>Edge`.

A connection's `count` is computed only when a query asks for it: counting a million filtered
rows costs more than the page itself.
"""

# No `from __future__ import annotations`: the generated classes' annotations must be the
# types themselves, which exist only as values here.

from collections.abc import Awaitable, Callable
from typing import Any

import strawberry

from geosync.listing import Page
from geosync.web.graphql.types import PageInfo


def connection_types(node_type: Any) -> tuple[Any, Any]:
    """The edge and connection types of `node_type`, named after it as GitLab names them."""
    name = node_type.__strawberry_definition__.name
    edge = strawberry.type(
        type(
            f"{name}Edge",
            (),
            {"__annotations__": {"cursor": str, "node": node_type | None}},
        ),
        name=f"{name}Edge",
        description="An edge in a connection.",
    )

    async def count(self: Any) -> int:
        counted: int = await self.counter()
        return counted

    count.__annotations__ = {"return": int}
    namespace = {
        "__annotations__": {
            "edges": list[edge] | None,
            "nodes": list[node_type] | None,
            "page_info": PageInfo,
            "counter": strawberry.Private[Callable[[], Awaitable[int]]],
        },
        "count": strawberry.field(
            resolver=count, description="Number of items the filters keep, on every page."
        ),
    }
    connection = strawberry.type(
        type(f"{name}Connection", (), namespace),
        name=f"{name}Connection",
        description=f"The connection type for {name}.",
    )
    return edge, connection


def build_connection(
    connection: Any,
    edge: Any,
    page: Page,
    nodes: list[Any],
    counter: Callable[[], Awaitable[int]],
) -> Any:
    """A connection object for one page whose rows became `nodes`."""
    info = PageInfo(
        start_cursor=page.cursors[0] if page.cursors else None,
        end_cursor=page.cursors[-1] if page.cursors else None,
        has_next_page=page.has_next,
        has_previous_page=page.has_previous,
    )
    edges = [edge(cursor=c, node=n) for c, n in zip(page.cursors, nodes, strict=True)]
    return connection(edges=edges, nodes=nodes, page_info=info, counter=counter)


def empty_connection(connection: Any) -> Any:
    """A connection with no rows (another node's registries, a primary's)."""

    async def zero() -> int:
        return 0

    info = PageInfo(
        start_cursor=None, end_cursor=None, has_next_page=False, has_previous_page=False
    )
    return connection(edges=[], nodes=[], page_info=info, counter=zero)
