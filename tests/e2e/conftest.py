"""Fixtures for end-to-end tests: both sites as real `geosync` processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from geosync.testing import DatabaseFactory, SitePair, build_site_pair
from geosync.testing.processes import SiteProcesses, site_processes
from tests.conftest import DEMO_REPLICATORS


class ProcessSites:
    """A site pair whose services run as child processes."""

    def __init__(self, pair: SitePair, primary: SiteProcesses, secondary: SiteProcesses) -> None:
        self.pair = pair
        self.primary = primary
        self.secondary = secondary


@pytest.fixture
def process_sites(tmp_path: Path, databases: DatabaseFactory) -> Iterator[ProcessSites]:
    """Primary and secondary configured for processes; nothing is started yet."""
    pair = build_site_pair(
        tmp_path / "sites",
        DEMO_REPLICATORS,
        databases,
        backoff_scale=0.005,
        poll_interval=0.2,
        lease_seconds=6.0,
        log_format="json",
    )
    primary, secondary = site_processes(pair, tmp_path, "geosync.demo.replicators")
    sites = ProcessSites(pair, primary, secondary)
    try:
        yield sites
    finally:
        secondary.stop_all()
        primary.stop_all()
        pair.dispose()
