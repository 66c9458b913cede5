"""The promotion plan on a real secondary: what a promotion now would lose, per data type, and
its verdict, from the library and from `geosync promote --plan [--json]`."""

from __future__ import annotations

import json
from datetime import timedelta

import httpx
import pytest
from typer.testing import CliRunner

from geosync.auth import create_admin_token
from geosync.cli import app
from geosync.clock import FrozenClock
from geosync.demo.replicators import UploadReplicator
from geosync.errors import ConfigurationError
from geosync.flags import set_flag
from geosync.nodes import NodeStore
from geosync.promotion_plan import DATA_LOSS, SAFE, TypePlan, promotion_plan
from geosync.registry import Registry
from geosync.secondary.log_cursor import LogCursor
from geosync.states import VerificationState
from geosync.testing import SitePair
from geosync.testing.servers import serve_in_thread
from geosync.web.app import create_app
from tests import verifyutil as vu

runner = CliRunner()


def read_all_events(sites: SitePair) -> None:
    """Run the secondary's log cursor until it has applied every event."""
    cursor = LogCursor(sites.secondary)
    while cursor.process_batch():
        pass


def uploads(sites: SitePair) -> TypePlan:
    return next(t for t in promotion_plan(sites.secondary).types if t.replicable_name == "upload")


def synced_and_verified(sites: SitePair, record_id: int) -> None:
    vu.make_synced(sites.secondary, UploadReplicator, record_id, VerificationState.SUCCEEDED)


def test_a_fresh_secondary_would_lose_everything_and_says_how(sites: SitePair) -> None:
    ids = [vu.add_upload(sites.primary, b"x%d" % i) for i in range(3)]

    plan = promotion_plan(sites.secondary)
    row = next(t for t in plan.types if t.replicable_name == "upload")

    assert plan.verdict == DATA_LOSS and not plan.safe
    assert (row.primary_count, row.in_scope_count, row.not_synced_count) == (3, 3, 3)
    assert row.untracked_count == 3 and row.unread_event_count == 3
    assert plan.cursor_last_event_id is None and plan.unread_event_count == 3
    assert "uploads: 3 not synced (3 not yet in the registry)" in plan.losses()
    assert "uploads: 3 events not yet read by the log cursor" in plan.losses()
    assert len(ids) == 3


def test_everything_synced_verified_and_read_is_safe(sites: SitePair) -> None:
    ids = [vu.add_upload(sites.primary, b"y%d" % i) for i in range(2)]
    read_all_events(sites)
    for record_id in ids:
        synced_and_verified(sites, record_id)

    plan = promotion_plan(sites.secondary)

    assert plan.verdict == SAFE and plan.losses() == []
    assert uploads(sites).synced_count == 2
    assert plan.as_json()["safe"] is True


def test_failed_items_are_grouped_by_reason_with_the_oldest_waiting(
    sites: SitePair, clock: FrozenClock
) -> None:
    ids = [vu.add_upload(sites.primary, b"z%d" % i) for i in range(3)]
    read_all_events(sites)
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking() as conn:
        for record_id in ids:
            claim = registry.start(conn, record_id)
            registry.failed(conn, record_id, claim, "Download failed", "HTTP 500")
    clock.advance(60)

    row = uploads(sites)

    assert (row.not_synced_count, row.failed_count, row.untracked_count) == (3, 3, 0)
    assert [(r.reason, r.count) for r in row.failures] == [("Download failed: HTTP 500", 3)]
    assert row.oldest_not_synced_at is not None and row.oldest_not_synced_at < clock.now()
    assert "3 failed (3 x Download failed: HTTP 500)" in row.losses()[0]


def test_a_verification_older_than_the_scrub_period_is_not_verified(
    sites: SitePair, clock: FrozenClock
) -> None:
    record_id = vu.add_upload(sites.primary, b"old")
    read_all_events(sites)
    synced_and_verified(sites, record_id)
    clock.advance(sites.secondary.settings.scrub_period + timedelta(hours=1))

    row = uploads(sites)

    assert (row.synced_count, row.not_verified_count) == (1, 1)
    assert row.verified_outside_scrub_period_count == 1
    assert row.losses() == [
        "uploads: 1 synced but not verified, 1 of them verified longer ago than the scrub period"
    ]


def test_items_outside_selective_sync_and_types_turned_off_would_be_lost(
    sites: SitePair,
) -> None:
    inside = vu.add_upload(sites.primary, b"in", namespace_id=1)
    vu.add_upload(sites.primary, b"out", namespace_id=9)
    vu.add_package_file(sites.primary, b"pkg")
    with sites.primary.main() as conn:
        NodeStore(sites.primary, conn).update(
            sites.secondary_node.id,
            selective_sync_type="namespaces",
            selective_sync_namespace_ids=[1],
        )
        now = sites.primary.clock.now()
        set_flag(conn, sites.primary.catalog, "geo_package_file_replication", False, now)
    read_all_events(sites)
    synced_and_verified(sites, inside)

    plan = promotion_plan(sites.secondary)
    row = next(t for t in plan.types if t.replicable_name == "upload")

    assert (row.in_scope_count, row.out_of_scope_count, row.not_synced_count) == (1, 1, 0)
    assert plan.losses() == [
        "uploads: 1 outside this site's selective sync",
        "package_files: replication is off (geo_package_file_replication):"
        " 1 exist only on the primary",
    ]


def test_the_plan_runs_on_a_secondary_only(sites: SitePair) -> None:
    with pytest.raises(ConfigurationError, match="secondary"):
        promotion_plan(sites.primary)


def test_cli_plan_prints_the_verdict_and_the_losses_and_json(sites: SitePair) -> None:
    vu.add_upload(sites.primary, b"cli")
    config = sites.root / "secondary.toml"
    toml = sites.secondary.settings.to_toml()
    config.write_text('replicators = "geosync.demo.replicators"\n' + toml, encoding="utf-8")

    shown = runner.invoke(app, ["promote", "--plan", "-c", str(config)])
    as_json = runner.invoke(app, ["promote", "--plan", "--json", "-c", str(config)])

    assert shown.exit_code == 0, shown.output
    assert "verdict: data would be lost" in shown.output
    assert "uploads: 1 not synced" in shown.output
    data = json.loads(as_json.stdout)
    assert data["verdict"] == DATA_LOSS and data["safe"] is False
    row = next(t for t in data["types"] if t["replicable_name"] == "upload")
    assert row["not_synced_count"] == 1 and row["losses"][0].startswith("uploads: 1 not synced")


def test_rest_api_serves_the_plan_on_a_secondary_to_admins_only(sites: SitePair) -> None:
    vu.add_upload(sites.primary, b"rest")
    now = sites.primary.clock.now()
    with sites.primary.main() as conn:
        admin = {"PRIVATE-TOKEN": create_admin_token(conn, "ops", now)}
    path = "api/v4/geo_sites/current/promotion_plan"

    with (
        serve_in_thread(create_app(sites.secondary)) as url,
        httpx.Client(base_url=url, timeout=30) as web,
    ):
        answered = web.get(path, headers=admin)
        anonymous = web.get(path)
    with (
        serve_in_thread(create_app(sites.primary)) as url,
        httpx.Client(base_url=url, timeout=30) as web,
    ):
        on_primary = web.get(path, headers=admin)

    assert answered.status_code == 200
    body = answered.json()
    assert body["verdict"] == DATA_LOSS
    assert body == {**promotion_plan(sites.secondary).as_json(), "computed_at": body["computed_at"]}
    assert anonymous.status_code == 401
    assert on_primary.status_code == 403 and "secondary" in on_primary.json()["message"]
