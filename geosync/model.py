"""The `Replicable` model mixin and the session hooks that write events in the same transaction.

`before_flush` captures the payload of every deleted replicable while its row still exists;
`after_flush` (still inside the flush, so inside the transaction) writes `created` events for
new rows, whose ids are known by then, and the captured `deleted` events. A rolled-back
transaction therefore takes its events with it. `after_commit` may not run SQL, so it only
wakes local workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import Connection, Integer, String, bindparam, select
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Mapped, Session, UOWTransaction, declared_attr, mapped_column

from geosync.db.types import UTCDateTime
from geosync.errors import ConfigurationError
from geosync.replicator import CREATED, DELETED, Replicator

if TYPE_CHECKING:
    pass

_PENDING_DELETES = "geosync_pending_deletes"


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
        return mapped_column(Integer, default=0, nullable=False, index=True)

    @declared_attr
    def verification_started_at(cls) -> Mapped[datetime | None]:
        return mapped_column(UTCDateTime, nullable=True)

    @declared_attr
    def verification_retry_at(cls) -> Mapped[datetime | None]:
        return mapped_column(UTCDateTime, nullable=True)

    @declared_attr
    def verification_retry_count(cls) -> Mapped[int]:
        return mapped_column(Integer, default=0, nullable=False)

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


@sa_event.listens_for(Session, "before_flush")
def _capture_deletes(session: Session, _flush: UOWTransaction, _instances: Any) -> None:
    """Capture `deleted` payloads while the rows can still be read."""
    pending: list[tuple[type[Replicator], dict[str, Any]]] = []
    for obj in session.deleted:
        for replicator_class in _replicators_of(obj):
            replicator = replicator_class(obj)
            pending.append((replicator_class, replicator.payload_for(DELETED)))
    if pending:
        session.info.setdefault(_PENDING_DELETES, []).extend(pending)


@sa_event.listens_for(Session, "after_flush")
def _write_events(session: Session, _flush: UOWTransaction) -> None:
    """Write `created` and captured `deleted` events inside the flushing transaction."""
    from geosync.app import geo_for_engine
    from geosync.events import publish_events

    rows: list[tuple[type[Replicator], str, dict[str, Any]]] = []
    for obj in session.new:
        for replicator_class in _replicators_of(obj):
            rows.append((replicator_class, CREATED, replicator_class(obj).payload_for(CREATED)))
    for replicator_class, payload in session.info.pop(_PENDING_DELETES, []):
        rows.append((replicator_class, DELETED, payload))
    if not rows:
        return
    connection = session.connection()
    geo = geo_for_engine(connection.engine)
    if geo is None:
        return
    # A replicator this site did not catalogue (another app's, a test's) publishes nothing here.
    rows = [row for row in rows if row[0] in geo.catalog]
    if rows:
        publish_events(geo, connection, rows)


@sa_event.listens_for(Session, "after_soft_rollback")
def _forget_deletes(session: Session, _previous: Any) -> None:
    """A rolled-back flush must not leak captured payloads into the next one."""
    session.info.pop(_PENDING_DELETES, None)


def load_records(connection: Connection, model: type[Any], ids: Sequence[int]) -> dict[int, Any]:
    """The records of `model` with `ids` (detached), by id, in one query on `connection`.

    Syncs and the primary's batch answers load records many at a time, many times a second.
    """
    mapper = model.__mapper__
    with Session(connection, expire_on_commit=False) as session:
        found = session.scalars(_records_by_ids(model), {"ids": list(ids)}).all()
        session.expunge_all()
    return {int(mapper.primary_key_from_instance(record)[0]): record for record in found}


_RECORDS_BY_IDS: dict[type[Any], Any] = {}


def _records_by_ids(model: type[Any]) -> Any:
    """`SELECT model WHERE id IN :ids`, built once per model."""
    statement = _RECORDS_BY_IDS.get(model)
    if statement is None:
        key = model.__mapper__.primary_key[0]
        statement = select(model).where(key.in_(bindparam("ids", expanding=True)))
        _RECORDS_BY_IDS[model] = statement
    return statement
