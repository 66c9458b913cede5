"""The replicator base class: one per replicable kind, declared by the application.

A concrete replicator names its model and implements one strategy method (`blob_path` or
`repository_path`); every name, table, event, worker and API field is derived from it.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

from sqlalchemy import Select, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import object_session

from geosync.errors import ConfigurationError, NotFound, RecordNotFound, UnsupportedEvent
from geosync.names import DerivedNames

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from geosync.app import Geo
    from geosync.nodes import Node
    from geosync.registry import RegistryRow
    from geosync.secondary.settlement import Success
    from geosync.secondary.sync import SyncService
    from geosync.settings import Settings

CREATED = "created"
UPDATED = "updated"
DELETED = "deleted"
CHECKSUM_SUCCEEDED = "checksum_succeeded"


class Replicator:
    """Base of every replicator; subclass `BlobReplicator` or `RepositoryReplicator` instead."""

    #: Set by strategy base classes; a class with `abstract = True` derives no names.
    abstract: ClassVar[bool] = True
    strategy: ClassVar[str] = ""
    model: ClassVar[type[Any]]
    mutable: ClassVar[bool] = False
    replication_enabled_by_default: ClassVar[bool] = True
    verification_enabled: ClassVar[bool] = True
    sync_timeout: ClassVar[timedelta] = timedelta(hours=8)
    #: The model column the API's `keyword` argument searches (a path, a name); None: the
    #: type cannot be searched by keyword.
    keyword_column: ClassVar[str | None] = None

    # -- what a strategy declares (everything that differs between kinds of replicable) ------
    #: What one copy is called in messages ("file", "repository").
    noun: ClassVar[str] = "item"
    #: The node field that caps this kind's concurrent syncs on a secondary; kinds naming the
    #: same field share its capacity.
    capacity_setting: ClassVar[str] = "files_max_capacity"
    #: Whether the syncs of many items of one replicator share one batch request.
    batches: ClassVar[bool] = False
    #: Whether a copy is a git mirror, locked by a `<mirror>.lock` file beside it while fetched.
    copy_lock_file: ClassVar[bool] = False

    names: ClassVar[DerivedNames]
    replicable_name: ClassVar[str]
    replicable_name_plural: ClassVar[str]
    registry_table_name: ClassVar[str]
    registry_foreign_key: ClassVar[str]
    states_table_name: ClassVar[str]
    replication_flag_name: ClassVar[str]
    graphql_field_name: ClassVar[str]
    graphql_type_name: ClassVar[str]
    registry_class_enum: ClassVar[str]
    status_field_prefix: ClassVar[str]
    prometheus_prefix: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("abstract", False):
            return
        cls.abstract = False
        plural = cls.__dict__.get("replicable_name_plural")
        cls.names = DerivedNames.for_class(cls.__name__, plural)
        for attribute, value in cls.names.as_dict().items():
            setattr(cls, attribute, value)
        cls.prometheus_prefix = cls.names.prometheus_prefix
        model = cls.__dict__.get("model")
        if model is not None and hasattr(model, "_geo_register_replicator"):
            model._geo_register_replicator(cls)

    def __init__(
        self,
        model_record: Any | None = None,
        *,
        model_record_id: int | None = None,
        geo: Geo | None = None,
    ) -> None:
        if model_record is None and model_record_id is None:
            raise TypeError("give model_record or model_record_id")
        if model_record is not None and not isinstance(model_record, self.model):
            raise TypeError(f"{type(self).__name__} replicates {self.model.__name__} records")
        self._model_record = model_record
        self._model_record_id = model_record_id
        self._geo = geo

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.replicable_name} #{self.model_record_id}>"

    # -- declaration -------------------------------------------------------------------------

    @classmethod
    def declared_events(cls) -> frozenset[str]:
        """The events this replicator's strategy publishes and consumes."""
        events = {CREATED, DELETED}
        if cls.verification_enabled:
            events.add(CHECKSUM_SUCCEEDED)
        return frozenset(events)

    @classmethod
    def validate_declaration(cls) -> list[str]:
        """Problems with this class's declaration, each a sentence naming the class."""
        problems = []
        model = getattr(cls, "model", None)
        if model is None:
            problems.append(f"{cls.__name__} has no model (set `model = YourModel`)")
        elif not _is_replicable(model):
            problems.append(
                f"{cls.__name__}.model is {getattr(model, '__name__', model)!r},"
                " which is not a Replicable model (add the Replicable mixin)"
            )
        elif cls.keyword_column is not None and cls.keyword_column not in model.__table__.c:
            problems.append(
                f"{cls.__name__}.keyword_column is {cls.keyword_column!r}, which is not a column"
                f" of {model.__table__.name}"
            )
        if not cls.__name__.endswith("Replicator"):
            problems.append(f"{cls.__name__}: a replicator class name must end in 'Replicator'")
        return problems

    # -- the strategy's behaviour (overridden by each strategy) ---------------------------------

    @classmethod
    def keeps_checksum(cls) -> bool:
        """Whether a record keeps its reference checksum once it has one: true only for content
        that cannot change, so a corrupted copy keeps failing until it is restored."""
        return False

    @classmethod
    def storage_root(cls, settings: Settings) -> Path:
        """The directory this kind's copies (`local_path`s) are relative to on a site."""
        raise ConfigurationError(f"{cls.__name__} keeps no copies in a storage")

    @classmethod
    def path_in_payload(cls, payload: dict[str, Any]) -> str | None:
        """Where a deleted record's copy was, from its `deleted` event's payload."""
        return None

    @classmethod
    def remove_copy(cls, settings: Settings, local_path: str) -> bool:
        """Delete this site's copy at `local_path` (relative to the storage root), only inside
        the root and never what a symlink points to; missing is fine. Returns if removed.
        `ValidationError` for a path that may not be removed."""
        raise ConfigurationError(f"{cls.__name__} keeps no copies in a storage")

    def local_path(self) -> str:
        """Where the bound record's copy lives, relative to the storage root."""
        raise ConfigurationError(f"{type(self).__name__} keeps no copies in a storage")

    def copy_path(self) -> Path:
        """Absolute path of this site's copy of the bound record."""
        raise ConfigurationError(f"{type(self).__name__} keeps no copies in a storage")

    def served_file(self) -> Path:
        """The file the primary sends a secondary for this record (`GET .../retrieve/...`):
        a blob's own file; a strategy whose copy is not one file may build one. `NotFound` for
        kinds served another way (the answer reveals nothing about the catalog)."""
        raise NotFound(f"{self.replicable_name} not found")

    def served_object(self) -> tuple[BinaryIO, int] | None:
        """The blob the primary streams from an object store for this record (open, and its
        size), or None when it serves `served_file` (or nothing)."""
        return None

    @classmethod
    def transfers_in_batches(cls, settings: Settings) -> bool:
        """Whether a secondary with `settings` may fetch this kind many items per request."""
        return cls.batches

    def served_repository(self) -> Path:
        """The bare repository the primary serves read-only over git smart HTTP for this
        record; `NotFound` for kinds that are not git repositories."""
        raise NotFound(f"{self.replicable_name} not found")

    def can_skip_download(self, row: RegistryRow, expected: str | None) -> bool:
        """Whether the copy already in place may be taken without a transfer (§6)."""
        return False

    def scrub_bytes(self) -> int:
        """Bytes a re-checksum of this site's copy reads, for the scrub's byte budget; 0 when
        a strategy's checksum reads little (a repository's refs) or the size is unknown."""
        return 0

    def fetch(self, job: SyncService, expected: str | None) -> Success:
        """Bring this site's copy up to date from the primary (the secondary side of a sync);
        `expected` is the primary's checksum, if it has one."""
        raise ConfigurationError(f"{type(self).__name__} has no transfer")

    # -- the bound record --------------------------------------------------------------------

    @property
    def geo(self) -> Geo:
        """The site this replicator works for: given explicitly, else the site whose main
        database the bound record's session uses, else the process's only site.
        """
        if self._geo is None:
            from geosync.app import current_geo
            from geosync.binding import geo_for_engine

            session = object_session(self._model_record) if self._model_record else None
            bind = session.get_bind() if session is not None else None
            engine = getattr(bind, "engine", None)
            found = geo_for_engine(engine) if engine is not None else None
            self._geo = found or current_geo()
        return self._geo

    @property
    def model_record_id(self) -> int:
        """The id of the bound model record."""
        if self._model_record is not None:
            # A persistent record knows its key without a query: reading an expired `id` would
            # silently begin a new transaction in the record's session.
            state = sa_inspect(self._model_record, raiseerr=False)
            if state is not None and state.identity:
                return int(state.identity[0])
            return int(self._model_record.id)
        assert self._model_record_id is not None
        return self._model_record_id

    @property
    def model_record(self) -> Any:
        """The bound model record, loaded from the main database on first use."""
        if self._model_record is None:
            self._model_record = self.geo.load_record(self.model, self.model_record_id)
            if self._model_record is None:
                raise RecordNotFound(
                    f"{self.model.__name__} {self.model_record_id} does not exist"
                    f" ({type(self).__name__})"
                )
        return self._model_record

    # -- events ------------------------------------------------------------------------------

    def created_payload(self) -> dict[str, Any]:
        """Payload of a `created` event."""
        return {"model_record_id": self.model_record_id}

    def updated_payload(self) -> dict[str, Any]:
        """Payload of an `updated` event."""
        return {"model_record_id": self.model_record_id}

    def deleted_payload(self) -> dict[str, Any]:
        """Payload of a `deleted` event, captured while the record still exists."""
        return {"model_record_id": self.model_record_id}

    def payload_for(self, event_name: str) -> dict[str, Any]:
        """The payload of `event_name`, or `UnsupportedEvent`."""
        self.check_event(event_name)
        if event_name == DELETED:
            return self.deleted_payload()
        if event_name == UPDATED:
            return self.updated_payload()
        return self.created_payload()

    @classmethod
    def check_event(cls, event_name: str) -> None:
        """Raise `UnsupportedEvent` unless the strategy declares `event_name`."""
        if event_name not in cls.declared_events():
            declared = ", ".join(sorted(cls.declared_events()))
            raise UnsupportedEvent(
                f"{cls.__name__} does not publish {event_name!r} events (it declares: {declared})"
            )

    def publish(self, event_name: str, connection: Connection | None = None) -> int | None:
        """Write `event_name` to the event log; returns its id, or None when nothing is published.

        With a connection the event joins that transaction; otherwise it joins the open
        transaction of the bound record's session, else it is written in a transaction of its own
        (after `session.commit()` a new session transaction might never be committed).
        """
        from geosync.events import publish_event

        session = object_session(self._model_record) if self._model_record is not None else None
        joins_session = session is not None and session.in_transaction()
        payload = self.payload_for(event_name)
        if connection is not None:
            if self._geo is None:
                from geosync.binding import geo_for_engine

                self._geo = geo_for_engine(connection.engine)
            return publish_event(self.geo, connection, type(self), event_name, payload)
        if session is not None and joins_session:
            from geosync.model import note_changes

            event_id = publish_event(
                self.geo, session.connection(), type(self), event_name, payload
            )
            note_changes(session, self.geo)
            return event_id
        with self.geo.main_engine.begin() as conn:
            event_id = publish_event(self.geo, conn, type(self), event_name, payload)
        from geosync.primary.changes import changes_committed

        changes_committed(self.geo)
        return event_id

    def handle_after_update(self, connection: Connection | None = None) -> int | None:
        """Publish `updated`; the application calls this after it changed the resource."""
        return self.publish(UPDATED, connection)

    # -- scope -------------------------------------------------------------------------------

    @classmethod
    def available_replicables(cls) -> Select[Any]:
        """Every model row this replicator could replicate; override to exclude some."""
        return select(cls.model.__table__.c.id)

    @classmethod
    def replicables_for_current_secondary(cls, query: Select[Any], node: Node) -> Select[Any]:
        """Restrict `query` (model ids) to what `node` should hold; default: everything."""
        return query

    # -- hooks of the strategies -------------------------------------------------------------

    def checksum(self) -> str:
        """Checksum of the primary's resource; strategies implement it."""
        raise NotImplementedError


def _is_replicable(model: Any) -> bool:
    from geosync.model import Replicable

    return isinstance(model, type) and issubclass(model, Replicable)
