"""What every fault scenario shares: the context it runs in and the row it returns."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: The PostgreSQL server scenarios create their databases on when none is given.
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
BACKENDS = ("sqlite", "postgres")


@dataclass(frozen=True)
class FaultContext:
    """Where a scenario runs: the database backend, a scratch directory of its own, the
    PostgreSQL server for fresh databases (never restarted: scenarios that restart a database
    make a cluster of their own) and the worker lease that bounds a dead worker's takeover."""

    backend: str
    root: Path
    postgres_url: str = DEFAULT_POSTGRES_URL
    lease_seconds: float = 4.0
    seed: int = 21

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}: use one of {BACKENDS}")

    def scratch(self, name: str) -> Path:
        """A fresh directory for one part of a scenario."""
        path = self.root / name
        path.mkdir(parents=True, exist_ok=False)
        return path


@dataclass(frozen=True)
class Row:
    """One line of the fault table: what was done, what was expected, what was measured, and
    whether the measurement meets the expectation. `figures` holds the measured values by name
    (tests assert on them); `notes` says what is reported but not judged."""

    scenario: str
    done: str
    expected: str
    measured: str
    passed: bool
    figures: Mapping[str, float] = field(default_factory=dict)
    notes: str = ""
    backend: str = ""


#: A scenario: runs one fault at a size (its unit is the scenario's) and measures the outcome.
ScenarioFunction = Callable[[FaultContext, int], Row]


@dataclass(frozen=True)
class Scenario:
    """A fault scenario with its sizes: `small` in `tests/faults/`, `large` in `bench/faults.py`
    by default. `backends` lists where it means something (a database server restart has no
    SQLite form)."""

    name: str
    run: ScenarioFunction
    unit: str
    small: int
    large: int
    backends: tuple[str, ...] = BACKENDS
