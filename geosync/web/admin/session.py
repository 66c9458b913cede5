"""Admin UI sessions: an admin token, presented once at sign-in, becomes a signed, expiring,
HttpOnly, SameSite=Strict cookie; every form posts a CSRF token derived from the session.

The cookie holds the token's id and a random nonce, never the token: a session ends when it
expires, when the admin signs out, or as soon as the token is revoked.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

from fastapi import Request
from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

from geosync.auth import AdminToken, admin_token_by_id, find_admin_token
from geosync.web.deps import get_geo

if TYPE_CHECKING:
    from geosync.app import Geo
    from geosync.clock import Clock

COOKIE = "geosync_admin"
#: Seconds a sign-in lasts.
SESSION_SECONDS = 8 * 3600
#: The longest form body the admin UI reads.
MAX_FORM_BYTES = 64 * 1024
PREFIX = "/admin/geo"


@dataclass(frozen=True)
class AdminSession:
    """A signed-in admin: the token record and the session's CSRF token."""

    token: AdminToken
    csrf: str


class SignInRequired(Exception):
    """No valid session: the browser goes back to sign-in with `message`."""

    def __init__(self, message: str, next_path: str) -> None:
        super().__init__(message)
        self.message = message
        self.next_path = next_path

    def location(self) -> str:
        """The sign-in page's URL with the message and the page to return to."""
        return f"{PREFIX}/sign_in?next={quote(self.next_path)}&message={quote(self.message)}"


class CsrfRefused(Exception):
    """A POST without the session's CSRF token."""


class _SiteClockSigner(TimestampSigner):
    """Timestamps from the site's clock, so a session's age is the site's idea of time."""

    clock: Clock

    def get_timestamp(self) -> int:
        """Seconds since the epoch, by the site's clock."""
        return int(self.clock.now().timestamp())


def _serializer(geo: Geo) -> URLSafeTimedSerializer:
    secret = geo.settings.secret_key_base.get_secret_value()
    signer = type("SiteClockSigner", (_SiteClockSigner,), {"clock": geo.clock})
    return URLSafeTimedSerializer(secret, salt="geosync-admin-session", signer=signer)


def _csrf_for(geo: Geo, nonce: str) -> str:
    secret = geo.settings.secret_key_base.get_secret_value().encode()
    return hmac.new(secret, f"csrf:{nonce}".encode(), hashlib.sha256).hexdigest()


def sign_in(geo: Geo, token: str) -> tuple[str | None, str | None]:
    """The session cookie's value for `token`, or None and why it was refused."""
    with geo.main_engine.connect() as conn:
        found = find_admin_token(conn, token.strip())
    if found is None:
        return None, "That token is not valid."
    if not found.admin:
        return None, "That token has no admin rights."
    value = _serializer(geo).dumps({"t": found.id, "n": secrets.token_urlsafe(16)})
    return value, None


def cookie_options(request: Request) -> dict[str, Any]:
    """How the session cookie is set: HttpOnly, SameSite=Strict, Secure over HTTPS."""
    return {
        "max_age": SESSION_SECONDS,
        "httponly": True,
        "samesite": "strict",
        "secure": request.url.scheme == "https",
        "path": PREFIX,
    }


def current_session(request: Request) -> AdminSession:
    """Dependency: the signed-in admin, or `SignInRequired`."""
    geo = get_geo(request)
    next_path = request.url.path
    raw = request.cookies.get(COOKIE)
    if not raw:
        raise SignInRequired("Sign in with an admin token.", next_path)
    try:
        data = _serializer(geo).loads(raw, max_age=SESSION_SECONDS)
    except SignatureExpired:
        raise SignInRequired("Your session expired: sign in again.", next_path) from None
    except BadSignature:
        raise SignInRequired("Sign in with an admin token.", next_path) from None
    with geo.main_engine.connect() as conn:
        token = admin_token_by_id(conn, int(data["t"]))
    if token is None or not token.admin:
        raise SignInRequired("Your token was revoked: sign in with another.", next_path)
    return AdminSession(token, _csrf_for(geo, str(data["n"])))


async def form_of(request: Request, session: AdminSession) -> dict[str, str]:
    """The posted form's fields (last value of each), after checking its CSRF token."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise CsrfRefused("the form is too large")
    fields = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
    if not hmac.compare_digest(fields.get("csrf_token", ""), session.csrf):
        raise CsrfRefused("the form's CSRF token is missing or wrong: reload the page")
    return fields


def safe_next(path: str | None) -> str:
    """Where to go after sign-in: a path under the admin UI only (no open redirect)."""
    if path and path.startswith(PREFIX + "/") and not path.startswith("//"):
        return path
    return f"{PREFIX}/sites"
