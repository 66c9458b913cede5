"""Small line charts drawn on the server as inline SVG: no JavaScript, no chart library.

`line_chart` is a pure function from time series to an SVG string. The chart scales with its
container (`viewBox`, no fixed size); it names itself with `<title>` and `aria-label`, and the
page puts the same numbers in a table beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape

#: The chart's coordinate system (the `viewBox`); the page scales it to its width.
WIDTH = 360.0
HEIGHT = 130.0
#: Room around the plot: the y labels on the left, the current values on the right, the hours
#: below.
LEFT, RIGHT, TOP, BOTTOM = 34.0, 86.0, 10.0, 22.0
#: The most hour labels under one chart (ticks stay hourly; labels thin out on long ranges).
MAX_HOUR_LABELS = 7
#: The least vertical room between two value labels.
LABEL_GAP = 12.0

Point = tuple[datetime, int]


@dataclass(frozen=True)
class Series:
    """One line: its name (shown beside its current value), CSS class and points, oldest first."""

    label: str
    css_class: str
    points: Sequence[Point]

    @property
    def current(self) -> int | None:
        """The newest value, None for an empty series."""
        return self.points[-1][1] if self.points else None


@dataclass(frozen=True)
class Frame:
    """Where the plot sits in the `viewBox`, and the ranges it maps."""

    start: datetime
    end: datetime
    top_value: int

    @property
    def plot_width(self) -> float:
        """Width of the plotting area."""
        return WIDTH - LEFT - RIGHT

    @property
    def plot_height(self) -> float:
        """Height of the plotting area."""
        return HEIGHT - TOP - BOTTOM

    def x(self, moment: datetime) -> float:
        """The x of `moment`: `start` at the left edge, `end` at the right."""
        span = (self.end - self.start).total_seconds() or 1.0
        share = (moment - self.start).total_seconds() / span
        return round(LEFT + self.plot_width * min(max(share, 0.0), 1.0), 1)

    def y(self, value: int) -> float:
        """The y of `value`: 0 on the baseline, `top_value` at the top."""
        return round(TOP + self.plot_height * (1 - value / self.top_value), 1)


def line_chart(series: Sequence[Series], start: datetime, end: datetime, title: str) -> str:
    """An SVG line chart of `series` from `start` to `end`, described by `title`."""
    values = [value for line in series for _, value in line.points]
    frame = Frame(start, end, max([*values, 1]))
    label = escape(title, quote=True)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH:g} {HEIGHT:g}" role="img"'
        f' aria-label="{label}" preserveAspectRatio="xMinYMin meet"'
        ' xmlns="http://www.w3.org/2000/svg">',
        f"<title>{label}</title>",
        *_axes(frame),
        *_hour_ticks(frame),
    ]
    parts.extend(_polyline(frame, line) for line in series if line.points)
    parts.extend(_value_labels(frame, series))
    if not values:
        parts.append(
            f'<text class="chart-empty" x="{LEFT + frame.plot_width / 2:g}"'
            f' y="{TOP + frame.plot_height / 2:g}" text-anchor="middle">no data</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def polyline_points(frame: Frame, points: Sequence[Point]) -> str:
    """The `points` attribute of a polyline through `points`."""
    return " ".join(f"{frame.x(moment):g},{frame.y(value):g}" for moment, value in points)


def _polyline(frame: Frame, line: Series) -> str:
    css = escape(line.css_class, quote=True)
    return (
        f'<polyline class="line {css}" fill="none" points="{polyline_points(frame, line.points)}"/>'
    )


def _axes(frame: Frame) -> list[str]:
    baseline = frame.y(0)
    right = LEFT + frame.plot_width
    return [
        f'<line class="axis" x1="{LEFT:g}" y1="{baseline:g}" x2="{right:g}" y2="{baseline:g}"/>',
        f'<text class="tick" x="{LEFT - 4:g}" y="{baseline:g}" text-anchor="end">0</text>',
        f'<text class="tick" x="{LEFT - 4:g}" y="{TOP + 4:g}" text-anchor="end">'
        f"{short_number(frame.top_value)}</text>",
    ]


def hours_between(start: datetime, end: datetime) -> list[datetime]:
    """Every whole hour from `start` to `end`, both included when they are whole."""
    first = start.replace(minute=0, second=0, microsecond=0)
    if first < start:
        first += timedelta(hours=1)
    hours = []
    while first <= end:
        hours.append(first)
        first += timedelta(hours=1)
    return hours


def _hour_ticks(frame: Frame) -> list[str]:
    hours = hours_between(frame.start, frame.end)
    every = max(1, -(-len(hours) // MAX_HOUR_LABELS))
    baseline = frame.y(0)
    parts = []
    for index, hour in enumerate(hours):
        x = frame.x(hour)
        parts.append(
            f'<line class="tick" x1="{x:g}" y1="{baseline:g}" x2="{x:g}" y2="{baseline + 4:g}"/>'
        )
        if index % every == 0:
            parts.append(
                f'<text class="tick" x="{x:g}" y="{HEIGHT - 6:g}" text-anchor="middle">'
                f"{hour:%H}:00</text>"
            )
    return parts


def _value_labels(frame: Frame, series: Sequence[Series]) -> list[str]:
    placed = sorted(
        ((frame.y(line.current), line) for line in series if line.current is not None),
        key=lambda item: item[0],
    )
    parts = []
    previous = -LABEL_GAP
    for y, line in placed:
        y = max(y + 4, previous + LABEL_GAP)
        previous = y
        css = escape(line.css_class, quote=True)
        text = escape(f"{line.label} {line.current:,}")
        parts.append(
            f'<text class="value {css}" x="{LEFT + frame.plot_width + 6:g}" y="{y:g}">{text}</text>'
        )
    return parts


def short_number(value: int) -> str:
    """`value` in at most four characters or so: 950, 12k, 3.4M."""
    for size, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if value >= size:
            scaled = value / size
            return f"{scaled:.1f}{suffix}" if scaled < 10 else f"{scaled:.0f}{suffix}"
    return str(value)


def thin(points: Sequence[Point], at_most: int) -> list[Point]:
    """At most `at_most` of `points`, evenly spaced, always keeping the newest."""
    if len(points) <= at_most:
        return list(points)
    step = -(-len(points) // at_most)
    kept = list(points[-1::-step])
    kept.reverse()
    return kept
