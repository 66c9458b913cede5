"""GitLab's offset pagination: `page` and `per_page` in, `X-*` and `Link` headers out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Query
from starlette.datastructures import URL

DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100
MAX_PAGE = 2**31 - 1


@dataclass(frozen=True)
class Page:
    """The requested page of a list."""

    page: int
    per_page: int

    @property
    def offset(self) -> int:
        """Rows to skip."""
        return (self.page - 1) * self.per_page

    def total_pages(self, total: int) -> int:
        """How many pages `total` rows fill (at least one, as GitLab reports)."""
        return max(1, -(-total // self.per_page))

    def headers(self, total: int, url: URL) -> dict[str, str]:
        """GitLab's pagination headers for a list of `total` rows requested at `url`."""
        last = self.total_pages(total)
        next_page = self.page + 1 if self.page < last else None
        prev_page = min(self.page - 1, last) if self.page > 1 else None
        links = []
        if prev_page is not None:
            links.append(self._link(url, prev_page, "prev"))
        if next_page is not None:
            links.append(self._link(url, next_page, "next"))
        links.append(self._link(url, 1, "first"))
        links.append(self._link(url, last, "last"))
        return {
            "X-Total": str(total),
            "X-Total-Pages": str(last),
            "X-Page": str(self.page),
            "X-Per-Page": str(self.per_page),
            "X-Next-Page": "" if next_page is None else str(next_page),
            "X-Prev-Page": "" if prev_page is None else str(prev_page),
            "Link": ", ".join(links),
        }

    def _link(self, url: URL, page: int, rel: str) -> str:
        target = url.include_query_params(page=page, per_page=self.per_page)
        return f'<{target}>; rel="{rel}"'


def page_params(
    page: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page number (from 1).")] = 1,
    per_page: Annotated[
        int, Query(ge=1, description=f"Items per page (at most {MAX_PER_PAGE}).")
    ] = DEFAULT_PER_PAGE,
) -> Page:
    """Dependency: the requested page; `per_page` above the maximum is capped, as in GitLab."""
    return Page(page, min(per_page, MAX_PER_PAGE))
