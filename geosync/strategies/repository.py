"""The repository strategy: a bare git repository, mirrored over git smart HTTP."""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from geosync.errors import ConfigurationError
from geosync.paths import resolve_inside
from geosync.replicator import UPDATED, Replicator


class RepositoryReplicator(Replicator):
    """Replicates one bare git repository per model record; implement `repository_path`."""

    abstract: ClassVar[bool] = True
    strategy: ClassVar[str] = "repository"

    @abstractmethod
    def repository_path(self) -> str:
        """Where the bare repository lives, relative to the repository storage root."""

    @classmethod
    def declared_events(cls) -> frozenset[str]:
        """Repositories are created, updated (pushes) and deleted."""
        return super().declared_events() | {UPDATED}

    @classmethod
    def validate_declaration(cls) -> list[str]:
        """A repository replicator also needs a `repository_path`."""
        problems = super().validate_declaration()
        if getattr(cls.repository_path, "__isabstractmethod__", False):
            problems.append(f"{cls.__name__} does not implement repository_path()")
        return problems

    def deleted_payload(self) -> dict[str, Any]:
        """The repository's location travels with the event."""
        return {**super().deleted_payload(), "repository_path": self.repository_path()}

    def repository_dir(self) -> Path:
        """Absolute path of this site's copy of the repository."""
        root = self.geo.settings.repository_storage_root
        if root is None:
            raise ConfigurationError(
                f"setting 'repository_storage_root' is needed by {type(self).__name__}"
            )
        return resolve_inside(root, self.repository_path())

    def checksum(self) -> str:
        """The ref checksum of this site's copy (ARCHITECTURE.md §6)."""
        from geosync.git import repository_checksum

        return repository_checksum(self.repository_dir())
