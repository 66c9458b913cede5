"""Safe joins: a relative location from the database never escapes its storage root."""

from __future__ import annotations

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
    base = root.resolve()
    target = (base / pure).resolve()
    if target == base or not target.is_relative_to(base):
        raise ValidationError(f"Path is outside the root: {relative!r}")
    return target
