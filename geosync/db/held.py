"""A connection a background loop keeps for its whole life, replaced after any error.

Opening a connection per round costs more than a round of small work on SQLite (pragmas on
connect; the WAL checkpoint when the last connection closes) and a pool checkout on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine

from geosync.db.engines import WRITE_OPTION


class HeldConnection:
    """One connection of `engine`, opened on first use; each `transaction()` is one BEGIN.

    With `reads` its transactions only read (a verification batch's records): on SQLite they
    begin without the write lock, so they never wait for, or hold up, a writer.
    """

    def __init__(self, engine: Engine, *, reads: bool = False) -> None:
        self.engine = engine
        self.reads = reads
        self._conn: Connection | None = None

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A transaction on the held connection; an error closes it (the next opens afresh)."""
        if self._conn is None:
            self._conn = self.engine.connect()
            # Loops write through held connections: take SQLite's write lock at BEGIN.
            self._conn.execution_options(**{WRITE_OPTION: not self.reads})
        try:
            with self._conn.begin():
                yield self._conn
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Give the connection back."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
