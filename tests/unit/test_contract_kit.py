"""The contract kit's own parts: selective sync detection and the git helpers it ships."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from sqlalchemy import Integer, Select, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from geosync import BlobReplicator, Node, Replicable, RepositoryReplicator
from geosync.demo.replicators import SnippetReplicator, UploadReplicator
from geosync.testing import create_bare_repository, push_commit, repository_refs
from geosync.testing.contracts import ReplicatorFactory, declares_selective_sync


class Base(DeclarativeBase):
    """Models of this module only."""


class Note(Replicable, Base):
    __tablename__ = "kit_notes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)


class NoteReplicator(BlobReplicator):
    model = Note
    storage = "notes"

    def blob_path(self) -> str:
        return f"{self.model_record.id}.txt"


class ScopedRepositoryReplicatorBase(RepositoryReplicator):
    """An application's own base class that declares selective sync for its subclasses."""

    abstract = True

    @classmethod
    def replicables_for_current_secondary(cls, query: Select[Any], node: Node) -> Select[Any]:
        return query.where(false()) if node.selective_sync_type else query


class Page(Replicable, Base):
    __tablename__ = "kit_pages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)


class PageReplicator(ScopedRepositoryReplicatorBase):
    model = Page

    def repository_path(self) -> str:
        return f"pages/{self.model_record.id}.git"


def test_selective_sync_is_declared_by_overriding_the_scope_method() -> None:
    assert declares_selective_sync(UploadReplicator)
    assert declares_selective_sync(SnippetReplicator)
    assert declares_selective_sync(PageReplicator)  # inherited from the application's base
    assert not declares_selective_sync(NoteReplicator)


def test_any_object_with_replicator_and_create_is_a_factory() -> None:
    class Factory:
        replicator = NoteReplicator

        def create(self, geo: Any, namespace_id: int) -> int:
            return 1

    assert isinstance(Factory(), ReplicatorFactory)
    assert not isinstance(NoteReplicator, ReplicatorFactory)


def git_log(repo: Path, ref: str) -> list[str]:
    """`<commit> <parents>` lines of `ref`, newest first."""
    out = subprocess.run(
        ["git", "--git-dir", str(repo), "log", "--format=%H %P", ref],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.strip() for line in out.splitlines()]


def test_a_bare_repository_gets_one_commit_per_branch_and_head_on_the_first(
    tmp_path: Path,
) -> None:
    repo = create_bare_repository(tmp_path / "a" / "b.git", branches=["trunk", "topic"])
    refs = [line.split()[1] for line in repository_refs(repo)]
    assert refs == ["refs/heads/topic", "refs/heads/trunk"]
    assert (repo / "HEAD").read_text().strip() == "ref: refs/heads/trunk"
    assert len(git_log(repo, "trunk")) == 1
    assert repository_refs(create_bare_repository(tmp_path / "empty.git", branches=[])) == []


def test_a_push_adds_a_child_commit_or_starts_a_branch(tmp_path: Path) -> None:
    repo = create_bare_repository(tmp_path / "r.git")
    first = git_log(repo, "main")[0].split()[0]
    pushed = push_commit(repo, "main", {"docs/a.txt": b"a\n"})
    assert git_log(repo, "main")[0] == f"{pushed} {first}"
    started = push_commit(repo, "feature")
    assert git_log(repo, "feature") == [started]  # a new branch has no parent
    assert f"{pushed} refs/heads/main" in repository_refs(repo)
