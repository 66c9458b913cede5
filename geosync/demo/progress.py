"""What the demo shows while it runs: its setup steps from the first second, then live bars per
replicable for synced and verified, and the end check.

Everything goes to stderr (stdout carries only `--json`'s report). On a terminal the bars are
live; written to a pipe or file, each step and a summary every few seconds are plain lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.table import Column
from rich.text import Text

from geosync.status import compute_status

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.demo.runner import Churn, DemoOptions, Site

#: Seconds at least between two summary lines (each one a change) when not on a terminal.
PLAIN_SUMMARY_EVERY = 5.0


@dataclass
class Outcome:
    """How the demo ended."""

    exit_code: int
    message: str
    report: dict[str, Any]


@dataclass(frozen=True)
class Bar:
    """What one progress bar shows: `done` out of `total`, never more done than total."""

    done: int
    total: int

    @classmethod
    def of(cls, done: int, *totals: int) -> Bar:
        """`done` out of the largest of `totals`, or of `done` itself when that is larger.

        The counts come from two sites read one after the other while they change: a record
        deleted on the primary is still synced on the secondary until its event arrives, and
        churn creates and deletes between two reads. The bar then grows rather than overflows.
        """
        return cls(done, max(done, *totals))


@dataclass
class Snapshot:
    """Both nodes' statuses at one moment."""

    primary: dict[str, Any]
    secondary: dict[str, Any]

    def numbers(self, plural: str) -> tuple[int, int, int, int, int]:
        """(total, synced, failed, verified, checksummed) for one replicable type."""
        return (
            self._value(self.primary, plural, "count"),
            self._value(self.secondary, plural, "synced_count"),
            self._value(self.secondary, plural, "failed_count"),
            self._value(self.secondary, plural, "verified_count"),
            self._value(self.primary, plural, "checksummed_count"),
        )

    def registries(self, plural: str) -> int:
        """How many registry rows the secondary has for one type."""
        return self._value(self.secondary, plural, "registry_count")

    def bars(self, plural: str) -> tuple[Bar, Bar]:
        """The synced and verified bars of one type, out of one total: what the primary has,
        or the secondary's registries while deletes are still on their way."""
        count, synced, _failed, verified, _checksummed = self.numbers(plural)
        total = Bar.of(max(synced, verified), count, self.registries(plural)).total
        return Bar.of(synced, total), Bar.of(verified, total)

    def complete(self, plurals: list[str]) -> bool:
        """Whether the secondary holds, and has verified, exactly what the primary has."""
        for plural in plurals:
            total, synced, _failed, verified, checksummed = self.numbers(plural)
            if not (total == synced == self.registries(plural) == verified == checksummed):
                return False
        return True

    def summary(self, plurals: list[str]) -> str:
        """One line: synced, verified and failed per type."""
        parts = []
        for plural in plurals:
            _total, _synced, failed, _verified, _ = self.numbers(plural)
            synced, verified = self.bars(plural)
            parts.append(
                f"{plural}: {synced.done}/{synced.total} synced, {verified.done} verified,"
                f" {failed} failed"
            )
        return "; ".join(parts)

    @staticmethod
    def _value(status: dict[str, Any], plural: str, field: str) -> int:
        return int(status.get(f"{plural}_{field}") or 0)


def snapshot(primary: Geo, secondary: Geo) -> Snapshot:
    """Compute both statuses now."""
    return Snapshot(compute_status(primary).for_api(), compute_status(secondary).for_api())


class _Count(ProgressColumn):
    """`done/total` for counted tasks; `done` or `…` for a setup step."""

    def render(self, task: Task) -> Text:
        if task.fields.get("step"):
            return Text("done" if task.finished else "…", style="progress.download")
        total = int(task.total or 0)
        done = f"{int(task.completed)}".rjust(len(str(total)))
        return Text(f"{done}/{total}", style="progress.download")


class DemoDisplay:
    """The demo's stderr: setup steps, informational lines and the per-type bars.

    `quiet` (`--json`) hides the steps and bars but keeps the informational lines.
    """

    def __init__(self, quiet: bool, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.plain = not self.console.is_terminal
        self.progress = Progress(
            TextColumn("{task.description:<24}"),
            BarColumn(bar_width=18),
            _Count(table_column=Column(no_wrap=True, min_width=11)),
            TextColumn("{task.fields[note]}"),
            console=self.console,
            disable=quiet,
        )
        self._bars: dict[tuple[str, str], TaskID] = {}
        self._summarised = 0.0
        self._summary = ""

    def __enter__(self) -> DemoDisplay:
        self.progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.finish()

    def finish(self) -> None:
        """Stop the live bars (their last state stays on screen); later lines follow them."""
        self.progress.stop()

    def say(self, text: str) -> None:
        """An informational line, never wrapped (URLs and commands stay copyable)."""
        self.console.print(text, soft_wrap=True, highlight=False, markup=False)

    @contextmanager
    def step(self, description: str) -> Iterator[None]:
        """Show a setup step while it runs, then as done."""
        task = self.progress.add_task(description, total=1, note="", step=True)
        if self.plain and not self.quiet:
            self.say(f"{description} …")
        yield
        self.progress.update(task, completed=1)

    def counter(self, description: str, total: int) -> Callable[[], None]:
        """A counted setup step; returns the function that counts one more."""
        task = self.progress.add_task(description, total=total, note="")
        if self.plain and not self.quiet:
            self.say(f"{description}: {total} …")
        return lambda: self.progress.advance(task)

    def show(self, current: Snapshot, plurals: list[str]) -> None:
        """Update the synced and verified bars of every type (created on the first call)."""
        for plural in plurals:
            _total, _synced, failed, _verified, checksummed = current.numbers(plural)
            synced, verified = current.bars(plural)
            notes = {
                "synced": f"[red]{failed} failed[/red]" if failed else "",
                "verified": f"primary checksummed {checksummed}",
            }
            for kind, bar in (("synced", synced), ("verified", verified)):
                key = (plural, kind)
                if key not in self._bars:
                    self._bars[key] = self.progress.add_task(f"{plural} {kind}", total=0, note="")
                self.progress.update(
                    self._bars[key], total=bar.total, completed=bar.done, note=notes[kind]
                )
        now, line = time.monotonic(), current.summary(plurals)
        if self.plain and not self.quiet and now - self._summarised >= PLAIN_SUMMARY_EVERY:
            if line != self._summary:
                self._summarised, self._summary = now, line
                self.say(line)

    def bar(self, plural: str, kind: str) -> Bar:
        """What the `kind` (`synced` or `verified`) bar of `plural` shows now."""
        task = next(t for t in self.progress.tasks if t.id == self._bars[(plural, kind)])
        return Bar(int(task.completed), int(task.total or 0))


def watch(
    primary: Geo,
    secondary: Geo,
    sites: tuple[Site, Site],
    churn: Churn | None,
    options: DemoOptions,
    display: DemoDisplay,
) -> Outcome:
    """Show progress until the replica is complete (or forever without --exit-when-synced)."""
    from geosync.demo.runner import copies_identical

    plurals = [r.replicable_name_plural for r in primary.catalog]
    deadline = time.monotonic() + options.timeout
    while True:
        for site in sites:
            site.check_alive()
        current = snapshot(primary, secondary)
        display.show(current, plurals)
        churning = churn is not None and not churn.stopped.is_set()
        if options.exit_when_synced and not churning and current.complete(plurals):
            problems = copies_identical(primary, secondary)
            if not problems:
                return Outcome(
                    0, "secondary is complete: every copy synced and verified", _report(current)
                )
        if options.exit_when_synced and time.monotonic() > deadline:
            return Outcome(1, _timeout_message(current, plurals, options.timeout), _report(current))
        time.sleep(0.5)


def _report(current: Snapshot) -> dict[str, Any]:
    return {"primary": current.primary, "secondary": current.secondary}


def _timeout_message(current: Snapshot, plurals: list[str], timeout: float) -> str:
    return f"timed out after {timeout:g} s before the secondary was complete: " + current.summary(
        plurals
    )
