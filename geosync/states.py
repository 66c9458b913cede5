"""The sync and verification state enums (GitLab's values), shared by both sides of a site.

The primary keeps verification state too, so these live apart from the secondary's registries.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TypeVar

from geosync.errors import ValidationError

#: Database text columns (failure messages) hold at most this many characters.
MAX_MESSAGE = 255

StateT = TypeVar("StateT", "SyncState", "VerificationState")


class SyncState(IntEnum):
    """Sync states, with GitLab's values."""

    PENDING = 0
    STARTED = 1
    SYNCED = 2
    FAILED = 3


class VerificationState(IntEnum):
    """Verification states, with GitLab's values."""

    PENDING = 0
    STARTED = 1
    SUCCEEDED = 2
    FAILED = 3
    DISABLED = 4


def state_named(states: type[StateT], name: str) -> StateT:
    """The member of `states` called `name` (any case), or `ValidationError` naming the choices."""
    try:
        return states[name.upper()]
    except KeyError:
        choices = ", ".join(member.name.lower() for member in states)
        what = "sync" if states is SyncState else "verification"
        raise ValidationError(f"unknown {what} state {name!r} (use: {choices})") from None


def cut(message: str, limit: int = MAX_MESSAGE) -> str:
    """`message` shortened to `limit` characters (the state tables' message columns are
    bounded)."""
    return message if len(message) <= limit else message[: limit - 1] + "…"
