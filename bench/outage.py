"""Benchmark: a long outage of the primary's web server during a backfill, with real backoff.

The `web-outage` fault scenario (`geosync.testing.faults.outages`) at bench sizes: the
secondary's worker backfills blobs, the primary's `geosync serve` is SIGKILLed while syncs are
in flight, the application keeps writing for the whole outage, and the server is started again
after `--down` seconds. Retry delays are the real ones (`backoff_scale` 1), so a row that
counted a retry during the outage would wait out its own backoff after the primary's return.

Printed: time from the primary's return to every item synced (target: within 10 s), the most
retries one row counted because of the outage (target: 0), syncs deferred while the primary was
unreachable, and what the secondary's status said meanwhile.

    .venv/bin/python bench/outage.py                       # 60 s outage, 1000 blobs, SQLite
    .venv/bin/python bench/outage.py --down 20 --size 400 --backend postgres
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from geosync.log import configure
from geosync.testing.faults.base import DEFAULT_POSTGRES_URL, FaultContext
from geosync.testing.faults.outages import SYNCED_AFTER, primary_web_server_outage


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--size", type=int, default=1000, help="Blobs in the backfill.")
    parser.add_argument("--down", type=float, default=60.0, help="Seconds the server is down.")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--keep", type=Path, help="Run in this directory and keep it.")
    args = parser.parse_args(argv)
    if args.size < 2 or args.down <= 0:
        parser.error("--size must be at least 2 and --down positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the outage once and print its figures; exit 1 if a target is missed."""
    args = parse_args(argv)
    configure("console", "error")
    root = args.keep or Path(tempfile.mkdtemp(prefix="geosync-outage-"))
    ctx = FaultContext(args.backend, root / "outage", args.postgres_url)
    ctx.root.mkdir(parents=True)
    started = time.monotonic()
    try:
        row = primary_web_server_outage(ctx, args.size, down=args.down, backoff_scale=1.0)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    f = row.figures
    print(
        f"{row.done} ({args.backend}, real retry delays);"
        f" run took {time.monotonic() - started:.0f} s"
    )
    print(
        f"  all synced after the primary's return: {f['recovery_seconds']:.1f} s"
        f" (target <= {SYNCED_AFTER:g} s)"
        if f["recovered"]
        else "  NOT all synced"
    )
    print(
        f"  most retries one row counted because of the outage: {f['retry_growth']:.0f}"
        f" (target 0); failed attempts {f['failed_attempts']:.0f}"
    )
    print(f"  syncs deferred while the primary was unreachable: {f['deferred']:.0f}")
    said = "yes" if f["status_unreachable"] == 1 else "NO"
    print(f"  status said the primary was unreachable: {said}")
    print(f"  {row.measured}")
    passed = row.passed and f["recovered"] == 1 and f["recovery_seconds"] <= SYNCED_AFTER
    print("pass" if passed else "FAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
