"""Secrets at rest: node secrets are encrypted with a key derived from `secret_key_base`."""

from __future__ import annotations

import base64
import functools
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from geosync.errors import ConfigurationError


@functools.lru_cache(maxsize=8)
def _fernet(secret_key_base: str) -> Fernet:
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"geosync node secrets"
    ).derive(secret_key_base.encode())
    return Fernet(base64.urlsafe_b64encode(key))


def encrypt_secret(secret: str, secret_key_base: str) -> str:
    """Encrypt `secret` for storage."""
    return _fernet(secret_key_base).encrypt(secret.encode()).decode()


@functools.lru_cache(maxsize=256)
def decrypt_secret(token: str, secret_key_base: str) -> str:
    """Decrypt a stored secret; a different `secret_key_base` is a configuration error."""
    try:
        return _fernet(secret_key_base).decrypt(token.encode()).decode()
    except InvalidToken:
        raise ConfigurationError(
            "setting 'secret_key_base': cannot decrypt node secrets; every site must use the"
            " primary's secret_key_base"
        ) from None


def token_digest(token: str) -> str:
    """The stored form of an admin token (SHA-256 hex; tokens are long and random)."""
    return hashlib.sha256(token.encode()).hexdigest()
