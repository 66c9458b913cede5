"""The verification pipeline: hashing one batch while the previous one's results are stored.

A verification round is claims, record loads, hashing and stored results. Done one after the
other, the database's round trips and the hashing never overlap, and small files spend more
time on the bookkeeping than on their checksums. The pipeline keeps at most `DEPTH` (2)
batches in flight:

    claim 1 ─ hash 1 ──────────────┐
              claim 2 ─ hash 2 ────┼───────────┐
                        settle 1 + claim 3 ─ hash 3 …

Each transaction settles the oldest finished batch and claims the next, so a batch's results
and the next claim commit together or not at all: a failure between them leaves the settled
batch's rows started under their claim (taken over or timed out like any interrupted claim),
never results stored without the claim that follows, or the other way round. Results are
always settled in claim order, and a batch's checksums are awaited before its transaction
begins, so no transaction (on SQLite: the write lock) is held while files are hashed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Generic, Protocol, TypeVar

from sqlalchemy import Connection

#: Batches in flight at most: one being settled (or claimed) while the other is hashed.
DEPTH = 2


class Pending(Protocol):
    """Work started in the background for one batch (its checksums)."""

    def results(self) -> object:
        """Wait for the work and return it (or raise its error)."""


W = TypeVar("W")
P = TypeVar("P", bound=Pending)


class Pipeline(Generic[W, P]):
    """Runs claim → start → settle over batches with at most `depth` in flight.

    `claim(conn)` claims the next batch in the transaction it is given and returns it, or a
    false value (None: no room, []: no work) to stop claiming; `start(batch)` starts its
    checksums and returns at once; `settle(conn, batch, pending)` stores a finished batch's
    results in the transaction that then claims the next.
    """

    def __init__(
        self,
        transaction: Callable[[], AbstractContextManager[Connection]],
        claim: Callable[[Connection], W | None],
        start: Callable[[W], P],
        settle: Callable[[Connection, W, P], None],
        depth: int = DEPTH,
    ) -> None:
        self.transaction = transaction
        self.claim = claim
        self.start = start
        self.settle = settle
        self.depth = max(1, depth)

    def run(self) -> int:
        """Claim, hash and settle until a claim comes back empty and every batch in flight is
        settled; returns how many batches were settled.

        On an error the batches in flight are waited for (no thread is left hashing for a
        loop that is gone) and the error is raised; their rows stay started under the claim.
        """
        flight: deque[tuple[W, P]] = deque()
        claiming = True
        settled = 0
        try:
            while claiming or flight:
                finished = None
                if flight and (len(flight) >= self.depth or not claiming):
                    finished = flight.popleft()
                    finished[1].results()  # wait outside the transaction
                with self.transaction() as conn:
                    if finished is not None:
                        self.settle(conn, *finished)
                    batch = self.claim(conn) if claiming else None
                if finished is not None:
                    settled += 1
                if batch:
                    flight.append((batch, self.start(batch)))
                else:
                    claiming = False
        except BaseException:
            for _batch, pending in flight:
                _wait_quietly(pending)
            raise
        return settled


def _wait_quietly(pending: Pending) -> None:
    try:
        pending.results()
    except Exception:  # the error that stopped the pipeline is the one to raise
        pass
