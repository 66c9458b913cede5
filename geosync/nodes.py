"""Nodes (`geo_nodes`): every site's record, its selective sync settings and its keys.

Rules: at most one primary, unique names, URLs stored with a trailing slash, an access key and an
encrypted secret generated on create. The current node is the one named like `node_name`.
The primary is never removed, disabled or demoted in place: every secondary replicates from it,
so its role moves only by promoting another node (`NodeStore.promote`).
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from sqlalchemy import Connection, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from geosync.crypto import decrypt_secret, encrypt_secret
from geosync.db.tables import geo_nodes
from geosync.errors import InvalidTransition, NotFound, ValidationError

if TYPE_CHECKING:
    from geosync.app import Geo

SELECTIVE_SYNC_TYPES = (None, "namespaces", "shards")
_KEY_ALPHABET = string.ascii_letters + string.digits + "-_"

#: How an operator moves the primary role (what the refusals below suggest instead).
PROMOTE_HINT = "promote another site first (`geosync node promote NAME`)"

_HEX = "[0-9A-Fa-f]{1,4}"
_IPV6 = "|".join(
    (
        f"(?:{_HEX}:){{7}}{_HEX}",
        f"(?:{_HEX}:){{1,7}}:",
        f"(?:{_HEX}:){{1,6}}:{_HEX}",
        f"(?:{_HEX}:){{1,5}}(?::{_HEX}){{1,2}}",
        f"(?:{_HEX}:){{1,4}}(?::{_HEX}){{1,3}}",
        f"(?:{_HEX}:){{1,3}}(?::{_HEX}){{1,4}}",
        f"(?:{_HEX}:){{1,2}}(?::{_HEX}){{1,5}}",
        f"{_HEX}:(?::{_HEX}){{1,6}}",
        f":(?:(?::{_HEX}){{1,7}}|:)",
    )
)
_HOST_CHAR = "[A-Za-z0-9._~!$&'()*+,;=%-]"
#: A node's URL: http(s), an optional user, a host name, IPv4 or [IPv6] address, an optional
#: port, then printable ASCII. The REST API's document publishes this very pattern, so what it
#: calls valid and what `normalize_url` accepts are one set.
URL_PATTERN = (
    f"^[Hh][Tt][Tt][Pp][Ss]?://(?:(?:{_HOST_CHAR}|:)*@)?"
    f"(?:\\[(?:{_IPV6})\\]|{_HOST_CHAR}+)(?::[0-9]*)?(?:[/?#][!-~]*)?$"
)
_URL = re.compile(URL_PATTERN)

SettingKind = Literal["url", "flag", "count", "choice", "ids", "names"]


@dataclass(frozen=True)
class NodeSetting:
    """One setting an operator may change on a node: its kind, GitLab's default, its bounds.

    `NodeStore`'s checks, the REST API's parameters and JSON shape and the CLI's options are
    derived from `NODE_SETTINGS`, so a new setting is one entry there and its column.
    """

    name: str
    kind: SettingKind
    default: Any
    help: str
    minimum: int = 0
    choices: tuple[str, ...] = ()
    #: The CLI's switch that turns a flag off (`--disabled`), when not `--no-<name>`.
    off_switch: str | None = None

    @property
    def initial(self) -> Any:
        """The default as a new node stores it (a fresh list for the list kinds)."""
        return list(self.default) if isinstance(self.default, tuple) else self.default


#: Settings an operator may change, with their defaults (GitLab's).
NODE_SETTINGS: tuple[NodeSetting, ...] = (
    NodeSetting("internal_url", "url", None, "URL other sites use for this one (else its url)."),
    NodeSetting("enabled", "flag", True, "Whether the site replicates.", off_switch="disabled"),
    NodeSetting("files_max_capacity", "count", 10, "Blob transfers at once on the site."),
    NodeSetting("repos_max_capacity", "count", 25, "Repository transfers at once on the site."),
    NodeSetting("verification_max_capacity", "count", 100, "Checksums at once on the site."),
    NodeSetting(
        "container_repositories_max_capacity", "count", 10, "Container repository syncs at once."
    ),
    NodeSetting(
        "selective_sync_type",
        "choice",
        None,
        "namespaces, shards or none",
        choices=("namespaces", "shards"),
    ),
    NodeSetting("selective_sync_shards", "names", (), "Comma-separated shards for selective sync."),
    NodeSetting(
        "selective_sync_namespace_ids",
        "ids",
        (),
        "Comma-separated namespace ids for selective sync.",
    ),
    NodeSetting(
        "minimum_reverification_interval",
        "count",
        7,
        "Days before the primary checksums an item again.",
        minimum=1,
    ),
    NodeSetting(
        "sync_object_storage", "flag", False, "Whether the site copies object-stored blobs itself."
    ),
)
SETTINGS_BY_NAME = {setting.name: setting for setting in NODE_SETTINGS}
#: What `NodeStore.update` changes beside the settings.
_IDENTITY = ("name", "url", "primary")


@dataclass(frozen=True)
class Node:
    """A site's record; `secret_access_key` is only filled in when decrypted on purpose."""

    id: int
    name: str
    url: str
    internal_url: str | None
    primary: bool
    enabled: bool
    files_max_capacity: int
    repos_max_capacity: int
    verification_max_capacity: int
    container_repositories_max_capacity: int
    selective_sync_type: str | None
    selective_sync_shards: list[str]
    selective_sync_namespace_ids: list[int]
    minimum_reverification_interval: int
    sync_object_storage: bool
    access_key: str
    encrypted_secret_access_key: str = field(repr=False)
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Node:
        """A node from a `geo_nodes` row."""
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    @property
    def effective_internal_url(self) -> str:
        """The URL other sites use: `internal_url`, else `url`."""
        return self.internal_url or self.url

    @property
    def secondary(self) -> bool:
        """Whether this is a secondary node."""
        return not self.primary

    def secret(self, secret_key_base: str) -> str:
        """The decrypted secret access key (never log it)."""
        return decrypt_secret(self.encrypted_secret_access_key, secret_key_base)

    def as_dict(self) -> dict[str, Any]:
        """Every column but the encrypted secret."""
        data = asdict(self)
        data.pop("encrypted_secret_access_key")
        return data


def normalize_url(value: str, setting: str = "url") -> str:
    """An http(s) URL (`URL_PATTERN`) with a trailing slash, or `ValidationError` naming the
    field."""
    if not isinstance(value, str) or not _URL.fullmatch(value):
        raise ValidationError(f"{setting} must be an http:// or https:// URL, got {value!r}")
    parts = urlsplit(value)  # the pattern admits only what this splits into a scheme and a host
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ValidationError(f"{setting} must be an http:// or https:// URL, got {value!r}")
    return value if value.endswith("/") else value + "/"


def generate_key(length: int) -> str:
    """A random URL-safe key of `length` characters."""
    return "".join(secrets.choice(_KEY_ALPHABET) for _ in range(length))


class NodeStore:
    """Reads and writes `geo_nodes` in one connection's transaction."""

    def __init__(self, geo: Geo, connection: Connection) -> None:
        self.geo = geo
        self.connection = connection

    def list(self) -> list[Node]:
        """Every node, primary first, then by id."""
        rows = self.connection.execute(
            select(geo_nodes).order_by(geo_nodes.c.primary.desc(), geo_nodes.c.id)
        )
        return [Node.from_row(row._mapping) for row in rows]

    def find(self, name: str) -> Node | None:
        """The node called `name`, or None."""
        row = self.connection.execute(select(geo_nodes).where(geo_nodes.c.name == name)).first()
        return Node.from_row(row._mapping) if row else None

    def get(self, node_id: int) -> Node:
        """The node with `node_id`, or `NotFound`."""
        row = self.connection.execute(select(geo_nodes).where(geo_nodes.c.id == node_id)).first()
        if row is None:
            raise NotFound(f"node {node_id} not found")
        return Node.from_row(row._mapping)

    def by_name_or_id(self, ref: str) -> Node:
        """The node named `ref`, or with id `ref`, or `NotFound`."""
        node = self.find(ref)
        if node is None and ref.isdigit():
            return self.get(int(ref))
        if node is None:
            raise NotFound(f"node {ref!r} not found")
        return node

    def by_access_key(self, access_key: str) -> Node | None:
        """The node owning `access_key`, or None."""
        row = self.connection.execute(
            select(geo_nodes).where(geo_nodes.c.access_key == access_key)
        ).first()
        return Node.from_row(row._mapping) if row else None

    def named_and_keyed(self, name: str, access_key: str) -> tuple[Node | None, Node | None]:
        """The node called `name` and the node owning `access_key`, in one query.

        The primary answers every node request with both: who it is, and who is asking.
        """
        rows = self.connection.execute(
            select(geo_nodes).where(
                or_(geo_nodes.c.name == name, geo_nodes.c.access_key == access_key)
            )
        )
        nodes = [Node.from_row(row._mapping) for row in rows]
        named = next((n for n in nodes if n.name == name), None)
        keyed = next((n for n in nodes if n.access_key == access_key), None)
        return named, keyed

    def add(self, name: str, url: str, *, primary: bool = False, **settings: Any) -> Node:
        """Register a node; its keys are generated and its secret encrypted."""
        name = name.strip()
        if not name:
            raise ValidationError("name must not be empty")
        if self.find(name) is not None:
            raise ValidationError(f"a node named {name!r} already exists")
        if primary:
            self._require_no_other_primary(None)
        values = {**{s.name: s.initial for s in NODE_SETTINGS}, **self._checked(settings)}
        secret = generate_key(40)
        with _unique_rules(name):
            node_id = self._insert(values, name, url, primary, secret)
        return self.get(node_id)

    def _insert(
        self, values: dict[str, Any], name: str, url: str, primary: bool, secret: str
    ) -> int:
        now = self.geo.clock.now()
        node_id: int = self.connection.execute(
            insert(geo_nodes).returning(geo_nodes.c.id),
            {
                **values,
                "name": name,
                "url": normalize_url(url),
                "primary": primary,
                "access_key": generate_key(20),
                "encrypted_secret_access_key": encrypt_secret(
                    secret, self.geo.settings.secret_key_base.get_secret_value()
                ),
                "created_at": now,
                "updated_at": now,
            },
        ).scalar_one()
        return node_id

    def update(self, node_id: int, **changes: Any) -> Node:
        """Change a node's settings (`name`, `url`, `primary` and the editable ones).

        `primary` only makes a node primary where there is none; the primary itself is neither
        demoted nor disabled here (`InvalidTransition`): `promote` moves the role.
        """
        node = self.get(node_id)
        _require_known(set(changes) - set(_IDENTITY))
        values = {key: self._checked_change(node, key, v) for key, v in changes.items()}
        if values:
            values["updated_at"] = self.geo.clock.now()
            with _unique_rules(values.get("name", node.name)):
                self.connection.execute(
                    update(geo_nodes).where(geo_nodes.c.id == node_id).values(**values)
                )
        return self.get(node_id)

    def problems(self, node_id: int, changes: Mapping[str, Any]) -> dict[str, str]:
        """What `update` would refuse in `changes`, by setting (empty when it would accept them).

        `update` stops at the first problem; a form shows each one next to its field.
        """
        node = self.get(node_id)
        found: dict[str, str] = {}
        for key, value in changes.items():
            try:
                self._checked_change(node, key, value)
            except (ValidationError, InvalidTransition) as exc:
                found[key] = exc.message
        return found

    def _checked_change(self, node: Node, key: str, value: Any) -> Any:
        if key == "name":
            name = str(value).strip()
            if not name:
                raise ValidationError("name must not be empty")
            other = self.find(name)
            if other is not None and other.id != node.id:
                raise ValidationError(f"a node named {name!r} already exists")
            own = self.geo.settings.node_name
            if node.name == own and name != own:
                raise InvalidTransition(
                    f"node {node.name!r} is this site's own node (its node_name setting): renamed,"
                    " the site would no longer find itself; change node_name in its settings and"
                    " restart it, then rename the node"
                )
            return name
        if key == "url":
            return normalize_url(str(value))
        if key == "primary":
            return self._checked_role(node, value)
        _require_known({key})
        checked = _checked_value(SETTINGS_BY_NAME[key], value)
        if key == "enabled" and node.primary and not checked:
            raise InvalidTransition(
                f"node {node.name!r} is the primary and cannot be disabled: every secondary "
                f"replicates from it; to retire it, {PROMOTE_HINT}"
            )
        return checked

    def _checked_role(self, node: Node, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("primary must be true or false")
        if node.primary and not value:
            raise InvalidTransition(
                f"node {node.name!r} is the primary and cannot be demoted by an update: "
                f"{PROMOTE_HINT}, which demotes it"
            )
        if value:
            self._require_no_other_primary(node.id)
        return value

    def promote(self, node_id: int) -> Node:
        """Make a node the primary, and the current primary a secondary, in one transaction.

        The node is enabled too, as a primary must be. The demotion is written first so the
        one-primary index holds at every statement; two promotions at once leave one primary.
        """
        node = self.get(node_id)
        now = self.geo.clock.now()
        with _unique_rules(node.name):
            self.connection.execute(
                update(geo_nodes)
                .where(geo_nodes.c.primary.is_(True), geo_nodes.c.id != node_id)
                .values(primary=False, updated_at=now)
            )
            self.connection.execute(
                update(geo_nodes)
                .where(geo_nodes.c.id == node_id)
                .values(primary=True, enabled=True, updated_at=now)
            )
        return self.get(node_id)

    def remove(self, node_id: int) -> None:
        """Delete a secondary node (its status goes with it); the primary is refused."""
        node = self.get(node_id)
        if node.primary:
            raise InvalidTransition(
                f"node {node.name!r} is the primary and cannot be removed: every secondary "
                f"replicates from it; {PROMOTE_HINT}, then remove this one"
            )
        self.connection.execute(delete(geo_nodes).where(geo_nodes.c.id == node_id))

    def secondary_count(self, *, enabled_only: bool = False) -> int:
        """How many secondary nodes exist (with `enabled_only`, how many replicate)."""
        query = select(func.count()).select_from(geo_nodes).where(geo_nodes.c.primary.is_(False))
        if enabled_only:
            query = query.where(geo_nodes.c.enabled.is_(True))
        return int(self.connection.execute(query).scalar_one())

    def _require_no_other_primary(self, except_id: int | None) -> None:
        query = select(geo_nodes.c.name).where(geo_nodes.c.primary.is_(True))
        if except_id is not None:
            query = query.where(geo_nodes.c.id != except_id)
        existing = self.connection.execute(query).scalar_one_or_none()
        if existing is not None:
            raise InvalidTransition(
                f"node {existing!r} is already the primary; there can be one "
                "(`geosync node promote NAME` moves the role)"
            )

    def _checked(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        _require_known(set(settings))
        return {key: _checked_value(SETTINGS_BY_NAME[key], v) for key, v in settings.items()}


def _require_known(names: set[str]) -> None:
    unknown = names - set(SETTINGS_BY_NAME)
    if unknown:
        raise ValidationError(f"unknown node setting(s): {', '.join(sorted(unknown))}")


def _checked_value(setting: NodeSetting, value: Any) -> Any:
    """`value` as `setting` stores it, or `ValidationError` naming the setting."""
    name = setting.name
    if setting.kind == "count":
        if not isinstance(value, int) or isinstance(value, bool) or value < setting.minimum:
            raise ValidationError(f"{name} must be a whole number ≥ {setting.minimum}")
        return value
    if setting.kind == "flag":
        if not isinstance(value, bool):
            raise ValidationError(f"{name} must be true or false")
        return value
    if setting.kind == "choice":
        if value not in (None, *setting.choices):
            raise ValidationError(f"{name} must be empty, {_either(setting.choices)}")
        return value
    if setting.kind == "url":
        return normalize_url(value, name) if value else None
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple | set):
        raise ValidationError(f"{name} must be a list")
    if setting.kind == "ids":
        return _int_list(value, name)
    return [str(v) for v in value]


def _either(choices: tuple[str, ...]) -> str:
    quoted = [f"'{c}'" for c in choices]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _int_list(values: Any, name: str) -> list[int]:
    try:
        return sorted({int(v) for v in values})
    except (TypeError, ValueError):
        raise ValidationError(f"{name} must be whole numbers") from None


@contextmanager
def _unique_rules(name: str) -> Iterator[None]:
    """The database's uniqueness rules, as the errors `NodeStore`'s own checks give.

    The checks run first and say which node is in the way; a write racing another transaction
    past them is stopped by the database, and still gets an answer rather than a driver error.
    """
    try:
        yield
    except IntegrityError as exc:
        text = str(exc.orig)
        if "one_primary" in text or "geo_nodes.primary" in text:
            raise InvalidTransition(
                "another node became the primary meanwhile; there can be one"
            ) from None
        if "name" in text:
            raise ValidationError(f"a node named {name!r} already exists") from None
        raise
