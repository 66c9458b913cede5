"""The demo application's models: each carries a `namespace_id` for selective sync."""

from __future__ import annotations

from sqlalchemy import Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from geosync.model import Replicable, VerificationStateMixin


class Base(DeclarativeBase):
    """Declarative base of the demo application."""


class Upload(Replicable, Base):
    """A user upload: an immutable file (verification state in `upload_states`)."""

    __tablename__ = "uploads"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String(512))
    namespace_id: Mapped[int] = mapped_column(Integer, index=True)
    size: Mapped[int] = mapped_column(Integer, default=0)


class PackageFile(Replicable, VerificationStateMixin, Base):
    """A package file: a mutable file whose verification state lives on this table."""

    __tablename__ = "package_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    file_name: Mapped[str] = mapped_column(String(512))
    namespace_id: Mapped[int] = mapped_column(Integer, index=True)
    size: Mapped[int] = mapped_column(Integer, default=0)


class Snippet(Replicable, Base):
    """A snippet: a bare git repository."""

    __tablename__ = "snippets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(255))
    namespace_id: Mapped[int] = mapped_column(Integer, index=True)

    @property
    def disk_path(self) -> str:
        """Where the bare repository lives under the repository storage root."""
        return f"snippets/{self.id // 1000:03d}/{self.id}.git"
