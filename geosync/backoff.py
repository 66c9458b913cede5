"""Retry delays of failed syncs and verifications (ARCHITECTURE.md §5)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

#: The longest a failed sync waits for its next retry (beyond `delay(1)`).
DEFAULT_CAP = timedelta(hours=1)
#: The cap for a record the primary does not have (it may never come back).
MISSING_ON_PRIMARY_CAP = timedelta(hours=4)
#: The cap for a permanent error (an unsafe path, a full disk): retrying will not fix it, an
#: operator must, so it is retried only now and then to notice the fix.
PERMANENT_CAP = timedelta(hours=4)
#: A permanent error's first retry is retry number `1 + PERMANENT_STEPS` on the curve (about
#: 5 minutes, not 15 seconds): the backoff starts where a transient one has grown to.
PERMANENT_STEPS = 3


@dataclass(frozen=True)
class Backoff:
    """Retry delays: `n**4 + 15 + r*(n+1)` seconds with r in [0, 29], capped (§5)."""

    rng: random.Random
    scale: float = 1.0

    def delay(self, n: int) -> timedelta:
        """The delay before retry number `n` (n ≥ 1)."""
        r = self.rng.randint(0, 29)
        return timedelta(seconds=(n**4 + 15 + r * (n + 1)) * self.scale)

    def next_retry_time(self, now: datetime, n: int, cap: timedelta = DEFAULT_CAP) -> datetime:
        """When retry number `n` is due: `min(now + delay(n), now + cap + delay(1))`."""
        capped = now + cap * self.scale + self.delay(1)
        if n > 20:  # n**4 alone exceeds any cap; avoid huge timedeltas
            return capped
        return min(now + self.delay(n), capped)

    def next_permanent_retry_time(self, now: datetime, n: int) -> datetime:
        """When retry number `n` of a permanent error is due: later on the curve, capped at
        `PERMANENT_CAP`."""
        return self.next_retry_time(now, n + PERMANENT_STEPS, PERMANENT_CAP)
