"""Safe joins: a relative location from the database never escapes its storage root."""

from __future__ import annotations

import functools
from pathlib import Path, PurePosixPath

from geosync.errors import ValidationError


def resolve_inside(root: Path, relative: str) -> Path:
    """Join ``relative`` to ``root`` and return the resolved path, strictly inside ``root``.

    Rejects absolute paths, ``..`` components and symlinks leading out, so callers never touch
    files outside their storage root.
    """
    if not relative or "\0" in relative or "\\" in relative:
        raise ValidationError(f"Invalid relative path: {relative!r}")
    pure = PurePosixPath(relative)
    if pure.is_absolute() or ".." in pure.parts:
        raise ValidationError(f"Path must be relative and stay inside the root: {relative!r}")
    base = _resolved(root)
    target = (base / pure).resolve()
    if target == base or not target.is_relative_to(base):
        raise ValidationError(f"Path is outside the root: {relative!r}")
    return target


@functools.lru_cache(maxsize=64)
def _resolved(root: Path) -> Path:
    """A storage root resolved once: roots do not move while a process runs."""
    return root.resolve()
