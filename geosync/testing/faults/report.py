"""The fault table, as Markdown (docs/reliability.md) or as a Rich table (a terminal)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from geosync.testing.faults.base import Row

HEADERS = ("fault", "db", "what was done", "expected", "measured", "result")


def cells(row: Row) -> tuple[str, ...]:
    """One row's cells, in `HEADERS` order."""
    measured = row.measured + (f" ({row.notes})" if row.notes else "")
    return (
        row.scenario,
        row.backend,
        row.done,
        row.expected,
        measured,
        "pass" if row.passed else "FAIL",
    )


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(_escape(c) for c in cells(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def rich_table(rows: Sequence[Row]) -> Any:
    """The rows as a `rich.table.Table`, failures in red."""
    from rich.table import Table

    table = Table(show_lines=True, title="geosync fault suite")
    for header in HEADERS:
        table.add_column(header, overflow="fold")
    for row in rows:
        style = None if row.passed else "bold red"
        table.add_row(*cells(row), style=style)
    return table
