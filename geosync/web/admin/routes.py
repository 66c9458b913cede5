"""The admin UI's page routers, one per page module; a new page adds itself here."""

from __future__ import annotations

from fastapi import APIRouter


def routes() -> list[APIRouter]:
    """Every page router of the admin UI."""
    from geosync.web.admin import activity, jobs_page, replication, replication_item, sites

    return [
        sites.router,
        replication.router,
        replication_item.router,
        jobs_page.router,
        activity.router,
    ]
