"""Keyset pages of one type's items: a secondary's registries, or the primary's model records
with their checksum state (GitLab's data-management view).

Pages are cut by keyset, never by offset: a cursor holds the sort value and the id of the row
it stands for, so a page after it starts behind that row however many rows changed state,
appeared or went meanwhile. The GraphQL API (and through it the admin UI) reads through here.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Connection, Select, and_, bindparam, func, or_, select, true

from geosync.db.types import UTCDateTime
from geosync.errors import ValidationError
from geosync.states import SyncState, VerificationState
from geosync.verification import primary_verifiable

if TYPE_CHECKING:
    from sqlalchemy import Table

    from geosync.app import Geo
    from geosync.replicator import Replicator

#: The most rows one page may hold (GitLab's `max_page_size`); also the default page size.
MAX_PAGE = 100
#: The most model records a keyword may match on a secondary, whose registries are searched
#: through the ids of the matching records in the main database.
MAX_KEYWORD_MATCHES = 10_000

#: Sort names (GitLab's `GeoRegistrySort`) and the column each orders by.
SORTS: dict[str, tuple[str, bool]] = {
    "ID_ASC": ("id", True),
    "ID_DESC": ("id", False),
    "VERIFIED_AT_ASC": ("verified_at", True),
    "VERIFIED_AT_DESC": ("verified_at", False),
    "LAST_SYNCED_AT_ASC": ("last_synced_at", True),
    "LAST_SYNCED_AT_DESC": ("last_synced_at", False),
}
#: Stands in for a missing timestamp, so rows never verified or synced sort after the others
#: in ascending order (and first in descending) and still have a place in the keyset.
NEVER = datetime(9999, 12, 31, tzinfo=UTC)


@dataclass(frozen=True)
class ListingFilters:
    """What a listing keeps: registry or record ids, states, and a keyword."""

    ids: tuple[int, ...] | None = None
    replication_state: SyncState | None = None
    verification_state: VerificationState | None = None
    keyword: str | None = None


@dataclass(frozen=True)
class PageRequest:
    """Relay pagination arguments; an empty cursor means no cursor, as GitLab reads it."""

    first: int | None = None
    after: str | None = None
    last: int | None = None
    before: str | None = None
    sort: str = "ID_ASC"

    def checked(self) -> PageRequest:
        """The request with blank cursors dropped, or `ValidationError` naming the problem."""
        for name in ("first", "last"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_PAGE:
                raise ValidationError(f"{name} must be between 0 and {MAX_PAGE}, got {value}")
        if self.first is not None and self.last is not None:
            raise ValidationError("give first or last, not both")
        if self.sort not in SORTS:
            raise ValidationError(f"unknown sort {self.sort!r} (use: {', '.join(SORTS)})")
        return PageRequest(
            self.first, self.after or None, self.last, self.before or None, self.sort
        )


@dataclass(frozen=True)
class Page:
    """One page of rows (as dicts), each with its cursor, and whether more lie either side."""

    rows: list[dict[str, Any]]
    cursors: list[str]
    has_next: bool
    has_previous: bool


class Listing:
    """Filtered, sorted keyset pages over one type's registries or model records."""

    def __init__(
        self,
        geo: Geo,
        replicator: type[Replicator],
        query: Select[Any],
        columns: dict[str, ColumnElement[Any]],
        *,
        records: bool,
    ) -> None:
        self.geo = geo
        self.replicator = replicator
        self._query = query
        self._columns = columns
        self.records = records

    @classmethod
    def registries(cls, geo: Geo, replicator: type[Replicator]) -> Listing:
        """A secondary's registries of `replicator`."""
        table: Table = geo.tables.registry(replicator)
        return cls(geo, replicator, select(table), dict(table.c), records=False)

    @classmethod
    def model_records(cls, geo: Geo, replicator: type[Replicator]) -> Listing:
        """The primary's records of `replicator` with their checksum state; a record without a
        state row yet counts as pending."""
        model: Table = replicator.model.__table__
        verifiable = primary_verifiable(geo, replicator)
        state = verifiable.table
        columns: dict[str, ColumnElement[Any]] = {"id": model.c.id}
        if "created_at" in model.c:
            columns["created_at"] = model.c.created_at
        for name in STATE_COLUMNS:
            columns[name] = state.c[name]
        columns["verification_state"] = func.coalesce(
            state.c.verification_state, int(VerificationState.PENDING)
        )
        source: Any = model
        if state is not model:
            source = model.outerjoin(state, verifiable.key == model.c.id)
        query = select(*[c.label(n) for n, c in columns.items()]).select_from(source)
        return cls(geo, replicator, query, columns, records=True)

    # -- reads -------------------------------------------------------------------------------

    def count(self, conn: Connection, filters: ListingFilters) -> int:
        """How many rows the filters keep (the connection's `count`)."""
        where = self.where(filters)
        inner = self._query.where(where).with_only_columns(self._columns["id"]).subquery()
        return int(conn.execute(select(func.count()).select_from(inner)).scalar_one())

    def page(self, conn: Connection, filters: ListingFilters, request: PageRequest) -> Page:
        """The page `request` asks for, in the order of its sort."""
        request = request.checked()
        column, ascending = self._sort(request.sort)
        where = self.where(filters)
        backwards = request.last is not None or (request.before is not None and not request.first)
        size = request.last if backwards and request.last is not None else request.first
        size = MAX_PAGE if size is None else size
        bounds = [where]
        if request.after is not None:
            bounds.append(self._beyond(request, request.after, column, ascending, forward=True))
        if request.before is not None:
            bounds.append(self._beyond(request, request.before, column, ascending, forward=False))
        walk_ascending = ascending != backwards
        key = self._key_expression(column)
        order = [key.asc(), self._columns["id"].asc()]
        if not walk_ascending:
            order = [key.desc(), self._columns["id"].desc()]
        query = self._query.add_columns(key.label("_sort_key")).where(*bounds).order_by(*order)
        rows = [dict(row._mapping) for row in conn.execute(query.limit(size + 1))]
        more = len(rows) > size
        rows = rows[:size]
        if backwards:
            rows.reverse()
        cursors = [self._cursor(request.sort, row) for row in rows]
        for row in rows:
            row.pop("_sort_key", None)
        if backwards:
            return Page(rows, cursors, request.before is not None, more)
        return Page(rows, cursors, more, request.after is not None)

    def where(self, filters: ListingFilters) -> ColumnElement[bool]:
        """The filters as one condition; a keyword on a secondary reads the main database."""
        c = self._columns
        conditions: list[ColumnElement[bool]] = [true()]
        if filters.ids is not None:
            conditions.append(c["id"].in_(list(filters.ids)))
        if filters.replication_state is not None:
            if self.records:
                raise ValidationError("the primary's records have no replication state")
            conditions.append(c["state"] == int(filters.replication_state))
        if filters.verification_state is not None:
            conditions.append(c["verification_state"] == int(filters.verification_state))
        if filters.keyword:
            conditions.append(self._keyword(filters.keyword))
        return and_(*conditions)

    # -- keyset ------------------------------------------------------------------------------

    def _sort(self, sort: str) -> tuple[str, bool]:
        column, ascending = SORTS[sort]
        if column not in self._columns:
            what = "the primary's records" if self.records else "registries"
            raise ValidationError(f"{what} cannot be sorted by {column}")
        return column, ascending

    def _key_expression(self, column: str) -> ColumnElement[Any]:
        if column == "id":
            return self._columns["id"]
        never = bindparam(f"never_{column}", NEVER, type_=UTCDateTime())
        return func.coalesce(self._columns[column], never, type_=UTCDateTime())

    def _beyond(
        self, request: PageRequest, cursor: str, column: str, ascending: bool, *, forward: bool
    ) -> ColumnElement[bool]:
        """Rows after (`forward`) or before the row `cursor` stands for, in the sort's order."""
        value, row_id = decode_cursor(cursor, request.sort)
        key = self._key_expression(column)
        ident = self._columns["id"]
        greater = forward == ascending
        if column == "id":
            return ident > row_id if greater else ident < row_id
        moment = _parse_moment(value)
        if greater:
            return or_(key > moment, and_(key == moment, ident > row_id))
        return or_(key < moment, and_(key == moment, ident < row_id))

    def _cursor(self, sort: str, row: dict[str, Any]) -> str:
        value = row["_sort_key"]
        if isinstance(value, str):  # SQLite hands back COALESCE(...) untyped
            value = _parse_moment(value)
        shown = value.isoformat() if isinstance(value, datetime) else value
        return encode_cursor(sort, shown, int(row["id"]))

    # -- keyword -----------------------------------------------------------------------------

    def _keyword(self, keyword: str) -> ColumnElement[bool]:
        name = self.replicator.keyword_column
        if name is None:
            raise ValidationError(
                f"{self.replicator.replicable_name_plural} cannot be searched by keyword:"
                f" {self.replicator.__name__} declares no keyword_column"
            )
        model: Table = self.replicator.model.__table__
        matches = model.c[name].ilike(f"%{_escaped(keyword)}%", escape="\\")
        if self.records:
            return matches
        with self.geo.main_engine.connect() as main:
            ids = list(
                main.execute(
                    select(model.c.id).where(matches).limit(MAX_KEYWORD_MATCHES + 1)
                ).scalars()
            )
        if len(ids) > MAX_KEYWORD_MATCHES:
            raise ValidationError(
                f"keyword {keyword!r} matches more than {MAX_KEYWORD_MATCHES}"
                f" {self.replicator.replicable_name_plural}: narrow it"
            )
        key = self._columns[self.replicator.registry_foreign_key]
        return key.in_(ids)


#: The state columns a model record's listing shows, from its state table or its own columns.
STATE_COLUMNS = (
    "verification_checksum",
    "verification_failure",
    "verification_retry_count",
    "verification_retry_at",
    "verification_started_at",
    "verified_at",
)


def encode_cursor(sort: str, value: Any, row_id: int) -> str:
    """An opaque cursor for the row `row_id` whose sort value is `value`."""
    raw = json.dumps([sort, value, row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str) -> tuple[Any, int]:
    """The sort value and id a cursor holds, or `ValidationError` when it is not one of ours
    or was made for another sort order."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        made_for, value, row_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValidationError(f"invalid cursor {cursor[:40]!r}") from exc
    if made_for != sort or not isinstance(row_id, int) or isinstance(row_id, bool):
        raise ValidationError(f"cursor {cursor[:40]!r} was not made for sort {sort}")
    return value, row_id


def _parse_moment(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValidationError("invalid cursor: its sort value is not a time")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValidationError("invalid cursor: its sort value is not a time") from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _escaped(keyword: str) -> str:
    return keyword.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
