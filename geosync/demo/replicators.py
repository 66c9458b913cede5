"""The demo application's replicators: one class each, and that is all they need."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select

from geosync.demo.models import PackageFile, Snippet, Upload
from geosync.nodes import Node
from geosync.strategies.blob import BlobReplicator
from geosync.strategies.repository import RepositoryReplicator


def in_selected_namespaces(model: Any, query: Select[Any], node: Node) -> Select[Any]:
    """Namespace-based selective sync, shared by every demo model."""
    if node.selective_sync_type == "namespaces":
        return query.where(model.namespace_id.in_(node.selective_sync_namespace_ids))
    return query


class UploadReplicator(BlobReplicator):
    """Uploads: immutable files in the `uploads` storage."""

    model = Upload
    storage = "uploads"
    keyword_column = "path"

    def blob_path(self) -> str:
        """Uploads store their relative path."""
        return str(self.model_record.path)

    @classmethod
    def replicables_for_current_secondary(cls, query: Select[Any], node: Node) -> Select[Any]:
        """Only the namespaces the secondary selected."""
        return in_selected_namespaces(Upload, query, node)


class PackageFileReplicator(BlobReplicator):
    """Package files: mutable files in the `packages` storage."""

    model = PackageFile
    storage = "packages"
    mutable = True
    keyword_column = "file_name"

    def blob_path(self) -> str:
        """Package files live in a directory per namespace."""
        record = self.model_record
        return f"{record.namespace_id}/{record.id}/{record.file_name}"

    @classmethod
    def replicables_for_current_secondary(cls, query: Select[Any], node: Node) -> Select[Any]:
        """Only the namespaces the secondary selected."""
        return in_selected_namespaces(PackageFile, query, node)


class SnippetReplicator(RepositoryReplicator):
    """Snippets: bare git repositories."""

    model = Snippet
    keyword_column = "title"

    def repository_path(self) -> str:
        """The snippet's repository directory."""
        return str(self.model_record.disk_path)

    @classmethod
    def replicables_for_current_secondary(cls, query: Select[Any], node: Node) -> Select[Any]:
        """Only the namespaces the secondary selected."""
        return in_selected_namespaces(Snippet, query, node)
