"""Nodes (`geo_nodes`): every site's record, its selective sync settings and its keys.

Rules: at most one primary, unique names, URLs stored with a trailing slash, an access key and an
encrypted secret generated on create. The current node is the one named like `node_name`.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from geosync.crypto import decrypt_secret, encrypt_secret
from geosync.db.tables import geo_nodes
from geosync.errors import NotFound, ValidationError

if TYPE_CHECKING:
    from geosync.app import Geo

SELECTIVE_SYNC_TYPES = (None, "namespaces", "shards")
_KEY_ALPHABET = string.ascii_letters + string.digits + "-_"

#: Settings an operator may change, with their defaults (GitLab's).
EDITABLE_DEFAULTS: dict[str, Any] = {
    "internal_url": None,
    "enabled": True,
    "files_max_capacity": 10,
    "repos_max_capacity": 25,
    "verification_max_capacity": 100,
    "container_repositories_max_capacity": 10,
    "selective_sync_type": None,
    "selective_sync_shards": [],
    "selective_sync_namespace_ids": [],
    "minimum_reverification_interval": 7,
    "sync_object_storage": False,
}


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
    """An http(s) URL with a trailing slash, or `ValidationError` naming the field."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
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
        values = {**EDITABLE_DEFAULTS, **self._checked(settings)}
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
        """Change a node's settings (`name`, `url`, `primary` and the editable ones)."""
        node = self.get(node_id)
        values: dict[str, Any] = {}
        if "name" in changes:
            name = str(changes.pop("name")).strip()
            other = self.find(name)
            if not name or (other is not None and other.id != node_id):
                raise ValidationError(f"a node named {name!r} already exists")
            values["name"] = name
        if "url" in changes:
            values["url"] = normalize_url(str(changes.pop("url")))
        if "primary" in changes:
            values["primary"] = bool(changes.pop("primary"))
            if values["primary"]:
                self._require_no_other_primary(node.id)
        values.update(self._checked(changes))
        if values:
            values["updated_at"] = self.geo.clock.now()
            with _unique_rules(values.get("name", node.name)):
                self.connection.execute(
                    update(geo_nodes).where(geo_nodes.c.id == node_id).values(**values)
                )
        return self.get(node_id)

    def remove(self, node_id: int) -> None:
        """Delete a node (its status goes with it)."""
        self.get(node_id)
        self.connection.execute(delete(geo_nodes).where(geo_nodes.c.id == node_id))

    def secondary_count(self) -> int:
        """How many secondary nodes exist."""
        return int(
            self.connection.execute(
                select(func.count()).select_from(geo_nodes).where(geo_nodes.c.primary.is_(False))
            ).scalar_one()
        )

    def _require_no_other_primary(self, except_id: int | None) -> None:
        query = select(geo_nodes.c.name).where(geo_nodes.c.primary.is_(True))
        if except_id is not None:
            query = query.where(geo_nodes.c.id != except_id)
        existing = self.connection.execute(query).scalar_one_or_none()
        if existing is not None:
            raise ValidationError(f"node {existing!r} is already the primary; there can be one")

    def _checked(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(settings) - set(EDITABLE_DEFAULTS)
        if unknown:
            raise ValidationError(f"unknown node setting(s): {', '.join(sorted(unknown))}")
        values = dict(settings)
        for key in (
            "files_max_capacity",
            "repos_max_capacity",
            "verification_max_capacity",
            "container_repositories_max_capacity",
        ):
            if key in values and (not isinstance(values[key], int) or values[key] < 0):
                raise ValidationError(f"{key} must be a whole number ≥ 0")
        interval = values.get("minimum_reverification_interval", 7)
        if not isinstance(interval, int) or interval < 1:
            raise ValidationError("minimum_reverification_interval must be a whole number ≥ 1")
        if values.get("selective_sync_type") not in SELECTIVE_SYNC_TYPES:
            raise ValidationError("selective_sync_type must be empty, 'namespaces' or 'shards'")
        if values.get("internal_url"):
            values["internal_url"] = normalize_url(values["internal_url"], "internal_url")
        if "selective_sync_namespace_ids" in values:
            values["selective_sync_namespace_ids"] = _int_list(
                values["selective_sync_namespace_ids"]
            )
        if "selective_sync_shards" in values:
            values["selective_sync_shards"] = [str(s) for s in values["selective_sync_shards"]]
        return values


def _int_list(values: Any) -> list[int]:
    try:
        return sorted({int(v) for v in values})
    except (TypeError, ValueError):
        raise ValidationError("selective_sync_namespace_ids must be whole numbers") from None


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
            raise ValidationError(
                "another node became the primary meanwhile; there can be one"
            ) from None
        if "name" in text:
            raise ValidationError(f"a node named {name!r} already exists") from None
        raise
