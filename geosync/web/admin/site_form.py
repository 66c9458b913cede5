"""The site edit form, generated from `NODE_SETTINGS`: a new setting appears in it with no edit.

The form's text is turned into the values `NodeStore` takes and nothing more; every rule is
`NodeStore`'s, so the form refuses exactly what the REST API refuses.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from geosync.nodes import NODE_SETTINGS, NodeSetting

if TYPE_CHECKING:
    from geosync.nodes import Node

#: The largest count the database holds (the REST API's bound too).
MAX_COUNT = 2**31 - 1
#: The node's identity, edited beside its settings (both plain text to `NodeStore`).
IDENTITY = (
    NodeSetting("name", "names", None, "How the site is known; its geosync node_name."),
    NodeSetting("url", "url", None, "The site's external URL."),
)
_WORDS = {"url": "URL", "ids": "IDs"}


@dataclass(frozen=True)
class Field:
    """One input of the form: its setting, what it shows and the problem found with it."""

    setting: NodeSetting
    value: str
    checked: bool = False
    error: str | None = None

    @property
    def name(self) -> str:
        """The input's name: the setting's."""
        return self.setting.name

    @property
    def label(self) -> str:
        """ "Files max capacity", "Internal URL"."""
        words = [_WORDS.get(word, word) for word in self.setting.name.split("_")]
        return " ".join(words)[:1].upper() + " ".join(words)[1:]

    @property
    def input(self) -> str:
        """How the template draws it: text, url, number, checkbox, select or list."""
        if self.name == "name":
            return "text"
        kinds = {"flag": "checkbox", "count": "number", "choice": "select", "url": "url"}
        return kinds.get(self.setting.kind, "list")

    @property
    def required(self) -> bool:
        """Whether it must not be left empty."""
        return self.name in ("name", "url") or self.setting.kind == "count"

    @property
    def maximum(self) -> int:
        """The largest number a count input takes."""
        return MAX_COUNT


def fields_of(node: Node) -> list[Field]:
    """The form's fields showing `node` as it is."""
    return [_shown(setting, getattr(node, setting.name)) for setting in _settings()]


def fields_from(posted: dict[str, str]) -> list[Field]:
    """The form's fields showing what was typed."""
    found = []
    for setting in _settings():
        raw = posted.get(setting.name, "")
        if setting.kind == "flag":
            found.append(Field(setting, "", checked=setting.name in posted))
        else:
            found.append(Field(setting, raw))
    return found


def changes_of(fields: list[Field]) -> dict[str, Any]:
    """What the typed fields ask `NodeStore.update` to store (a value it refuses stays as typed,
    so its own check names the problem)."""
    return {field.name: _value(field) for field in fields}


def with_errors(fields: list[Field], problems: dict[str, str]) -> list[Field]:
    """The fields with each problem next to its own."""
    return [replace(field, error=problems.get(field.name)) for field in fields]


def bound_problems(fields: list[Field]) -> dict[str, str]:
    """What no database column takes, checked before `NodeStore` sees it (as the REST API's
    parameters do): NUL characters, and counts beyond the column's range."""
    found = {}
    for field in fields:
        value = _value(field)
        if "\0" in field.value:
            found[field.name] = f"{field.name} must not contain NUL characters"
        elif isinstance(value, int) and not isinstance(value, bool) and value > MAX_COUNT:
            found[field.name] = f"{field.name} must be a whole number ≤ {MAX_COUNT}"
    return found


def _settings() -> tuple[NodeSetting, ...]:
    return (*IDENTITY, *NODE_SETTINGS)


def _shown(setting: NodeSetting, value: Any) -> Field:
    if setting.kind == "flag":
        return Field(setting, "", checked=bool(value))
    if isinstance(value, list):
        return Field(setting, ", ".join(str(v) for v in value))
    return Field(setting, "" if value is None else str(value))


def _value(field: Field) -> Any:
    kind, text = field.setting.kind, field.value.strip()
    if field.setting in IDENTITY:
        return text
    if kind == "flag":
        return field.checked
    if kind == "count":
        return _whole_number(text)
    if kind in ("ids", "names"):
        return [part.strip() for part in text.split(",") if part.strip()]
    return text or None


def _whole_number(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text
