"""The replicator catalog: the one list of replicators that everything else iterates."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Iterator, Sequence
from types import ModuleType

from geosync.errors import CatalogError, NotFound
from geosync.replicator import Replicator


class Catalog:
    """The validated, ordered set of a site's replicators, found by replicable name."""

    def __init__(self, replicators: Iterable[type[Replicator]]) -> None:
        self._replicators: tuple[type[Replicator], ...] = tuple(dict.fromkeys(replicators))
        _validate(self._replicators)
        self._by_name = {r.replicable_name: r for r in self._replicators}

    @classmethod
    def from_module(cls, dotted: str) -> Catalog:
        """A catalog of every concrete replicator defined in the module `dotted`."""
        try:
            module = importlib.import_module(dotted)
        except ImportError as exc:
            raise CatalogError(f"setting 'replicators': cannot import {dotted!r}: {exc}") from None
        found = replicators_in(module)
        if not found:
            # Only classes defined in the module count: one that merely imports them is a typo.
            raise CatalogError(
                f"setting 'replicators': module {dotted!r} defines no replicator class"
            )
        return cls(found)

    def __iter__(self) -> Iterator[type[Replicator]]:
        return iter(self._replicators)

    def __len__(self) -> int:
        return len(self._replicators)

    def __contains__(self, item: object) -> bool:
        return item in self._replicators

    @property
    def names(self) -> list[str]:
        """Replicable names in catalog order."""
        return list(self._by_name)

    def get(self, name: str) -> type[Replicator]:
        """The replicator called `name` (singular or plural), or `NotFound` listing the known."""
        found = self._by_name.get(name)
        if found is None:
            found = next((r for r in self._replicators if r.replicable_name_plural == name), None)
        if found is None:
            known = ", ".join(self._by_name) or "none"
            raise NotFound(f"unknown replicable {name!r} (known: {known})")
        return found

    def served(self, name: str, kind: type[Replicator]) -> type[Replicator]:
        """The replicator called `name` if it is a `kind`; else `NotFound` saying only that the
        name is not found (node-to-node answers reveal nothing about the catalog)."""
        try:
            found = self.get(name)
        except NotFound:
            raise NotFound(f"{name} not found") from None
        if not issubclass(found, kind):
            raise NotFound(f"{name} not found")
        return found

    def of_strategy(self, strategy: str) -> list[type[Replicator]]:
        """The replicators of one strategy (`blob` or `repository`)."""
        return [r for r in self._replicators if r.strategy == strategy]


def replicators_in(module: ModuleType) -> list[type[Replicator]]:
    """Concrete replicator classes defined in `module`, in definition order."""
    found = []
    for _name, value in inspect.getmembers(module, inspect.isclass):
        if issubclass(value, Replicator) and not value.__dict__.get("abstract", False):
            if value.__module__ == module.__name__:
                found.append(value)
    found.sort(key=lambda cls: inspect.getsourcelines(cls)[1])
    return found


def _validate(replicators: Sequence[type[Replicator]]) -> None:
    problems: list[str] = []
    for replicator in replicators:
        if not (isinstance(replicator, type) and issubclass(replicator, Replicator)):
            problems.append(f"{replicator!r} is not a Replicator subclass")
        elif replicator.__dict__.get("abstract", False) or not replicator.strategy:
            problems.append(
                f"{replicator.__name__} is abstract:"
                " subclass BlobReplicator or RepositoryReplicator"
            )
        else:
            problems.extend(replicator.validate_declaration())
    if problems:
        raise CatalogError("; ".join(problems))
    seen: dict[tuple[str, str], type[Replicator]] = {}
    for replicator in replicators:
        names = replicator.names.as_dict()
        # Singular and plural share one namespace: `Catalog.get` and the URLs accept either.
        keys = [(a, v) for a, v in names.items() if a != "replicable_name_plural"]
        keys.append(("replicable_name", names["replicable_name_plural"]))
        for attribute, value in keys:
            other = seen.setdefault((attribute, value), replicator)
            if other is not replicator:
                raise CatalogError(
                    f"{other.__name__} and {replicator.__name__} both derive"
                    f" the name {value!r}; rename one or set replicable_name_plural"
                )
