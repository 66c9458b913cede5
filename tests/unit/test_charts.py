"""The admin UI's inline SVG charts: points scale to the data and the frame, text is escaped,
empty series draw no line."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

from geosync.web.admin.charts import (
    BOTTOM,
    HEIGHT,
    LEFT,
    RIGHT,
    TOP,
    WIDTH,
    Frame,
    Series,
    hours_between,
    line_chart,
    short_number,
    thin,
)

SVG = "{http://www.w3.org/2000/svg}"
START = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
END = START + timedelta(hours=2)


def parsed(svg: str) -> ET.Element:
    """The chart as XML (it must be well-formed)."""
    return ET.fromstring(svg)


def polyline_coordinates(root: ET.Element, css_class: str) -> list[tuple[float, float]]:
    """The (x, y) pairs of the polyline with `css_class`."""
    (line,) = [p for p in root.iter(f"{SVG}polyline") if css_class in p.get("class", "")]
    pairs = (pair.split(",") for pair in line.get("points", "").split())
    return [(float(x), float(y)) for x, y in pairs]


def test_points_span_the_frame_and_scale_to_the_largest_value() -> None:
    synced = Series("synced", "synced", [(START, 0), (START + timedelta(hours=1), 5), (END, 10)])

    root = parsed(line_chart([synced], START, END, "uploads"))

    left, right = LEFT, WIDTH - RIGHT
    top, bottom = TOP, HEIGHT - BOTTOM
    assert polyline_coordinates(root, "synced") == [
        (left, bottom),
        ((left + right) / 2, (top + bottom) / 2),
        (right, top),
    ]


def test_two_series_share_one_scale() -> None:
    synced = Series("synced", "synced", [(START, 8), (END, 8)])
    failed = Series("failed", "failed", [(START, 2), (END, 4)])

    root = parsed(line_chart([synced, failed], START, END, "t"))

    frame = Frame(START, END, 8)
    assert [y for _, y in polyline_coordinates(root, "synced")] == [frame.y(8)] * 2
    assert [y for _, y in polyline_coordinates(root, "failed")] == [frame.y(2), frame.y(4)]
    assert frame.y(4) == (TOP + HEIGHT - BOTTOM) / 2


def test_points_outside_the_range_are_clamped_to_its_edges() -> None:
    frame = Frame(START, END, 1)

    assert frame.x(START - timedelta(hours=1)) == LEFT
    assert frame.x(END + timedelta(hours=1)) == WIDTH - RIGHT


def test_the_current_values_are_labelled() -> None:
    synced = Series("synced", "synced", [(START, 3), (END, 1234)])
    failed = Series("failed", "failed", [(START, 1), (END, 7)])

    root = parsed(line_chart([synced, failed], START, END, "t"))

    values = [t.text for t in root.iter(f"{SVG}text") if "value" in t.get("class", "")]
    assert values == ["synced 1,234", "failed 7"]


def test_value_labels_of_equal_values_do_not_overlap() -> None:
    synced = Series("synced", "synced", [(END, 0)])
    failed = Series("failed", "failed", [(END, 0)])

    root = parsed(line_chart([synced, failed], START, END, "t"))

    ys = [float(t.get("y", 0)) for t in root.iter(f"{SVG}text") if "value" in t.get("class", "")]
    assert abs(ys[0] - ys[1]) >= 12


def test_hour_ticks_fall_on_whole_hours() -> None:
    start = START + timedelta(minutes=20)
    end = start + timedelta(hours=3)

    assert hours_between(start, end) == [START + timedelta(hours=h) for h in (1, 2, 3)]
    root = parsed(line_chart([], start, end, "t"))
    labels = [t.text for t in root.iter(f"{SVG}text") if t.text and t.text.endswith(":00")]
    assert labels == ["11:00", "12:00", "13:00"]


def test_long_ranges_label_fewer_hours() -> None:
    root = parsed(line_chart([], START, START + timedelta(hours=48), "t"))

    labels = [t.text for t in root.iter(f"{SVG}text") if t.text and t.text.endswith(":00")]
    ticks = [t for t in root.iter(f"{SVG}line") if t.get("class") == "tick"]
    assert len(ticks) == 49
    assert 1 < len(labels) <= 7


def test_the_title_and_labels_are_escaped() -> None:
    hostile = '<script>alert("x")</script> & co'
    line = Series('"><b>', 'x" onload="y', [(START, 1)])

    svg = line_chart([line], START, END, hostile)

    root = parsed(svg)
    assert root.get("aria-label") == hostile
    assert root.find(f"{SVG}title") is not None
    assert root.find(f"{SVG}title").text == hostile  # type: ignore[union-attr]
    assert "<script>" not in svg and "<b>" not in svg
    assert all(element.get("onload") is None for element in root.iter())
    assert [p.get("class") for p in root.iter(f"{SVG}polyline")] == ['line x" onload="y']


def test_empty_series_draw_no_line_and_say_so() -> None:
    root = parsed(line_chart([Series("synced", "synced", [])], START, END, "nothing"))

    assert list(root.iter(f"{SVG}polyline")) == []
    empty = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "chart-empty"]
    assert empty == ["no data"]


def test_the_chart_scales_with_its_container() -> None:
    root = parsed(line_chart([], START, END, "t"))

    assert root.get("viewBox") == f"0 0 {WIDTH:g} {HEIGHT:g}"
    assert root.get("width") is None and root.get("height") is None
    assert root.get("role") == "img"


def test_thin_keeps_at_most_n_points_and_the_newest() -> None:
    points = [(START + timedelta(minutes=m), m) for m in range(2880)]

    kept = thin(points, 240)

    assert len(kept) <= 240 and kept[-1] == points[-1]
    assert kept == sorted(kept)
    assert thin(points[:10], 240) == points[:10]


def test_short_numbers() -> None:
    assert [short_number(n) for n in (0, 950, 1_000, 12_345, 3_400_000)] == [
        "0",
        "950",
        "1.0k",
        "12k",
        "3.4M",
    ]
