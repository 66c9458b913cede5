"""Event-log pruning on the primary, and a secondary that fell behind the pruned log
(SQLite and PostgreSQL, on a frozen clock).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from geosync.clock import FrozenClock
from geosync.db.tables import geo_event_gaps, geo_event_log_state, geo_events
from geosync.demo.models import Upload
from geosync.demo.replicators import UploadReplicator
from geosync.nodes import Node, NodeStore
from geosync.primary.pruning import (
    MAX_ROWS_PER_RUN,
    PRUNE_INTERVAL,
    EventLogPruningLoop,
    prune_event_log,
)
from geosync.registry import Registry
from geosync.secondary.log_cursor import LogCursor
from geosync.secondary.pruned_log import fell_behind_pruned_log
from geosync.states import SyncState
from geosync.status import NodeStatus, store_status
from geosync.testing import SitePair


def add_uploads(sites: SitePair, count: int) -> list[int]:
    """Upload rows on the primary; each publishes one `created` event."""
    with sites.primary.session() as session:
        uploads = [Upload(path=f"f{n}.bin", namespace_id=1) for n in range(count)]
        session.add_all(uploads)
        session.commit()
        return [int(u.id) for u in uploads]


def event_ids(sites: SitePair) -> list[int]:
    """The ids left in the primary's event log."""
    with sites.primary.main_engine.connect() as conn:
        return [int(i) for i in conn.scalars(select(geo_events.c.id).order_by(geo_events.c.id))]


def report(sites: SitePair, node: Node, cursor: int | None) -> None:
    """What the primary stores when a secondary posts its status (now, by the primary's clock)."""
    values = {"geo_node_id": node.id, "cursor_last_event_id": cursor, "healthy": True}
    now = sites.primary.clock.now()
    with sites.primary.main() as conn:
        store_status(conn, NodeStatus(values, now), now)


def add_secondary(sites: SitePair, name: str) -> Node:
    """Another secondary node."""
    with sites.primary.main() as conn:
        return NodeStore(sites.primary, conn).add(name, "http://127.0.0.1:3/")


def cursor_state(sites: SitePair) -> tuple[int, bool]:
    """The secondary's stored cursor and its `pruned_behind` mark."""
    with sites.secondary.tracking_engine.connect() as conn:
        row = conn.execute(select(geo_event_log_state)).one()
    return int(row.event_id), bool(row.pruned_behind)


# -- the primary's side -------------------------------------------------------------------------


def test_without_secondaries_everything_is_pruned(sites: SitePair) -> None:
    add_uploads(sites, 4)
    with sites.primary.main() as conn:
        NodeStore(sites.primary, conn).remove(sites.secondary_node.id)

    result = prune_event_log(sites.primary)

    assert result.deleted == 4 and event_ids(sites) == []


def test_prunes_up_to_the_slowest_healthy_cursor(sites: SitePair) -> None:
    add_uploads(sites, 10)
    ids = event_ids(sites)
    other = add_secondary(sites, "secondary-b")
    report(sites, sites.secondary_node, ids[6])
    report(sites, other, ids[2])

    result = prune_event_log(sites.primary)

    assert result.deleted == 3 and event_ids(sites) == ids[3:]
    assert result.plan.waiting_for == []
    report(sites, other, ids[8])
    assert prune_event_log(sites.primary).deleted == 4
    assert event_ids(sites) == ids[7:]


def test_a_secondary_that_never_reported_holds_the_log_until_the_age_bound(
    sites: SitePair, clock: FrozenClock
) -> None:
    add_uploads(sites, 3)

    assert prune_event_log(sites.primary).deleted == 0
    clock.advance(timedelta(days=7, seconds=1))
    assert prune_event_log(sites.primary).deleted == 3
    assert event_ids(sites) == []


def test_an_unhealthy_secondary_is_waited_for_but_never_beyond_the_age_bound(
    sites: SitePair, clock: FrozenClock
) -> None:
    add_uploads(sites, 5)
    old = event_ids(sites)
    fast = add_secondary(sites, "secondary-fast")
    report(sites, sites.secondary_node, old[1])  # the slow one, about to go silent
    report(sites, fast, old[-1])
    clock.advance(timedelta(days=3))
    add_uploads(sites, 4)
    recent = event_ids(sites)[len(old) :]

    clock.advance(timedelta(minutes=61))
    report(sites, fast, recent[-1])
    result = prune_event_log(sites.primary)

    assert result.plan.waiting_for == ["secondary"]
    assert [s.healthy for s in result.plan.secondaries] == [False, True]
    assert event_ids(sites) == old[2:] + recent  # still waiting at its last cursor

    clock.advance(timedelta(days=4))  # the first events are now over 7 days old
    report(sites, fast, recent[-1])
    assert prune_event_log(sites.primary).deleted == 3
    assert event_ids(sites) == recent


def test_a_run_deletes_at_most_its_cap_and_the_loop_comes_back_soon(sites: SitePair) -> None:
    add_uploads(sites, 7)
    ids = event_ids(sites)
    report(sites, sites.secondary_node, ids[-1])
    loop = EventLogPruningLoop(sites.primary, limit=3)

    assert loop.run_once() == sites.primary.settings.poll_interval
    assert event_ids(sites) == ids[3:]  # the oldest go first
    assert loop.run_once() == sites.primary.settings.poll_interval
    assert loop.run_once() == PRUNE_INTERVAL
    assert event_ids(sites) == []
    assert MAX_ROWS_PER_RUN == 50_000


def test_only_the_primary_prunes(sites: SitePair) -> None:
    add_uploads(sites, 2)

    assert EventLogPruningLoop(sites.secondary).run_once() == PRUNE_INTERVAL
    assert len(event_ids(sites)) == 2


# -- a secondary behind the pruned log ---------------------------------------------------------


def test_a_cursor_behind_the_pruned_log_says_so_and_skips_to_the_oldest_event_left(
    sites: SitePair, clock: FrozenClock
) -> None:
    add_uploads(sites, 6)
    assert LogCursor(sites.secondary, batch_size=2).process_batch() == 2  # then it goes down
    clock.advance(timedelta(days=4))
    later = add_uploads(sites, 3)
    clock.advance(timedelta(days=3, hours=1))
    assert prune_event_log(sites.primary).deleted == 6  # the first six, by age
    remaining = event_ids(sites)
    assert fell_behind_pruned_log(sites.secondary)

    handled = LogCursor(sites.secondary).process_batch()

    assert handled == 3
    assert cursor_state(sites) == (remaining[-1], True)
    assert not fell_behind_pruned_log(sites.secondary)
    registry = Registry(sites.secondary, UploadReplicator)
    with sites.secondary.tracking_engine.connect() as conn:
        assert registry.count_by_state(conn)[SyncState.PENDING] == 2 + len(later)
        assert conn.execute(select(geo_event_gaps)).first() is None


def test_a_young_hole_is_left_to_gap_tracking_instead_of_skipped(
    sites: SitePair, clock: FrozenClock
) -> None:
    add_uploads(sites, 3)
    assert LogCursor(sites.secondary, batch_size=1).process_batch() == 1
    clock.advance(timedelta(days=8))
    prune_event_log(sites.primary)
    add_uploads(sites, 1)  # a brand-new event: the ids before it might still be in flight
    assert fell_behind_pruned_log(sites.secondary)

    LogCursor(sites.secondary).process_batch()

    position, pruned_behind = cursor_state(sites)
    assert position == event_ids(sites)[-1] and pruned_behind is False
    with sites.secondary.tracking_engine.connect() as conn:
        gaps = list(conn.execute(select(geo_event_gaps.c.event_id)).scalars())
    assert len(gaps) == 2  # re-read after the grace period, dropped after an hour


def test_no_cursor_yet_is_not_behind(sites: SitePair) -> None:
    add_uploads(sites, 2)

    assert fell_behind_pruned_log(sites.secondary) is False
