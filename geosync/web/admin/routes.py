"""The admin UI's page routers, one per page module; a new page adds itself here."""

from __future__ import annotations

from fastapi import APIRouter


def routes() -> list[APIRouter]:
    """Every page router of the admin UI."""
    from geosync.web.admin import activity, sites

    return [sites.router, activity.router]
