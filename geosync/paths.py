"""Safe joins: a relative location from the database never escapes its storage root."""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path, PurePosixPath

from geosync.errors import UnsafePath


def resolve_inside(root: Path, relative: str) -> Path:
    """Join ``relative`` to ``root`` and return the resolved path, strictly inside ``root``.

    Rejects absolute paths, ``..`` components and symlinks leading out, so callers never touch
    files outside their storage root.
    """
    if not relative or "\0" in relative or "\\" in relative:
        raise UnsafePath(f"Unsafe path, not a valid relative path: {relative!r}")
    pure = PurePosixPath(relative)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise UnsafePath(f"Unsafe path, not relative or not inside the root: {relative!r}")
    base = _resolved(root)
    if not _has_symlink(base, pure.parts):
        return base.joinpath(*pure.parts)
    target = (base / pure).resolve()
    if target == base or not target.is_relative_to(base):
        raise UnsafePath(f"Unsafe path, outside the root: {relative!r}")
    return target


def _has_symlink(base: Path, parts: tuple[str, ...]) -> bool:
    """Whether a component below the (resolved) `base` is a symlink. Only the existing part of
    the path is checked: what does not exist yet cannot lead anywhere."""
    current = str(base)
    for part in parts:
        current = os.path.join(current, part)
        try:
            if stat.S_ISLNK(os.lstat(current).st_mode):
                return True
        except (FileNotFoundError, NotADirectoryError):
            return False
    return False


@functools.lru_cache(maxsize=64)
def _resolved(root: Path) -> Path:
    """A storage root resolved once: roots do not move while a process runs."""
    return root.resolve()
