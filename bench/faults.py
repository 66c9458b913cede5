"""Benchmark: the fault suite at larger sizes, printed as a table (docs/reliability.md).

Every scenario of `geosync.testing.faults` runs on each backend it applies to: it builds its own
primary and secondary (the demo application), injects its fault, waits (bounded) for the
outcome and reports what was done, what was expected, what was measured and pass or fail. The
PostgreSQL scenarios that restart or lose a database use clusters of their own and TCP proxies;
the shared server is never restarted.

    .venv/bin/python bench/faults.py                                  # every scenario, both DBs
    .venv/bin/python bench/faults.py --only blob-kills web-outage --backend sqlite
    .venv/bin/python bench/faults.py --size blob-kills=2000 --scale 0.5 --markdown table.md
    .venv/bin/python bench/faults.py --list

At the default sizes the whole run takes 6 to 8 minutes on two cores. Exit status 1 if a row
fails. The restart-to-first-transfer times of the SIGKILL storms are printed, not judged.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from geosync.log import configure
from geosync.testing.faults import (
    SCENARIOS,
    FaultContext,
    Row,
    Scenario,
    markdown_table,
    rich_table,
)
from geosync.testing.faults.base import DEFAULT_POSTGRES_URL


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="Run only these scenarios.")
    parser.add_argument("--skip", nargs="+", metavar="NAME", default=[], help="Leave these out.")
    parser.add_argument(
        "--size", action="append", default=[], metavar="NAME=N", help="One scenario's size."
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="Multiply every default size (0.1 for a quick run).",
    )
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=4.0,
        help="Worker lease: how long a killed worker's rows wait for a takeover (default 4).",
    )
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--markdown", type=Path, help="Also write the table as Markdown here.")
    parser.add_argument("--keep", type=Path, help="Run in this directory and keep it.")
    parser.add_argument("--list", action="store_true", help="List the scenarios and exit.")
    args = parser.parse_args(argv)
    unknown = [n for n in [*(args.only or []), *args.skip] if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; there are: {', '.join(SCENARIOS)}")
    args.sizes = {}
    for item in args.size:
        name, _, value = item.partition("=")
        if name not in SCENARIOS or not value.isdigit() or int(value) < 1:
            parser.error(f"--size takes NAME=N with a scenario name and N >= 1, not {item!r}")
        args.sizes[name] = int(value)
    return args


def chosen(args: argparse.Namespace) -> list[Scenario]:
    """The scenarios to run, in table order."""
    names = args.only or list(SCENARIOS)
    return [SCENARIOS[n] for n in SCENARIOS if n in names and n not in args.skip]


def size_of(scenario: Scenario, args: argparse.Namespace) -> int:
    """The size `scenario` runs at."""
    given: int | None = args.sizes.get(scenario.name)
    return given or max(1, round(scenario.large * args.scale))


def run_one(
    scenario: Scenario, backend: str, size: int, args: argparse.Namespace, root: Path
) -> Row:
    """Run one scenario; an exception becomes a failed row naming it."""
    ctx = FaultContext(
        backend,
        root / f"{scenario.name}-{backend}",
        args.postgres_url,
        lease_seconds=args.lease_seconds,
    )
    ctx.root.mkdir(parents=True)
    try:
        return scenario.run(ctx, size)
    except Exception as exc:
        last = traceback.format_exception_only(exc)[-1].strip()
        return Row(
            scenario.name,
            f"{scenario.name} at {size} {scenario.unit}",
            "a row",
            f"the scenario raised {last}",
            False,
            backend=backend,
        )


def header(args: argparse.Namespace, runs: list[tuple[Scenario, str, int]]) -> str:
    """Where and how the table was measured, for the Markdown file."""
    sizes = ", ".join(dict.fromkeys(f"{s.name} {n} {s.unit}" for s, _, n in runs))
    return (
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.system()}"
        f" {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()};"
        f" backends {', '.join(sorted({b for _, b, _ in runs}))}; worker lease"
        f" {args.lease_seconds:g} s; sizes: {sizes}.\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen scenarios and print (and write) the table."""
    args = parse_args(argv)
    console = Console()
    if args.list:
        for s in SCENARIOS.values():
            console.print(
                f"{s.name:24} {s.unit:12} small {s.small:>5}  large {s.large:>5}"
                f"  {'/'.join(s.backends)}"
            )
        return 0
    configure("console", "error")
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    runs = [(s, b, size_of(s, args)) for s in chosen(args) for b in backends if b in s.backends]
    root = args.keep or Path(tempfile.mkdtemp(prefix="geosync-faults-"))
    rows: list[Row] = []
    started = time.monotonic()
    try:
        for scenario, backend, size in runs:
            clock = time.monotonic()
            console.print(f"[bold]{scenario.name}[/] on {backend}, {size} {scenario.unit} ...")
            rows.append(run_one(scenario, backend, size, args, root))
            mark = "pass" if rows[-1].passed else "[red]FAIL[/]"
            console.print(f"  {mark} in {time.monotonic() - clock:.1f} s: {rows[-1].measured}")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    console.print(rich_table(rows))
    failed = sum(1 for r in rows if not r.passed)
    console.print(
        f"{len(rows) - failed} of {len(rows)} passed in {time.monotonic() - started:.0f} s"
    )
    if args.markdown is not None and runs:
        args.markdown.write_text(header(args, runs) + "\n" + markdown_table(rows), encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
