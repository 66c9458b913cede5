"""`geosync promote --plan`: the promotion plan as a Rich table and its losses as sentences."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from rich.console import Console

    from geosync.promotion_plan import DatabaseState, PromotionPlan, TypePlan

NOT_APPLICABLE = "-"


def render_plan(plan: PromotionPlan, console: Console) -> None:
    """Print the per-type table, the database and event log lines, the verdict and the losses."""
    console.print(plan_table(plan))
    console.print(f"main database: {describe_database(plan.database)}", highlight=False)
    console.print(
        f"event log: newest event {plan.last_event_id or 'none'}, cursor at"
        f" {plan.cursor_last_event_id if plan.cursor_last_event_id is not None else 'not started'},"
        f" {plan.unread_event_count} not read",
        highlight=False,
    )
    if plan.safe:
        console.print("[green]verdict: safe[/green] — a promotion now loses nothing checked here")
        return
    console.print("[red]verdict: data would be lost[/red]")
    for line in plan.losses():
        console.print(f"  - {escape(line)}", highlight=False, soft_wrap=True)


def plan_table(plan: PromotionPlan) -> Table:
    """One row per data type."""
    table = Table(
        "type",
        "on primary",
        "not synced (oldest)",
        "failed",
        "not verified",
        "out of scope",
        "unread events",
        title=f"promotion plan of {plan.node_name}",
        title_justify="left",
    )
    for row in plan.types:
        table.add_row(row.replicable_name_plural, *_cells(row))
    return table


def _cells(row: TypePlan) -> list[str]:
    if not row.replication_enabled:
        return [str(row.primary_count), "replication off", *[NOT_APPLICABLE] * 4]
    oldest = (
        "" if row.oldest_not_synced_at is None else f" ({row.oldest_not_synced_at:%Y-%m-%d %H:%M})"
    )
    verified = str(row.not_verified_count) if row.verification_enabled else NOT_APPLICABLE
    return [
        str(row.primary_count),
        f"{row.not_synced_count}{oldest}",
        str(row.failed_count),
        verified,
        str(row.out_of_scope_count),
        str(row.unread_event_count),
    ]


def describe_database(state: DatabaseState) -> str:
    """The main database in words, for the plan and for `geosync promote`."""
    if state.kind == "shared_sqlite":
        return "SQLite shared with the primary (demo topology): no replication, no lag"
    if state.kind == "writable":
        return "PostgreSQL, writable (not a standby: nothing to promote)"
    lag = state.replication_lag_seconds
    return f"PostgreSQL standby, replication lag {'unknown' if lag is None else f'{lag} s'}"
