"""Live progress of the demo: per-replicable bars for synced and verified, and the end check."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from geosync.status import compute_status

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.demo.runner import Churn, DemoOptions, Site


@dataclass
class Outcome:
    """How the demo ended."""

    exit_code: int
    message: str
    report: dict[str, Any]


@dataclass
class Snapshot:
    """Both nodes' statuses at one moment."""

    primary: dict[str, Any]
    secondary: dict[str, Any]

    def numbers(self, plural: str) -> tuple[int, int, int, int, int]:
        """(total, synced, failed, verified, checksummed) for one replicable type."""

        def value(status: dict[str, Any], field: str) -> int:
            return int(status.get(f"{plural}_{field}") or 0)

        return (
            value(self.primary, "count"),
            value(self.secondary, "synced_count"),
            value(self.secondary, "failed_count"),
            value(self.secondary, "verified_count"),
            value(self.primary, "checksummed_count"),
        )

    def complete(self, plurals: list[str]) -> bool:
        """Whether the secondary holds, and has verified, exactly what the primary has."""
        for plural in plurals:
            total, synced, _failed, verified, checksummed = self.numbers(plural)
            registry = int(self.secondary.get(f"{plural}_registry_count") or 0)
            if not (total == synced == registry == verified == checksummed):
                return False
        return True


def snapshot(primary: Geo, secondary: Geo) -> Snapshot:
    """Compute both statuses now."""
    return Snapshot(compute_status(primary).for_api(), compute_status(secondary).for_api())


def watch(
    primary: Geo,
    secondary: Geo,
    sites: tuple[Site, Site],
    churn: Churn | None,
    options: DemoOptions,
) -> Outcome:
    """Show progress until the replica is complete (or forever without --exit-when-synced)."""
    from geosync.demo.runner import copies_identical

    plurals = [r.replicable_name_plural for r in primary.catalog]
    console = Console(stderr=True)
    deadline = time.monotonic() + options.timeout
    with Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        console=console,
        disable=options.as_json,
    ) as progress:
        tasks = _tasks(progress, plurals)
        while True:
            for site in sites:
                site.check_alive()
            current = snapshot(primary, secondary)
            _update(progress, tasks, current, plurals)
            churning = churn is not None and not churn.stopped.is_set()
            if options.exit_when_synced and not churning and current.complete(plurals):
                problems = copies_identical(primary, secondary)
                if not problems:
                    return Outcome(
                        0, "secondary is complete: every copy synced and verified", _report(current)
                    )
            if options.exit_when_synced and time.monotonic() > deadline:
                return Outcome(
                    1, _timeout_message(current, plurals, options.timeout), _report(current)
                )
            time.sleep(0.5)


def _tasks(progress: Progress, plurals: list[str]) -> dict[tuple[str, str], TaskID]:
    tasks = {}
    for plural in plurals:
        tasks[(plural, "synced")] = progress.add_task(f"{plural} synced", total=0, note="")
        tasks[(plural, "verified")] = progress.add_task(f"{plural} verified", total=0, note="")
    return tasks


def _update(
    progress: Progress,
    tasks: dict[tuple[str, str], TaskID],
    current: Snapshot,
    plurals: list[str],
) -> None:
    for plural in plurals:
        total, synced, failed, verified, checksummed = current.numbers(plural)
        note = f"[red]{failed} failed[/red]" if failed else ""
        progress.update(tasks[(plural, "synced")], total=total, completed=synced, note=note)
        progress.update(
            tasks[(plural, "verified")],
            total=total,
            completed=verified,
            note=f"primary checksummed {checksummed}",
        )


def _report(current: Snapshot) -> dict[str, Any]:
    return {"primary": current.primary, "secondary": current.secondary}


def _timeout_message(current: Snapshot, plurals: list[str], timeout: float) -> str:
    parts = []
    for plural in plurals:
        total, synced, failed, verified, _ = current.numbers(plural)
        parts.append(f"{plural}: {synced}/{total} synced, {verified} verified, {failed} failed")
    return f"timed out after {timeout:g} s before the secondary was complete: " + "; ".join(parts)
