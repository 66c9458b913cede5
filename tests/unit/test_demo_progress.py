"""The demo's progress model: a bar never shows more done than its total."""

from __future__ import annotations

import io
import re

from rich.console import Console

from geosync.demo.progress import Bar, DemoDisplay, Snapshot


def statuses(count: int, synced: int, registries: int, verified: int, failed: int = 0) -> Snapshot:
    """Both sites' status fields for uploads, as `compute_status(...).for_api()` names them."""
    return Snapshot(
        primary={"uploads_count": count, "uploads_checksummed_count": count},
        secondary={
            "uploads_synced_count": synced,
            "uploads_registry_count": registries,
            "uploads_verified_count": verified,
            "uploads_failed_count": failed,
        },
    )


def test_a_bar_grows_to_what_is_done_rather_than_overflow() -> None:
    assert Bar.of(3, 10) == Bar(3, 10)
    assert Bar.of(12, 10) == Bar(12, 12)
    assert Bar.of(7, 5, 6) == Bar(7, 7)
    assert Bar.of(0, 0) == Bar(0, 0)


def test_deletes_not_yet_on_the_secondary_count_in_the_total() -> None:
    # The primary deleted 2 of 12 uploads; the secondary still has them synced and verified:
    # the bars used to read 12/10.
    synced, verified = statuses(count=10, synced=12, registries=12, verified=12).bars("uploads")

    assert synced == Bar(12, 12) and verified == Bar(12, 12)


def test_counts_read_at_different_moments_never_overflow() -> None:
    # Registry count read after a delete, synced count before it.
    synced, verified = statuses(count=9, synced=11, registries=10, verified=4).bars("uploads")

    assert synced == Bar(11, 11) and verified == Bar(4, 11)
    assert statuses(count=20, synced=5, registries=8, verified=2).bars("uploads") == (
        Bar(5, 20),
        Bar(2, 20),
    )


def test_the_live_bars_and_summary_lines_never_show_more_done_than_total() -> None:
    out = io.StringIO()
    display = DemoDisplay(quiet=False, console=Console(file=out, width=120))
    display.plain = True
    # A churning demo: creates, then deletes the secondary has not heard of yet.
    ticks = [(10, 4, 10, 2), (14, 12, 14, 9), (11, 14, 14, 13), (11, 11, 11, 11)]

    with display:
        for count, synced, registries, verified in ticks:
            display._summarised = 0.0  # a summary line every tick
            display.show(statuses(count, synced, registries, verified), ["uploads"])
            for kind in ("synced", "verified"):
                bar = display.bar("uploads", kind)
                assert bar.done <= bar.total, (kind, bar)
        shown = display.bar("uploads", "synced")

    assert shown == Bar(11, 11)
    fractions = [tuple(map(int, m)) for m in re.findall(r"(\d+)/(\d+) synced", out.getvalue())]
    assert fractions == [(4, 10), (12, 14), (14, 14), (11, 11)]
    assert all(done <= total for done, total in fractions)
