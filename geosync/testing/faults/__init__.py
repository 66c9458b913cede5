"""The fault suite: scenarios that break a primary/secondary pair on purpose and measure what
geosync does about it (docs/reliability.md).

Each scenario is a function `(FaultContext, size) -> Row`: it builds its own sites (the demo
application, real databases, real files, loopback HTTP, real processes where a process must
die), injects one fault, waits (bounded) for the outcome and returns what was done, what was
expected, what was measured and whether that passes. `tests/faults/` runs every scenario at its
small size; `bench/faults.py` runs them at larger sizes and prints the table.
"""

from __future__ import annotations

from geosync.testing.faults.base import BACKENDS, FaultContext, Row, Scenario, ScenarioFunction
from geosync.testing.faults.event_log import event_log_replayed_twice, malformed_event_rows
from geosync.testing.faults.kills import (
    worker_kills_during_blob_backfill,
    worker_kills_during_repository_backfill,
)
from geosync.testing.faults.outages import (
    primary_database_unreachable,
    primary_web_server_outage,
    standby_unreachable,
    tracking_database_restart,
)
from geosync.testing.faults.report import markdown_table, rich_table
from geosync.testing.faults.security import (
    clock_skew_beyond_leeway,
    clock_skew_within_leeway,
    forged_tokens_and_traversal,
)
from geosync.testing.faults.storage import (
    corruption_found_and_repaired,
    corruption_found_by_reverify,
    disk_full_on_secondary,
)

__all__ = [
    "BACKENDS",
    "SCENARIOS",
    "FaultContext",
    "Row",
    "Scenario",
    "ScenarioFunction",
    "markdown_table",
    "rich_table",
    "scenario",
]

_PG = ("postgres",)

#: Every scenario, in the order of the table, with its unit and sizes (small: tests; large: the
#: benchmark's default).
SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("blob-kills", worker_kills_during_blob_backfill, "blobs", 100, 600),
        Scenario("repository-kills", worker_kills_during_repository_backfill, "repos", 10, 30),
        Scenario("web-outage", primary_web_server_outage, "blobs", 100, 600),
        Scenario("tracking-restart", tracking_database_restart, "blobs", 100, 600, _PG),
        Scenario("standby-unreachable", standby_unreachable, "blobs", 100, 600, _PG),
        Scenario("primary-db-unreachable", primary_database_unreachable, "blobs", 100, 600, _PG),
        Scenario("disk-full", disk_full_on_secondary, "blobs", 60, 400),
        Scenario("corruption", corruption_found_and_repaired, "copies", 100, 1000),
        Scenario("corruption-reverify", corruption_found_by_reverify, "copies", 100, 1000),
        Scenario("tokens", forged_tokens_and_traversal, "requests", 200, 1000),
        Scenario("skew-within", clock_skew_within_leeway, "blobs", 20, 100),
        Scenario("skew-beyond", clock_skew_beyond_leeway, "blobs", 20, 100),
        Scenario("malformed-events", malformed_event_rows, "real events", 200, 2000),
        Scenario("replay", event_log_replayed_twice, "uploads", 60, 500),
    )
}


def scenario(name: str) -> Scenario:
    """The scenario called `name`, or `KeyError` listing the names there are."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise KeyError(f"no fault scenario {name!r}; there are: {', '.join(SCENARIOS)}") from None
