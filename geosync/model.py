"""The `Replicable` model mixin and the session hooks that write events in the same transaction.

`before_flush` captures the payload of every deleted replicable while its row still exists;
`after_flush` (still inside the flush, so inside the transaction) writes `created` events for
new rows, whose ids are known by then, and the captured `deleted` events. A rolled-back
transaction therefore takes its events with it. `after_commit` may not run SQL, so it only
wakes local workers. Events go to the site the flushing engine belongs to (`geosync.binding`:
a site's main engine, or an application's engine bound with `Geo.bind`).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import Connection, Integer, String
from sqlalchemy import event as sa_event
from sqlalchemy.orm import (
    Mapped,
    Session,
    SessionTransaction,
    UOWTransaction,
    declared_attr,
    mapped_column,
)

from geosync.db.types import UTCDateTime
from geosync.errors import ConfigurationError
from geosync.replicator import CREATED, DELETED, Replicator

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.events import EventRow

_PENDING_DELETES = "geosync_pending_deletes"
_CHANGED_SITES = "geosync_changed_sites"


class Replicable:
    """Mixin for a model whose records geosync replicates: the one line on the model."""

    _geo_replicators: ClassVar[dict[str, type[Replicator]]]

    @classmethod
    def _geo_register_replicator(cls, replicator: type[Replicator]) -> None:
        """Called when a replicator class names this model; keeps one map per model class."""
        if "_geo_replicators" not in cls.__dict__:
            cls._geo_replicators = {}
        cls._geo_replicators[replicator.replicable_name] = replicator

    @classmethod
    def replicator_classes(cls) -> dict[str, type[Replicator]]:
        """Replicator classes of this model, by replicable name."""
        return dict(cls.__dict__.get("_geo_replicators", {}))

    @property
    def replicators(self) -> dict[str, Replicator]:
        """Every replicator of this record, by replicable name."""
        return {name: rc(self) for name, rc in self.replicator_classes().items()}

    @property
    def replicator(self) -> Replicator:
        """The replicator bound to this record; ambiguous when the model has several."""
        classes = self.replicator_classes()
        if len(classes) != 1:
            names = ", ".join(sorted(classes)) or "none"
            raise ConfigurationError(
                f"{type(self).__name__} has {len(classes)} replicators ({names});"
                " use record.replicators[name]"
            )
        (replicator_class,) = classes.values()
        return replicator_class(self)


class VerificationStateMixin:
    """Keep the primary's verification state in columns on the model's own table (option 1)."""

    @declared_attr
    def verification_state(cls) -> Mapped[int]:
        # The server default makes a row written by raw SQL pending too.
        return mapped_column(Integer, default=0, server_default="0", nullable=False, index=True)

    @declared_attr
    def verification_started_at(cls) -> Mapped[datetime | None]:
        return mapped_column(UTCDateTime, nullable=True)

    @declared_attr
    def verification_retry_at(cls) -> Mapped[datetime | None]:
        return mapped_column(UTCDateTime, nullable=True)

    @declared_attr
    def verification_retry_count(cls) -> Mapped[int]:
        return mapped_column(Integer, default=0, server_default="0", nullable=False)

    @declared_attr
    def verified_at(cls) -> Mapped[datetime | None]:
        return mapped_column(UTCDateTime, nullable=True)

    @declared_attr
    def verification_checksum(cls) -> Mapped[str | None]:
        return mapped_column(String(64), nullable=True)

    @declared_attr
    def verification_failure(cls) -> Mapped[str | None]:
        return mapped_column(String(255), nullable=True)


def _replicators_of(obj: Any) -> list[type[Replicator]]:
    if not isinstance(obj, Replicable):
        return []
    return list(type(obj).replicator_classes().values())


def _collect(objects: Any, event_name: str, into: dict[type[Any], list[EventRow]]) -> None:
    """Add the `event_name` rows of every replicable among `objects` to `into`, by model."""
    for obj in objects:
        if isinstance(obj, Replicable):
            # Kept even when no replicator names the model yet: an application process that never
            # imported its replicators module must still hear that it published nothing.
            rows = into.setdefault(type(obj), [])
            for replicator_class in _replicators_of(obj):
                rows.append(
                    (replicator_class, event_name, replicator_class(obj).payload_for(event_name))
                )


@sa_event.listens_for(Session, "before_flush")
def _capture_deletes(session: Session, _flush: UOWTransaction, _instances: Any) -> None:
    """Capture `deleted` payloads while the rows can still be read."""
    pending: dict[type[Any], list[EventRow]] = session.info.get(_PENDING_DELETES, {})
    _collect(session.deleted, DELETED, pending)
    if pending:
        session.info[_PENDING_DELETES] = pending


@sa_event.listens_for(Session, "after_flush")
def _write_events(session: Session, _flush: UOWTransaction) -> None:
    """Write `created` and captured `deleted` events inside the flushing transaction, to the
    site each record's engine is bound to; an unbound engine is reported (`warn_unbound`).
    """
    by_model: dict[type[Any], list[EventRow]] = {}
    _collect(session.new, CREATED, by_model)
    for model, deleted in session.info.pop(_PENDING_DELETES, {}).items():
        by_model.setdefault(model, []).extend(deleted)
    for connection, models, rows in _by_connection(session, by_model):
        _publish(session, connection, models, rows)


def _by_connection(
    session: Session, by_model: dict[type[Any], list[EventRow]]
) -> list[tuple[Connection, list[type[Any]], list[EventRow]]]:
    """The flushed rows grouped by the connection their model is written through (a session
    may bind models to different engines), in flush order.
    """
    groups: dict[Connection, tuple[list[type[Any]], list[EventRow]]] = {}
    for model, rows in by_model.items():
        connection = session.connection(bind_arguments={"mapper": model})
        models, grouped = groups.setdefault(connection, ([], []))
        models.append(model)
        grouped.extend(rows)
    return [(connection, models, rows) for connection, (models, rows) in groups.items()]


def _publish(
    session: Session, connection: Connection, models: list[type[Any]], rows: list[EventRow]
) -> None:
    from geosync.binding import geo_for_engine, warn_unbound
    from geosync.events import publish_events

    geo = geo_for_engine(connection.engine)
    if geo is None:
        warn_unbound(connection.engine, [model.__name__ for model in models])
        return
    # A replicator this site did not catalogue (another app's, a test's) publishes nothing here.
    rows = [row for row in rows if row[0] in geo.catalog]
    if rows:
        publish_events(geo, connection, rows)
        note_changes(session, geo)


def note_changes(session: Session, geo: Geo) -> None:
    """Remember that `session`'s transaction changed replicable records of `geo`, so its commit
    wakes the site's local workers (called by the flush hook and by `Replicator.publish`).
    """
    session.info.setdefault(_CHANGED_SITES, []).append(geo)


@sa_event.listens_for(Session, "after_commit")
def _wake_workers(session: Session) -> None:
    """After a commit that changed replicable records, wake this process's workers of their
    sites; `after_commit` may not run SQL, and workers elsewhere find the work at their next poll.
    """
    from geosync.primary.changes import changes_committed

    for geo in dict.fromkeys(session.info.pop(_CHANGED_SITES, [])):
        changes_committed(geo)


@sa_event.listens_for(Session, "after_soft_rollback")
def _forget_deletes(session: Session, previous: SessionTransaction) -> None:
    """A rolled-back flush must not leak captured payloads into the next one."""
    session.info.pop(_PENDING_DELETES, None)
    if previous.parent is None:  # the whole transaction is gone, its changes with it
        session.info.pop(_CHANGED_SITES, None)
