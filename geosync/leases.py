"""Leases (`geo_leases`): at most one holder of a named role per site, renewed while alive.

Several worker processes may run; the one holding the lease does the singleton work (the log
cursor), the others stand by and take over when the lease expires.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from geosync.db.tables import geo_leases

DEFAULT_TTL = timedelta(seconds=30)


def acquire(
    conn: Connection, name: str, holder: str, now: datetime, ttl: timedelta = DEFAULT_TTL
) -> bool:
    """Take or renew lease `name` for `holder`; False when someone else holds it."""
    t = geo_leases
    renewed = conn.execute(
        update(t)
        .where(t.c.name == name, (t.c.holder == holder) | (t.c.expires_at < now))
        .values(holder=holder, expires_at=now + ttl)
    )
    if renewed.rowcount:
        return True
    if conn.execute(select(t.c.name).where(t.c.name == name)).first() is not None:
        return False
    try:
        with conn.begin_nested():
            conn.execute(insert(t).values(name=name, holder=holder, expires_at=now + ttl))
    except IntegrityError:
        return False
    return True


def release(conn: Connection, name: str, holder: str) -> None:
    """Give lease `name` up so a standby can take it at once."""
    conn.execute(
        geo_leases.delete().where(geo_leases.c.name == name, geo_leases.c.holder == holder)
    )


def live_holders(conn: Connection, prefix: str, now: datetime) -> set[str]:
    """The holders of the unexpired leases whose names start with `prefix` (the live workers
    of a site, by their liveness leases `worker:<holder>`)."""
    t = geo_leases
    rows = conn.execute(
        select(t.c.holder).where(t.c.name.startswith(prefix), t.c.expires_at >= now)
    )
    return set(rows.scalars())
