"""The repository strategy: a bare git repository, mirrored over git smart HTTP."""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from geosync.errors import ConfigurationError, Interrupted, PrimaryMissing, ValidationError
from geosync.paths import resolve_inside
from geosync.replicator import UPDATED, Replicator

if TYPE_CHECKING:
    from geosync.secondary.settlement import Success
    from geosync.secondary.sync import SyncService
    from geosync.settings import Settings

#: The longest a clone or fetch of one mirror may take (seconds).
GIT_TIMEOUT = 3600.0


class RepositoryReplicator(Replicator):
    """Replicates one bare git repository per model record; implement `repository_path`."""

    abstract: ClassVar[bool] = True
    strategy: ClassVar[str] = "repository"
    noun: ClassVar[str] = "repository"
    capacity_setting: ClassVar[str] = "repos_max_capacity"
    copy_lock_file: ClassVar[bool] = True

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
        return resolve_inside(self.storage_root(self.geo.settings), self.repository_path())

    def checksum(self) -> str:
        """The ref checksum of this site's copy (ARCHITECTURE.md §6)."""
        from geosync.git import repository_checksum

        return repository_checksum(self.repository_dir())

    # -- the strategy's behaviour ------------------------------------------------------------

    @classmethod
    def storage_root(cls, settings: Settings) -> Path:
        """The `repository_storage_root` setting (required by repository replicators)."""
        root = settings.repository_storage_root
        if root is None:
            raise ConfigurationError(
                f"setting 'repository_storage_root' is needed by {cls.__name__}"
            )
        return root

    @classmethod
    def path_in_payload(cls, payload: dict[str, Any]) -> str | None:
        """The `repository_path` a `deleted` event carries."""
        value = payload.get("repository_path")
        return str(value) if value else None

    @classmethod
    def remove_copy(cls, settings: Settings, local_path: str) -> bool:
        """Delete the mirror. Only a git directory is deleted (a path naming a directory of many
        mirrors is refused with `ValidationError`); a symlinked mirror loses the link, never
        what it points to."""
        from geosync.git import remove_repository

        root = cls.storage_root(settings)
        target = resolve_inside(root, local_path)
        linked = (root.resolve() / local_path).is_symlink()
        if not linked and target.is_dir() and not is_git_directory(target):
            raise ValidationError(f"Not a repository, not removed: {local_path!r}")
        return remove_repository(root, local_path)

    def local_path(self) -> str:
        """The repository's path inside the repository storage."""
        return self.repository_path()

    def copy_path(self) -> Path:
        """This site's mirror of the repository."""
        return self.repository_dir()

    def served_repository(self) -> Path:
        """The repository on the primary."""
        return self.repository_dir()

    def fetch(self, job: SyncService, expected: str | None) -> Success:
        """Clone or fetch the mirror over git smart HTTP, one sync of a mirror at a time across
        processes (git inherits the lock, so an orphan of a dead worker keeps it until it is
        gone too); verified at once when its ref checksum is the primary's."""
        from geosync.auth import REPOSITORY_TOKEN_TTL, node_header
        from geosync.file_locks import mirror_lock
        from geosync.git import mirror_repository, repository_checksum
        from geosync.secondary.settlement import Success
        from geosync.states import VerificationState
        from geosync.wire import repository_base_path

        dest = self.repository_dir()
        relative = self.repository_path()
        base = repository_base_path(self.replicable_name, self.model_record_id)
        route = job.route()
        lock = mirror_lock(dest)
        if not lock.acquire(job.cancel):  # a shutdown ends the wait for an older sync
            raise Interrupted("Sync interrupted: the worker is shutting down")
        try:
            # Signed only now: waiting for an older sync of this mirror may take long.
            header = node_header(job.geo, base, REPOSITORY_TOKEN_TTL, route.node)
            url = route.primary_url.rstrip("/") + base
            try:
                mirror_repository(
                    url,
                    dest,
                    headers={"Authorization": header},
                    timeout=GIT_TIMEOUT,
                    cancel=job.cancel,
                    holds=lock.held(),
                )
            except PrimaryMissing:
                return Success(relative, missing_on_primary=True)
        finally:
            lock.release()
        if expected is None:
            return Success(relative)
        actual = repository_checksum(dest)
        if actual != expected:
            # The primary may have moved on since its checksum; let verification decide later.
            return Success(relative, VerificationState.PENDING)
        return Success(relative, VerificationState.SUCCEEDED, actual)


def is_git_directory(path: Path) -> bool:
    """Whether `path` looks like a bare git repository."""
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()
