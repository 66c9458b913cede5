"""Leases (`geo_leases`): at most one holder of a named role per site, renewed while alive.

Several worker processes may run; the one holding the lease does the singleton work (the log
cursor), the others stand by and take over when the lease expires — or at once when its holder
is proven dead (`geosync.liveness`). Each worker also holds a liveness lease of its own,
`worker:<holder>`, naming its process.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from geosync.db.tables import geo_leases

DEFAULT_TTL = timedelta(seconds=30)
#: The names of worker liveness leases start with this, followed by the holder.
LIVENESS_PREFIX = "worker:"


@dataclass(frozen=True)
class Lease:
    """One lease as stored: who holds it, until when, and (liveness leases) which process."""

    name: str
    holder: str
    expires_at: datetime
    process: str | None


def liveness_name(holder: str) -> str:
    """The name of `holder`'s liveness lease."""
    return LIVENESS_PREFIX + holder


def acquire(
    conn: Connection,
    name: str,
    holder: str,
    now: datetime,
    ttl: timedelta = DEFAULT_TTL,
    process: str | None = None,
) -> bool:
    """Take or renew lease `name` for `holder`; False when someone else holds it."""
    t = geo_leases
    values = {"holder": holder, "expires_at": now + ttl, "process": process}
    renewed = conn.execute(
        update(t)
        .where(t.c.name == name, (t.c.holder == holder) | (t.c.expires_at < now))
        .values(**values)
    )
    if renewed.rowcount:
        return True
    if conn.execute(select(t.c.name).where(t.c.name == name)).first() is not None:
        return False
    try:
        with conn.begin_nested():
            conn.execute(insert(t).values(name=name, **values))
    except IntegrityError:
        return False
    return True


def take_from(
    conn: Connection, name: str, dead: str, holder: str, now: datetime, ttl: timedelta
) -> bool:
    """Take lease `name` from `dead`, a holder proven dead, for `holder`; False when `dead`
    no longer holds it (another standby was quicker)."""
    t = geo_leases
    taken = conn.execute(
        update(t)
        .where(t.c.name == name, t.c.holder == dead)
        .values(holder=holder, expires_at=now + ttl, process=None)
    )
    return bool(taken.rowcount)


def release(conn: Connection, name: str, holder: str) -> None:
    """Give lease `name` up so a standby can take it at once."""
    conn.execute(
        geo_leases.delete().where(geo_leases.c.name == name, geo_leases.c.holder == holder)
    )


def holder_of(conn: Connection, name: str) -> str | None:
    """Who holds lease `name` (expired or not), or None when nobody does."""
    t = geo_leases
    return conn.execute(select(t.c.holder).where(t.c.name == name)).scalar_one_or_none()


def liveness_leases(conn: Connection, holders: Iterable[str]) -> dict[str, Lease]:
    """The liveness leases of `holders` that exist, by holder."""
    names = sorted({liveness_name(holder) for holder in holders})
    if not names:
        return {}
    t = geo_leases
    rows = conn.execute(select(t).where(t.c.name.in_(names)))
    return {
        r.holder: Lease(r.name, r.holder, r.expires_at, r.process)
        for r in rows
        if r.name == liveness_name(r.holder)
    }


def prune_liveness(conn: Connection, expired_before: datetime) -> int:
    """Delete the liveness leases that expired before `expired_before` (workers long gone,
    whose rows were taken over); returns how many went."""
    t = geo_leases
    liveness = t.c.name.startswith(LIVENESS_PREFIX, autoescape=True)
    return int(conn.execute(delete(t).where(liveness, t.c.expires_at < expired_before)).rowcount)
