"""A GraphQL client for tests: a served site, an admin token, `run(query)`, and seed data."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from geosync.app import Geo
from geosync.auth import create_admin_token
from geosync.clock import FrozenClock
from geosync.demo.models import Upload
from geosync.demo.replicators import UploadReplicator
from geosync.registry import Registry
from geosync.states import VerificationState
from geosync.testing import SitePair
from geosync.testing.servers import serve_in_thread
from geosync.web.app import create_app

#: How many uploads `seed` creates.
COUNT = 30


@dataclass
class GraphQLSite:
    """One served site and the tokens to call it with."""

    client: httpx.Client
    admin: str
    non_admin: str

    def post(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """POST a query with `headers` only (no token unless given); the raw response."""
        body: dict[str, Any] = {"query": query}
        if variables is not None:
            body["variables"] = variables
        return self.client.post("api/graphql", json=body, headers=headers or {})

    def run(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run a query as the admin; the response JSON, asserting a 200 and no errors."""
        response = self.post(query, variables, {"PRIVATE-TOKEN": self.admin})
        assert response.status_code == 200, response.text
        payload: dict[str, Any] = response.json()
        assert "errors" not in payload, payload["errors"]
        data: dict[str, Any] = payload["data"]
        return data

    def errors(self, query: str, variables: dict[str, Any] | None = None) -> list[str]:
        """Run a query that must fail; its error messages (never a 500)."""
        response = self.post(query, variables, {"PRIVATE-TOKEN": self.admin})
        assert response.status_code < 500, response.text
        payload = response.json()
        assert payload.get("errors"), payload
        return [error["message"] for error in payload["errors"]]


def seed(sites: SitePair, clock: FrozenClock) -> None:
    """Uploads 1-30 on the primary; on the secondary every third synced and verified, every
    fifth failed, the rest pending; sync times one minute apart."""
    with sites.primary.session() as session, session.begin():
        for i in range(1, COUNT + 1):
            session.add(Upload(id=i, path=f"dir{i % 3}/file-{i}.bin", namespace_id=1, size=i))
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        registry.insert_pending(conn, list(range(1, COUNT + 1)))
    for i in range(1, COUNT + 1):
        clock.advance(60)
        with sites.secondary.tracking() as conn:
            if i % 3 == 0:
                registry.synced(
                    conn,
                    i,
                    registry.start(conn, i),
                    verification=VerificationState.SUCCEEDED,
                    checksum=f"{i:064x}",
                )
            elif i % 5 == 0:
                registry.failed(conn, i, registry.start(conn, i), f"Download failed {i}")


def admin_tokens(sites: SitePair) -> tuple[str, str]:
    """An admin and a non-admin token, created on the primary (seen by both sites)."""
    now = sites.primary.clock.now()
    with sites.primary.main() as conn:
        return create_admin_token(conn, "ops", now), create_admin_token(
            conn, "reader", now, admin=False
        )


@contextmanager
def served_graphql(sites: SitePair, site: Geo) -> Iterator[GraphQLSite]:
    """Serve `site` (one of `sites`) on loopback; yields a client with both tokens."""
    admin, non_admin = admin_tokens(sites)
    with serve_in_thread(create_app(site)) as base, httpx.Client(base_url=base, timeout=30) as c:
        yield GraphQLSite(c, admin, non_admin)
