"""The admin UI tells times on the site's clock: "synced 3 minutes ago" on a frozen clock."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from geosync.clock import FrozenClock
from geosync.testing import SitePair
from tests.graphql_client import GraphQLSite, seed, served_graphql


@pytest.fixture
def ui(sites: SitePair, clock: FrozenClock) -> Iterator[GraphQLSite]:
    seed(sites, clock)  # upload 30 is the last synced, at the clock's time now
    with served_graphql(sites, sites.secondary) as site:
        response = site.client.post("admin/geo/sign_in", data={"token": site.admin})
        assert response.status_code == 303
        yield site


def test_a_rows_sync_time_reads_as_the_time_since_on_the_sites_clock(
    ui: GraphQLSite, clock: FrozenClock
) -> None:
    clock.advance(180)
    node = 2  # the secondary's node
    page = ui.client.get(f"admin/geo/sites/{node}/replication/uploads?keyword=file-30.").text
    row = re.search(r'<tr id="registry-30".*?</tr>', page, re.DOTALL)

    assert row is not None
    assert "3 minutes ago" in row.group(0)
