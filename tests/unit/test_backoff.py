"""Retry backoff (ARCHITECTURE.md §5): `n**4 + 15 + r*(n+1)` seconds, r in [0, 29], capped."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geosync.backoff import DEFAULT_CAP, MISSING_ON_PRIMARY_CAP, Backoff

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ONE_HOUR = 3600
FOUR_HOURS = 4 * 3600


def bounds(n: int, cap: int) -> tuple[int, int]:
    """The lowest and highest delay in seconds the formula allows for retry `n`."""
    low = min(n**4 + 15, cap + 1**4 + 15)
    high = min(n**4 + 15 + 29 * (n + 1), cap + 1**4 + 15 + 29 * 2)
    return low, high


def seconds_until(moment: datetime) -> float:
    """Seconds from NOW to `moment`."""
    return (moment - NOW).total_seconds()


@given(n=st.integers(min_value=1, max_value=12), seed=st.integers(min_value=0, max_value=2**32))
def test_the_retry_time_stays_within_the_formula_capped_at_one_hour(n: int, seed: int) -> None:
    delay = seconds_until(Backoff(random.Random(seed)).next_retry_time(NOW, n))
    low, high = bounds(n, ONE_HOUR)
    assert low <= delay <= high
    assert delay == int(delay)


@given(n=st.integers(min_value=1, max_value=12), seed=st.integers(min_value=0, max_value=2**32))
def test_missing_on_primary_is_capped_at_four_hours(n: int, seed: int) -> None:
    backoff = Backoff(random.Random(seed))
    delay = seconds_until(backoff.next_retry_time(NOW, n, MISSING_ON_PRIMARY_CAP))
    low, high = bounds(n, FOUR_HOURS)
    assert low <= delay <= high


@pytest.mark.parametrize("n", range(1, 13))
def test_every_bound_of_the_formula_is_reached(n: int) -> None:
    seen = set()
    backoff = Backoff(random.Random(n))
    for _ in range(2000):
        seen.add(seconds_until(backoff.next_retry_time(NOW, n)))
    low, high = bounds(n, ONE_HOUR)
    assert min(seen) == low
    assert max(seen) == high


def test_small_retry_counts_are_not_capped() -> None:
    for n in range(1, 8):
        _, high = bounds(n, ONE_HOUR)
        assert high == n**4 + 15 + 29 * (n + 1), n
        assert high < ONE_HOUR + 16


@pytest.mark.parametrize("n", [8, 12, 20, 21, 1000])
def test_large_retry_counts_wait_one_hour_plus_the_first_delay(n: int) -> None:
    delay = seconds_until(Backoff(random.Random(0)).next_retry_time(NOW, n, DEFAULT_CAP))
    assert ONE_HOUR + 16 <= delay <= ONE_HOUR + 16 + 58


def test_the_delay_grows_with_the_retry_count_on_its_lower_bound() -> None:
    lows = [bounds(n, FOUR_HOURS)[0] for n in range(1, 13)]
    assert lows == sorted(lows)
    assert lows[0] == 16


def test_the_scale_shrinks_every_delay_and_the_cap() -> None:
    backoff = Backoff(random.Random(3), scale=0.001)
    for n in (1, 5, 12):
        delay = seconds_until(backoff.next_retry_time(NOW, n))
        assert 0 < delay <= (ONE_HOUR + 16 + 58) * 0.001


def test_the_same_seed_gives_the_same_retry_times() -> None:
    first = [Backoff(random.Random(7)).next_retry_time(NOW, n) for n in range(1, 13)]
    second = [Backoff(random.Random(7)).next_retry_time(NOW, n) for n in range(1, 13)]
    assert first == second
    assert timedelta(0) < first[0] - NOW
