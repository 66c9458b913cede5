"""Request dependencies shared by the routers: the site, and who is asking."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from fastapi import Request

if TYPE_CHECKING:
    from geosync.app import Geo


def get_geo(request: Request) -> Geo:
    """The site this web application serves."""
    return cast("Geo", request.app.state.geo)
