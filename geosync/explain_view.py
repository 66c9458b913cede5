"""The terminal form of `geosync explain`: the diagnosis first, then the facts behind it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from geosync.explain import Explanation


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return escape(str(value))


def _no_checksum(explanation: Explanation) -> str:
    state = explanation.primary_verification_state or "not started"
    return f"none (primary verification: {state})"


def fact_rows(explanation: Explanation) -> list[tuple[str, Any]]:
    """Flag, scope, primary and registry facts as (label, value) pairs, for any renderer."""
    e = explanation
    rows: list[tuple[str, Any]] = [
        ("node", e.node_name),
        ("feature flag", f"{e.flag_name}: {'on' if e.flag_enabled else 'off'}"),
        ("scope", e.scope),
        ("in scope", {True: "yes", False: "no", None: "-"}[e.in_scope]),
        ("on the primary", "exists" if e.exists_on_primary else "does not exist"),
        ("primary checksum", e.primary_checksum or _no_checksum(e)),
        ("next retry", e.next_retry_at),
    ]
    if e.left_to_object_storage:
        rows.append(("object storage", "left to the store's own replication"))
    if e.copy_location is not None:
        rows.append(("copy", e.copy_location))
    if e.registry is None:
        return [*rows, ("registry", "none")]
    for key, value in e.registry.items():
        if value not in (None, False, 0) or key in ("state", "verification_state"):
            rows.append((key, value))
    return rows


def facts_table(explanation: Explanation) -> Table:
    """Flag, scope, primary and registry facts as a two-column table."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for label, value in fact_rows(explanation):
        table.add_row(label, _text(value))
    return table


def attempts_table(explanation: Explanation) -> Table:
    """The attempt history, newest first."""
    table = Table("finished", "kind", "outcome", "error class", "message", title="last attempts")
    for attempt in explanation.attempts:
        table.add_row(
            _text(attempt.finished_at),
            attempt.kind,
            attempt.outcome,
            _text(attempt.error_class),
            _text(attempt.message),
        )
    return table


def render_explanation(explanation: Explanation, console: Console) -> None:
    """Print the diagnosis, the next step, the facts and the attempt history."""
    e = explanation
    console.print(f"[bold]{e.replicable_name} {e.model_record_id}[/bold]", highlight=False)
    console.print(escape(e.summary), highlight=False, soft_wrap=True)
    console.print(f"[bold]next step:[/bold] {escape(e.next_step)}", highlight=False)
    console.print()
    console.print(facts_table(e))
    if e.attempts:
        console.print()
        console.print(attempts_table(e))
    else:
        console.print("\nno attempts recorded")
