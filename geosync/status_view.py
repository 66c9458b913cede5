"""`geosync status`: every node's status as Rich tables (one per node, a row per replicable)
or as GitLab-shaped JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.table import Table

from geosync.status import NodeStatus, format_percentage, node_statuses

if TYPE_CHECKING:
    from rich.console import Console

    from geosync.app import Geo
    from geosync.nodes import Node
    from geosync.replicator import Replicator

NOT_APPLICABLE = "-"


def status_json(geo: Geo) -> list[dict[str, Any]]:
    """Every node with its status as the REST API shows it (null when never reported)."""
    return [
        {
            "node": {"id": node.id, "name": node.name, "url": node.url, "primary": node.primary},
            "status": None if status is None else status.for_api(),
        }
        for node, status in node_statuses(geo)
    ]


def render_status(geo: Geo, console: Console) -> None:
    """Print one table per node: synced, failed, verified and lag per replicable, and health."""
    for node, status in node_statuses(geo):
        console.print(node_table(geo, node, status))


def node_table(geo: Geo, node: Node, status: NodeStatus | None) -> Table:
    """The table of one node."""
    role = "primary" if node.primary else "secondary"
    health = "never reported" if status is None else _health(status)
    period = None if status is None else status.get("scrub_period_seconds")
    within = "" if period is None else f" (within {_duration(period)})"
    table = Table(
        "replicable",
        "synced",
        "failed",
        f"verified{within}",
        "lag (oldest unsynced)",
        "oldest verification",
        "scrub found bad",
        title=f"{node.name} ({role}) — {health}",
        caption=None if status is None else _caption(status),
        title_justify="left",
    )
    if status is None:
        return table
    for replicator in geo.catalog:
        table.add_row(replicator.replicable_name_plural, *_row(replicator, status, node.primary))
    return table


def _health(status: NodeStatus) -> str:
    if status.healthy:
        return "[green]Healthy[/green]"
    return f"[red]Unhealthy[/red]: {status.get('health')}"


def _row(replicator: type[Replicator], status: NodeStatus, primary: bool) -> list[str]:
    p = replicator.status_field_prefix
    if status.get(p + "count") is None:
        return ["disabled", *[NOT_APPLICABLE] * 5]
    scrub = [_age(status.get(p + "oldest_verification_age_seconds")), _found_bad(status, p)]
    if primary:
        total, done = status.get(p + "checksum_total_count"), status.get(p + "checksummed_count")
        if done is not None:
            done -= status.get(p + "verification_stale_count") or 0
        verified = _ratio(done, total, status.get(p + "verified_in_percentage"))
        return [f"{status[p + 'count']} items", NOT_APPLICABLE, verified, NOT_APPLICABLE, *scrub]
    synced = _ratio(
        status.get(p + "synced_count"),
        status.get(p + "registry_count"),
        status.get(p + "synced_in_percentage"),
    )
    verified = _ratio(
        status.get(p + "verified_count"),
        status.get(p + "verification_total_count"),
        status.get(p + "verified_in_percentage"),
    )
    left = status.get(p + "left_to_object_storage_count")
    if left:  # `sync_object_storage` off: the object store's own replication copies them
        synced = f"{left} left to object storage" + (
            "" if synced.startswith("0/0") else f", {synced}"
        )
    failed = str(status.get(p + "failed_count"))
    lag = _duration(status.get(p + "oldest_unsynced_age_seconds"))
    return [synced, failed, verified, lag, *scrub]


def _age(seconds: Any) -> str:
    return NOT_APPLICABLE if seconds is None else _duration(seconds)


def _found_bad(status: NodeStatus, prefix: str) -> str:
    """Copies the scrub found bad within the period, and how many wait for it."""
    bad = status.get(prefix + "scrub_found_bad_count")
    due = status.get(prefix + "scrub_due_count")
    if bad is None and due is None:
        return NOT_APPLICABLE
    text = str(bad) if bad is not None else NOT_APPLICABLE
    return f"{text} ({due} due)" if due else text


def _ratio(done: Any, total: Any, percent: Any) -> str:
    if done is None or total is None:
        return NOT_APPLICABLE
    return f"{done}/{total} ({format_percentage(percent)})"


def _duration(seconds: Any) -> str:
    if seconds is None:
        return "none"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def _caption(status: NodeStatus) -> str:
    lag = status.get("db_replication_lag_seconds")
    parts = [
        f"db replication lag: {'n/a' if lag is None else _duration(lag)}",
        f"last event: {status.get('last_event_id') or 'none'}",
    ]
    if status.get("cursor_last_event_id") is not None:
        backlog = status.get("cursor_backlog_events")
        behind = "" if backlog is None else f" ({backlog} events behind)"
        parts.append(f"cursor: {status.get('cursor_last_event_id')}{behind}")
    parts.extend(_reachability(status))
    parts.append(f"updated {status.get('updated_at')}")
    return " · ".join(parts)


def _reachability(status: NodeStatus) -> list[str]:
    """The primary and the main database, as the secondary's probes last found them."""
    parts = []
    for target, label in (("primary", "primary"), ("main_database", "main database")):
        reachable = status.get(f"{target}_reachable")
        if reachable is None:
            continue
        away = status.get(f"{target}_unreachable_seconds")
        parts.append(
            f"{label}: reachable"
            if reachable
            else f"{label}: [red]UNREACHABLE[/red] for {_duration(away)}, syncs paused"
        )
    return parts
