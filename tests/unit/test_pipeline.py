"""The verification pipeline's guarantees, on a real SQLite database: batches settle in claim
order, at most two are in flight, a batch's results commit with the next claim or not at all,
and no transaction is open while a batch is hashed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, create_engine, select

from geosync.pipeline import DEPTH, Pipeline

metadata = MetaData()
log = Table(
    "log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("what", String(32), nullable=False),
    Column("batch", Integer, nullable=False),
)


class Hashing:
    """A batch's work on a real thread: sets `in_transaction_at_wait` when it is awaited."""

    def __init__(self, future: Future[int], harness: Harness) -> None:
        self.future = future
        self.harness = harness
        self.awaited_in_transaction: bool | None = None

    def results(self) -> int:
        self.awaited_in_transaction = self.harness.in_transaction
        return self.future.result()


class Harness:
    """Claims batches 1..`batches` (writing a `claim` row each), hashes them on a pool,
    settles them (writing a `settle` row); records what was in flight at every claim."""

    def __init__(self, tmp_path: Path, batches: int, fail_claim: int | None = None) -> None:
        self.engine = create_engine(f"sqlite:///{tmp_path / 'pipeline.db'}")
        metadata.create_all(self.engine)
        self.batches = batches
        self.fail_claim = fail_claim
        self.pool = ThreadPoolExecutor(2)
        self.next = 1
        self.in_transaction = False
        self.in_flight: set[int] = set()
        self.most_in_flight = 0
        self.hashed: list[int] = []
        self.pendings: list[Hashing] = []
        self.release = threading.Event()
        self.release.set()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            self.in_transaction = True
            try:
                yield conn
            finally:
                self.in_transaction = False

    def claim(self, conn: Connection) -> int | None:
        if self.next > self.batches:
            return None
        if self.fail_claim == self.next:
            raise RuntimeError("the database went away")
        batch = self.next
        self.next += 1
        conn.execute(log.insert().values(what="claim", batch=batch))
        self.in_flight.add(batch)
        self.most_in_flight = max(self.most_in_flight, len(self.in_flight))
        return batch

    def start(self, batch: int) -> Hashing:
        def work() -> int:
            self.release.wait(5)
            self.hashed.append(batch)
            return batch * 10

        pending = Hashing(self.pool.submit(work), self)
        self.pendings.append(pending)
        return pending

    def settle(self, conn: Connection, batch: int, pending: Hashing) -> None:
        assert pending.future.result() == batch * 10
        conn.execute(log.insert().values(what="settle", batch=batch))
        self.in_flight.discard(batch)

    def rows(self) -> list[tuple[str, int]]:
        with self.engine.connect() as conn:
            return [(r.what, r.batch) for r in conn.execute(select(log).order_by(log.c.id))]

    def pipeline(self) -> Pipeline[int, Hashing]:
        return Pipeline(self.transaction, self.claim, self.start, self.settle)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.engine.dispose()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    made = Harness(tmp_path, batches=5)
    yield made
    made.close()


def test_batches_settle_in_claim_order_with_two_in_flight(harness: Harness) -> None:
    assert harness.pipeline().run() == 5
    assert harness.rows() == [
        ("claim", 1),
        ("claim", 2),
        ("settle", 1),
        ("claim", 3),
        ("settle", 2),
        ("claim", 4),
        ("settle", 3),
        ("claim", 5),
        ("settle", 4),
        ("settle", 5),
    ]
    assert harness.most_in_flight == DEPTH == 2
    assert sorted(harness.hashed) == [1, 2, 3, 4, 5]


def test_no_transaction_is_open_while_a_batch_is_awaited(harness: Harness) -> None:
    harness.pipeline().run()
    # The pipeline waits for each batch before the transaction that settles it begins.
    assert harness.pendings
    assert all(p.awaited_in_transaction is False for p in harness.pendings)


def test_the_next_batch_is_claimed_while_the_first_is_hashed(harness: Harness) -> None:
    harness.release.clear()
    runner = threading.Thread(target=harness.pipeline().run)
    runner.start()
    try:
        deadline = threading.Event()
        for _ in range(100):
            if ("claim", 2) in harness.rows():
                break
            deadline.wait(0.05)
        # Batch 1 is still being hashed, and batch 2 is claimed already; nothing is settled.
        assert harness.rows() == [("claim", 1), ("claim", 2)]
        assert harness.hashed == []
    finally:
        harness.release.set()
        runner.join(10)
    assert not runner.is_alive()


def test_a_failed_claim_rolls_back_the_results_it_would_have_committed_with(
    tmp_path: Path,
) -> None:
    harness = Harness(tmp_path, batches=5, fail_claim=3)
    try:
        with pytest.raises(RuntimeError, match="went away"):
            harness.pipeline().run()
        # Batch 1 was settled in the transaction whose claim of batch 3 failed: neither is
        # stored, so batch 1 stays claimed (as after a crash there) and nothing is half-done.
        assert harness.rows() == [("claim", 1), ("claim", 2)]
        # The batches in flight were waited for: no thread is left hashing for the pipeline.
        assert all(p.future.done() for p in harness.pendings)
    finally:
        harness.close()


def test_an_empty_claim_ends_the_round_after_the_batches_in_flight(tmp_path: Path) -> None:
    harness = Harness(tmp_path, batches=1)
    try:
        assert harness.pipeline().run() == 1
        assert harness.rows() == [("claim", 1), ("settle", 1)]
    finally:
        harness.close()
    idle = Harness(tmp_path, batches=0)
    try:
        assert idle.pipeline().run() == 0
    finally:
        idle.close()
