"""Takeover: the work of dead workers goes back to the queue as soon as their death is known.

A worker killed outright (SIGKILL, the OOM killer, a power cut) leaves its syncs and its
verifications `started`; they hold the site's capacity and nobody finishes them. Every live
worker's stuck sweep — its first round as the worker starts, then every poll interval — reads
who holds started rows, asks `geosync.liveness` which of those workers are dead (on this
machine at once, by their process; elsewhere once their lease lapsed) and gives their rows back:

- a sync goes back to where its claim found it, due at once and with its retry count kept: a
  pending row is pending again, a failed one failed and due now (`Registry.interrupted_by`);
- a verification goes back to pending, its retry count kept (`Verifiable.interrupted_by`);
- each gets an `interrupted` attempt, so `geosync explain` shows what happened.

Rows of live workers are never touched: the rows' holders are read before the leases, and a
worker writes its lease before its first claim, so a holder seen on a row and judged dead had
its lease when the leases were read.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Connection

from geosync.attempts import INTERRUPTED, Attempt, record_attempts
from geosync.liveness import dead_holders
from geosync.log import get_logger
from geosync.registry import Interruption, Registry
from geosync.verification import Verifiable, registry_verifiable

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.replicator import Replicator

log = get_logger("takeover")


@dataclass
class Takeover:
    """What one takeover gave back: the syncs by replicator (the stuck sweep removes what their
    workers left beside those rows' copies) and how many verifications."""

    syncs: dict[type[Replicator], list[int]] = field(default_factory=dict)
    verifications: int = 0

    @property
    def sync_count(self) -> int:
        """How many syncs were given back."""
        return sum(len(ids) for ids in self.syncs.values())


def interruption_message(holder: str, how: str, kind: str = "Sync") -> str:
    """Why a dead worker's sync (or verification) went back to the queue, for the row and its
    attempt."""
    return f"{kind} interrupted: the worker running it stopped ({holder}: {how})"


def take_over(geo: Geo) -> Takeover:
    """Give the started syncs and verifications of dead workers back to the queue."""
    targets = [_Target.of(geo, replicator) for replicator in geo.catalog]
    with geo.tracking_engine.connect() as conn:
        held = set().union(*(target.holders(conn) for target in targets))
        dead = dead_holders(conn, held, geo.clock.now()) if held else {}
    done = Takeover()
    if not dead:
        return done
    with geo.tracking() as conn:
        attempts: list[Attempt] = []
        now = geo.clock.now()
        for holder, how in dead.items():
            message = interruption_message(holder, how)
            for target in targets:
                syncs, verifications = target.interrupt(conn, holder, message)
                if syncs:
                    done.syncs.setdefault(target.replicator, []).extend(
                        row.model_record_id for row in syncs
                    )
                done.verifications += len(verifications)
                attempts.extend(target.attempts(syncs, verifications, holder, how, now))
        record_attempts(conn, attempts)
    for holder, how in dead.items():
        log.warning("took over the work of a dead worker", dead=holder, known_by=how)
    return done


@dataclass(frozen=True)
class _Target:
    """One replicator's registry and, when it is verified, its verification columns."""

    replicator: type[Replicator]
    registry: Registry
    verifiable: Verifiable | None

    @classmethod
    def of(cls, geo: Geo, replicator: type[Replicator]) -> _Target:
        verifiable = (
            registry_verifiable(geo, replicator) if replicator.verification_enabled else None
        )
        return cls(replicator, Registry(geo, replicator), verifiable)

    def holders(self, conn: Connection) -> set[str]:
        held = self.registry.holders(conn)
        return held | self.verifiable.holders(conn) if self.verifiable is not None else held

    def interrupt(
        self, conn: Connection, holder: str, message: str
    ) -> tuple[list[Interruption], list[Interruption]]:
        syncs = self.registry.interrupted_by(conn, holder, message)
        if self.verifiable is None:
            return syncs, []
        verifications = [
            Interruption(key, started)
            for key, started in self.verifiable.interrupted_by(conn, holder)
        ]
        return syncs, verifications

    def attempts(
        self,
        syncs: Iterable[Interruption],
        verifications: Iterable[Interruption],
        holder: str,
        how: str,
        now: datetime,
    ) -> list[Attempt]:
        message = interruption_message(holder, how)
        checked = interruption_message(holder, how, "Verification")
        name = self.replicator.replicable_name
        found = [
            Attempt(
                name,
                row.model_record_id,
                "sync",
                row.started_at or now,
                now,
                INTERRUPTED,
                message=message,
            )
            for row in syncs
        ]
        found.extend(
            Attempt(
                name,
                row.model_record_id,
                "verification",
                row.started_at or now,
                now,
                INTERRUPTED,
                message=checked,
            )
            for row in verifications
        )
        return found
