"""The public API cannot drift: `geosync.__all__` is sorted and lists exactly what is exported."""

from __future__ import annotations
import __future__

import types

import geosync
from geosync.errors import GeoError

#: Names the issue requires in the public API at the least.
REQUIRED = {
    "BlobReplicator",
    "Geo",
    "GeoError",
    "Replicable",
    "RepositoryReplicator",
    "Settings",
}


def public_names() -> set[str]:
    """Every public name bound in `geosync/__init__.py` (not submodules, not `__future__`)."""
    return {
        name
        for name, value in vars(geosync).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType | __future__._Feature)
    }


def test_all_is_sorted() -> None:
    assert geosync.__all__ == sorted(geosync.__all__)


def test_all_lists_every_exported_member_and_nothing_else() -> None:
    assert set(geosync.__all__) - {"__version__"} == public_names()


def test_all_has_no_duplicates() -> None:
    assert len(geosync.__all__) == len(set(geosync.__all__))


def test_exported_members_belong_to_geosync() -> None:
    for name in public_names():
        module = getattr(getattr(geosync, name), "__module__", "geosync")
        assert module.startswith("geosync"), f"{name} comes from {module}"


def test_the_required_names_are_public() -> None:
    assert set(geosync.__all__) >= REQUIRED


def test_every_geosync_error_is_exported() -> None:
    def subclasses(cls: type) -> set[type]:
        direct: set[type] = set(cls.__subclasses__())
        return direct.union(*(subclasses(c) for c in direct))

    errors = subclasses(GeoError)
    assert {cls.__name__ for cls in errors} <= set(geosync.__all__)


def test_every_geosync_error_lives_in_errors_and_its_drawn_tree() -> None:
    import geosync.errors

    def subclasses(cls: type) -> set[type]:
        direct: set[type] = set(cls.__subclasses__())
        return direct.union(*(subclasses(c) for c in direct))

    tree = geosync.errors.__doc__ or ""
    for cls in subclasses(GeoError):
        assert cls.__module__ == "geosync.errors", f"{cls.__name__} is defined in {cls.__module__}"
        parent = cls.__mro__[1].__name__
        assert f" {cls.__name__} " in tree, f"{cls.__name__} is missing from the drawn tree"
        assert issubclass(cls, getattr(geosync.errors, parent))
