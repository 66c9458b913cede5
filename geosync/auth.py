"""Authentication: node-to-node JWTs (`GL-Geo` header) and admin tokens (`PRIVATE-TOKEN`).

A secondary signs an HS256 JWT with its own secret access key; the claim `data` names exactly
what it asks for, so a token for one item or path is worthless for any other.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import jwt
from sqlalchemy import Connection, insert, select

from geosync.crypto import token_digest
from geosync.db.tables import geo_admin_tokens
from geosync.errors import AuthenticationError, ConfigurationError
from geosync.nodes import Node, NodeStore

if TYPE_CHECKING:
    from geosync.app import Geo

SCHEME = "GL-Geo"
LEEWAY = timedelta(seconds=60)
BLOB_TOKEN_TTL = timedelta(minutes=1)
REPOSITORY_TOKEN_TTL = timedelta(minutes=10)
#: A signer cannot mint a longer-lived token than the longest geosync itself issues.
MAX_TOKEN_TTL = REPOSITORY_TOKEN_TTL
ADMIN_TOKEN_PREFIX = "geo-"


def request_data(path: str) -> str:
    """The `data` claim for a request of `path` (exactly what the token is good for)."""
    return json.dumps({"path": path}, sort_keys=True)


def sign_request(node: Node, secret: str, data: str, now: datetime, ttl: timedelta) -> str:
    """The `Authorization` header value for a node request carrying `data`."""
    claims = {"data": data, "iat": int(now.timestamp()), "exp": int((now + ttl).timestamp())}
    token = jwt.encode(claims, secret, algorithm="HS256")
    return f"{SCHEME} {node.access_key}:{token}"


def node_header(
    geo: Geo, path: str, ttl: timedelta = BLOB_TOKEN_TTL, node: Node | None = None
) -> str:
    """The header this site (a secondary) sends to the primary to request `path`; `node` is
    this site's node when the caller already has it (saves a query per request)."""
    node = node or geo.current_node()
    if node is None:
        raise AuthenticationError(f"node {geo.settings.node_name!r} is not registered")
    secret = node.secret(geo.settings.secret_key_base.get_secret_value())
    return sign_request(node, secret, request_data(path), geo.clock.now(), ttl)


def authenticate_node(
    geo: Geo, conn: Connection, header: str | None, path: str, *, on_primary: bool = False
) -> Node:
    """The enabled node that signed `header` for exactly `path`, or `AuthenticationError`.

    With `on_primary`, this site must also be the primary (`ConfigurationError` if not); both
    nodes come from one query, since every blob request asks it.
    """
    well_formed = header is not None and header.startswith(SCHEME + " ")
    access_key, token = "", ""
    if header is not None and well_formed:
        access_key, _, token = header[len(SCHEME) + 1 :].partition(":")
    store = NodeStore(geo, conn)
    if on_primary:
        current, node = store.named_and_keyed(geo.settings.node_name, access_key)
        if current is None or not current.primary:
            raise ConfigurationError("this site is not the primary")
    if not well_formed:
        raise AuthenticationError("Missing or malformed GL-Geo authorization header")
    if not on_primary:
        node = store.by_access_key(access_key) if access_key and token else None
    if node is None or not node.enabled or not token:
        raise AuthenticationError("Invalid or disabled Geo node")
    secret = node.secret(geo.settings.secret_key_base.get_secret_value())
    claims = _decode(token, secret, geo.clock.now())
    if claims.get("data") != request_data(path):
        raise AuthenticationError("Token is not valid for this request")
    return node


def _decode(token: str, secret: str, now: datetime) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            options={"verify_exp": False, "verify_iat": False, "require": ["exp", "iat", "data"]},
        )
    except jwt.PyJWTError as exc:
        raise AuthenticationError(f"Invalid token: {type(exc).__name__}") from None
    # Expiry is checked against the injected clock, not the system clock, with the leeway.
    if int(claims["exp"]) + LEEWAY.total_seconds() < now.timestamp():
        raise AuthenticationError("Token has expired")
    if int(claims["iat"]) - LEEWAY.total_seconds() > now.timestamp():
        raise AuthenticationError("Token is not valid yet")
    if int(claims["exp"]) - int(claims["iat"]) > MAX_TOKEN_TTL.total_seconds():
        raise AuthenticationError("Token lifetime is longer than allowed")
    return claims


@dataclass(frozen=True)
class AdminToken:
    """An admin token's record; the token itself is shown once, at creation."""

    id: int
    name: str
    admin: bool


def create_admin_token(conn: Connection, name: str, now: datetime, *, admin: bool = True) -> str:
    """Create a token, store only its digest, and return the token (shown once)."""
    token = ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(32)
    conn.execute(
        insert(geo_admin_tokens).values(
            name=name, token_digest=token_digest(token), admin=admin, created_at=now
        )
    )
    return token


def find_admin_token(conn: Connection, token: str | None) -> AdminToken | None:
    """The live token record matching `token`, or None."""
    if not token:
        return None
    t = geo_admin_tokens
    row = conn.execute(
        select(t.c.id, t.c.name, t.c.admin).where(
            t.c.token_digest == token_digest(token), t.c.revoked_at.is_(None)
        )
    ).first()
    return AdminToken(row.id, row.name, bool(row.admin)) if row else None


def admin_token_by_id(conn: Connection, token_id: int) -> AdminToken | None:
    """The live token record with id `token_id` (a signed-in admin session names it), or None
    once the token is revoked or gone."""
    t = geo_admin_tokens
    row = conn.execute(
        select(t.c.id, t.c.name, t.c.admin).where(t.c.id == token_id, t.c.revoked_at.is_(None))
    ).first()
    return AdminToken(row.id, row.name, bool(row.admin)) if row else None
