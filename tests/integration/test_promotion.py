"""`geosync promote` on a real secondary: refused when its plan shows loss (naming it), forced,
planned, idempotent; the node registry afterwards, from the library and from the CLI.

The PostgreSQL standby's own promotion (`pg_promote`) is in tests/e2e/test_failover.py.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from geosync.cli import app
from geosync.demo.replicators import UploadReplicator
from geosync.errors import ConfigurationError, PromotionRefused
from geosync.nodes import Node, NodeStore
from geosync.promotion import promote
from geosync.secondary.log_cursor import LogCursor
from geosync.states import VerificationState
from geosync.testing import SitePair
from tests import verifyutil as vu

runner = CliRunner()


def nodes(sites: SitePair) -> dict[str, Node]:
    with sites.primary.main_engine.connect() as conn:
        return {node.name: node for node in NodeStore(sites.primary, conn).list()}


def caught_up(sites: SitePair) -> None:
    """Every event read and every upload synced and verified: a clean plan."""
    cursor = LogCursor(sites.secondary)
    while cursor.process_batch():
        pass
    with sites.primary.main_engine.connect() as conn:
        ids = conn.execute(UploadReplicator.available_replicables()).scalars().all()
    for record_id in ids:
        vu.make_synced(sites.secondary, UploadReplicator, record_id, VerificationState.SUCCEEDED)


def config_file(sites: SitePair) -> str:
    path = sites.root / "secondary.toml"
    toml = sites.secondary.settings.to_toml()
    path.write_text('replicators = "geosync.demo.replicators"\n' + toml, encoding="utf-8")
    return str(path)


def test_a_promotion_that_would_lose_data_is_refused_saying_what(sites: SitePair) -> None:
    vu.add_upload(sites.primary, b"unsynced")

    with pytest.raises(PromotionRefused) as refused:
        promote(sites.secondary)

    assert "uploads: 1 not synced" in str(refused.value)
    assert "--force" in str(refused.value)
    assert nodes(sites)["primary"].primary and not nodes(sites)["secondary"].primary


def test_forced_promotion_makes_this_node_primary_and_disables_the_unreachable_old_one(
    sites: SitePair,
) -> None:
    vu.add_upload(sites.primary, b"lost")

    done = promote(sites.secondary, force=True)
    again = promote(sites.secondary, force=True)

    after = nodes(sites)
    assert after["secondary"].primary and after["secondary"].enabled
    assert not after["primary"].primary and not after["primary"].enabled
    assert any("uploads: 1 not synced" in line for line in done.forced_losses)
    assert "geo_nodes: 'secondary' is now the primary" in done.steps
    assert any("disabled secondary (unreachable" in step for step in done.steps)
    assert again.steps == ["node 'secondary' is already the primary: nothing to promote"]
    assert any("remove tracking_database_url" in line for line in again.restart)


def test_an_old_primary_that_answers_becomes_an_enabled_secondary(sites: SitePair) -> None:
    caught_up(sites)

    with sites.primary_served():
        done = promote(sites.secondary)

    after = nodes(sites)
    assert done.steps[0] == "plan: safe, nothing would be lost"
    assert after["secondary"].primary and not after["primary"].primary
    assert after["primary"].enabled


#: The planned failovers here share the primary's SQLite file; on PostgreSQL a planned failover
#: makes the old primary's database read-only, against a standby (tests/e2e/test_failover.py).
SHARED_SQLITE = pytest.mark.parametrize("backend", ["sqlite"])


@SHARED_SQLITE
def test_a_planned_failover_waits_until_the_plan_is_clean(sites: SitePair) -> None:
    vu.add_upload(sites.primary, b"drains")
    seen: list[int] = []

    def progress(plan: object) -> None:
        seen.append(len(plan.losses()))  # type: ignore[attr-defined]
        if len(seen) == 2:  # the secondary catches up while the promotion waits
            caught_up(sites)

    done = promote(sites.secondary, planned=True, timeout=30, progress=progress)

    assert seen[0] > 0 and seen[-1] == 0
    assert "plan: safe, nothing would be lost" in done.steps
    assert nodes(sites)["secondary"].primary


@SHARED_SQLITE
def test_a_planned_failover_that_never_drains_is_refused_after_its_timeout(
    sites: SitePair,
) -> None:
    vu.add_upload(sites.primary, b"stuck")

    with pytest.raises(PromotionRefused, match="after waiting 1 s"):
        promote(sites.secondary, planned=True, timeout=1)


def test_a_primary_cannot_be_promoted(sites: SitePair) -> None:
    with pytest.raises(ConfigurationError, match="runs on a secondary"):
        promote(sites.primary)


def test_cli_refuses_with_the_losses_then_promotes_with_force(sites: SitePair) -> None:
    vu.add_upload(sites.primary, b"cli")
    config = config_file(sites)

    refused = runner.invoke(app, ["promote", "-c", config])
    forced = runner.invoke(app, ["promote", "--force", "-c", config])

    assert refused.exit_code == 1
    assert "promotion refused: data would be lost: uploads: 1 not synced" in refused.stderr
    assert forced.exit_code == 0, forced.output
    assert "- geo_nodes: 'secondary' is now the primary" in forced.stdout
    assert "restart every `geosync worker`" in forced.stdout
    assert nodes(sites)["secondary"].primary


def test_cli_refuses_options_that_do_not_go_together(sites: SitePair) -> None:
    config = config_file(sites)

    json_alone = runner.invoke(app, ["promote", "--json", "-c", config])
    url_alone = runner.invoke(
        app, ["promote", "--primary-database-url", "postgresql://x@h/db", "-c", config]
    )

    assert json_alone.exit_code == 1 and "--json only goes with --plan" in json_alone.stderr
    assert url_alone.exit_code == 1 and "only goes with --planned" in url_alone.stderr
    assert nodes(sites)["primary"].primary
