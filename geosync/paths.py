"""Safe joins: a relative location from the database never escapes its storage root."""

from __future__ import annotations

from pathlib import Path

from geosync.errors import ValidationError


def resolve_inside(root: Path, relative: str) -> Path:
    """`root / relative`, refusing absolute paths, `..` escapes and symlink escapes."""
    if not relative or Path(relative).is_absolute():
        raise ValidationError(f"path {relative!r} must be relative to its storage root")
    base = root.resolve()
    target = (base / relative).resolve()
    if target == base or base not in target.parents:
        raise ValidationError(f"path {relative!r} points outside its storage root")
    return target
