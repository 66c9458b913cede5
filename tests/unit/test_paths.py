"""`resolve_inside`: a relative location never leads outside its root, by name or by symlink."""

from __future__ import annotations

from pathlib import Path

import pytest

from geosync.errors import ValidationError
from geosync.paths import resolve_inside


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A storage root with a directory, a link inside it and links leading out."""
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "in").symlink_to(root / "a", target_is_directory=True)
    (root / "out").symlink_to(tmp_path / "outside", target_is_directory=True)
    (root / "a" / "file-out").symlink_to(tmp_path / "outside" / "f")
    return root


def test_plain_paths_join_below_the_root_whether_or_not_they_exist(root: Path) -> None:
    assert resolve_inside(root, "a/b/c.bin") == root.resolve() / "a" / "b" / "c.bin"
    assert resolve_inside(root, "new/dir/x") == root.resolve() / "new" / "dir" / "x"
    assert resolve_inside(root, "a/./b") == root.resolve() / "a" / "b"


def test_a_link_that_stays_inside_resolves_to_its_target(root: Path) -> None:
    assert resolve_inside(root, "in/b/x") == root.resolve() / "a" / "b" / "x"


@pytest.mark.parametrize(
    "relative", ["out/x", "out", "a/file-out", "../x", "/etc/passwd", "", ".", "./"]
)
def test_anything_leading_out_is_refused(root: Path, relative: str) -> None:
    with pytest.raises(ValidationError):
        resolve_inside(root, relative)
