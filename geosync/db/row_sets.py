"""A set of rows passed to a statement as one JSON parameter.

A batch of results (each row its own key, checksum, failure, retry time) written one
statement per row costs a round trip per row; written with one bound parameter per value it
costs a statement per batch size and hits bound-parameter limits. As one JSON array it is a
single parameter of any length: SQLite expands it with `json_each`, PostgreSQL with
`jsonb_array_elements`, and the statement joins the expanded rows like a table
(`UPDATE … FROM rows WHERE key = rows.key`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import String, bindparam, cast, func, literal_column, select, type_coerce
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.expression import Subquery
from sqlalchemy.types import TypeEngine


class RowSet:
    """Rows of named, typed columns, given to a statement as the JSON parameter `name`."""

    def __init__(self, name: str, columns: Sequence[tuple[str, TypeEngine[Any]]]) -> None:
        self.name = name
        self.columns = list(columns)

    def table(self, dialect: str) -> Subquery:
        """The rows as a subquery named after the parameter, one column per declared column,
        for the database `dialect` names."""
        param = bindparam(self.name, type_=String())
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            each = func.jsonb_array_elements(cast(param, JSONB)).table_valued("value")
            picked = [
                cast(each.c.value.op("->>")(literal_column(str(index))), type_).label(name)
                for index, (name, type_) in enumerate(self.columns)
            ]
        else:
            each = func.json_each(param).table_valued("value")
            picked = [
                type_coerce(
                    func.json_extract(each.c.value, literal_column(f"'$[{index}]'")), type_
                ).label(name)
                for index, (name, type_) in enumerate(self.columns)
            ]
        return select(*picked).select_from(each).subquery(self.name)

    def value(self, dialect: Dialect, rows: Sequence[Sequence[Any]]) -> str:
        """The parameter for `rows` (each a sequence in column order): a JSON array of arrays.

        Values go in as the column's type stores them on this database (SQLite keeps
        timestamps as text in SQLAlchemy's format), so the expanded rows compare and store
        exactly like bound parameters would.
        """
        processors = [self._processor(type_, dialect) for _name, type_ in self.columns]
        return json.dumps(
            [
                [_plain(process(item)) for process, item in zip(processors, row, strict=True)]
                for row in rows
            ]
        )

    @staticmethod
    def _processor(type_: TypeEngine[Any], dialect: Dialect) -> Any:
        process = type_.dialect_impl(dialect).bind_processor(dialect)
        return process if process is not None else _identity


def _identity(value: Any) -> Any:
    return value


def _plain(value: Any) -> Any:
    """A JSON value: a timestamp as ISO 8601 text (PostgreSQL casts it back to its type)."""
    if isinstance(value, datetime):
        return value.isoformat()
    return value
