"""The replicator catalog: validation at start-up, look-ups, and records' replicators.

Every class here uses this module's own declarative base, so the demo models stay untouched.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from geosync import (
    BlobReplicator,
    CatalogError,
    ConfigurationError,
    NotFound,
    Replicable,
    RepositoryReplicator,
)
from geosync.catalog import Catalog
from geosync.demo.replicators import PackageFileReplicator, SnippetReplicator, UploadReplicator


class Base(DeclarativeBase):
    """This test module's own models."""


class Attachment(Replicable, Base):
    """A model with one blob."""

    __tablename__ = "catalog_attachments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String(100))


class Wiki(Replicable, Base):
    """A model with two resources: a file and a repository."""

    __tablename__ = "catalog_wikis"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)


class Scratch(Replicable, Base):
    """The model of the replicator classes built at run time (it collects them all)."""

    __tablename__ = "catalog_scratch"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)


class Plain(Base):
    """A model without the Replicable mixin."""

    __tablename__ = "catalog_plain"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)


class AttachmentReplicator(BlobReplicator):
    """The one replicator of `Attachment`."""

    model = Attachment
    storage = "attachments"

    def blob_path(self) -> str:
        """The stored path."""
        return str(self.model_record.path)


class WikiExportReplicator(BlobReplicator):
    """Wiki's file."""

    model = Wiki
    storage = "exports"

    def blob_path(self) -> str:
        """One export per wiki."""
        return f"{self.model_record.id}.tar"


class WikiRepositoryReplicator(RepositoryReplicator):
    """Wiki's repository."""

    model = Wiki

    def repository_path(self) -> str:
        """One repository per wiki."""
        return f"wikis/{self.model_record.id}.git"


def blob_replicator(name: str, model: type | None, storage: str | None = "files") -> type:
    """A blob replicator class called `name`, built at run time."""
    namespace: dict[str, object] = {"blob_path": lambda self: "x"}
    if model is not None:
        namespace["model"] = model
    if storage is not None:
        namespace["storage"] = storage
    return type(name, (BlobReplicator,), namespace)


def test_a_valid_catalog_keeps_the_given_order_and_finds_names() -> None:
    catalog = Catalog([UploadReplicator, PackageFileReplicator, SnippetReplicator])
    assert catalog.names == ["upload", "package_file", "snippet"]
    assert catalog.get("package_file") is PackageFileReplicator
    assert catalog.get("package_files") is PackageFileReplicator
    assert catalog.of_strategy("repository") == [SnippetReplicator]
    assert len(catalog) == 3
    assert SnippetReplicator in catalog


def test_an_unknown_name_is_not_found_and_lists_the_known_names() -> None:
    catalog = Catalog([UploadReplicator, SnippetReplicator])
    with pytest.raises(
        NotFound, match=r"unknown replicable 'lfs_object' \(known: upload, snippet\)"
    ):
        catalog.get("lfs_object")


def test_the_same_class_given_twice_is_catalogued_once() -> None:
    assert Catalog([UploadReplicator, UploadReplicator]).names == ["upload"]


def test_a_replicator_without_a_model_is_refused_by_name() -> None:
    orphan = blob_replicator("OrphanReplicator", model=None)
    with pytest.raises(CatalogError, match=r"OrphanReplicator has no model"):
        Catalog([orphan])


def test_a_model_without_the_replicable_mixin_is_refused_naming_both() -> None:
    plain = blob_replicator("PlainReplicator", model=Plain)
    with pytest.raises(CatalogError, match=r"PlainReplicator\.model is 'Plain'.*Replicable"):
        Catalog([plain])


def test_a_blob_replicator_without_storage_is_refused() -> None:
    nostore = blob_replicator("NoStoreReplicator", model=Scratch, storage=None)
    with pytest.raises(CatalogError, match=r"NoStoreReplicator has no storage"):
        Catalog([nostore])


def test_a_blob_replicator_without_blob_path_is_refused() -> None:
    lazy = type("LazyReplicator", (BlobReplicator,), {"model": Scratch, "storage": "files"})
    with pytest.raises(CatalogError, match=r"LazyReplicator does not implement blob_path"):
        Catalog([lazy])


def test_a_keyword_column_that_is_not_a_column_of_the_model_is_refused() -> None:
    searchable: Any = blob_replicator("SearchReplicator", model=Scratch)
    searchable.keyword_column = "no_such_column"
    with pytest.raises(CatalogError, match=r"SearchReplicator.keyword_column is 'no_such_column'"):
        Catalog([searchable])
    searchable.keyword_column = "id"
    assert searchable in Catalog([searchable])


def test_a_class_name_without_the_replicator_suffix_is_refused() -> None:
    odd = blob_replicator("AttachmentSync", model=Scratch)
    with pytest.raises(CatalogError, match=r"AttachmentSync: a replicator class name must end"):
        Catalog([odd])


def test_a_strategy_base_class_is_refused_as_abstract() -> None:
    with pytest.raises(CatalogError, match=r"BlobReplicator is abstract"):
        Catalog([BlobReplicator])


def test_every_problem_is_reported_at_once() -> None:
    orphan = blob_replicator("OrphanReplicator", model=None)
    plain = blob_replicator("PlainReplicator", model=Plain)
    with pytest.raises(CatalogError) as caught:
        Catalog([orphan, plain])
    assert "OrphanReplicator" in str(caught.value)
    assert "PlainReplicator" in str(caught.value)


def test_two_replicators_deriving_the_same_name_are_refused_naming_both() -> None:
    first = blob_replicator("LFSObjectReplicator", model=Scratch)
    second = blob_replicator("LfsObjectReplicator", model=Scratch)
    with pytest.raises(CatalogError) as caught:
        Catalog([first, second])
    message = str(caught.value)
    assert "LFSObjectReplicator and LfsObjectReplicator" in message
    assert "'lfs_object'" in message


def test_a_singular_equal_to_another_replicators_plural_is_refused() -> None:
    files = blob_replicator("FileReplicator", model=Scratch)
    fileses = blob_replicator("FilesReplicator", model=Scratch)
    with pytest.raises(CatalogError, match=r"FileReplicator and FilesReplicator.*'files'"):
        Catalog([files, fileses])


def test_an_explicit_plural_resolves_a_plural_clash() -> None:
    news = blob_replicator("NewsReplicator", model=Scratch)
    item = type(
        "NewsItemReplicator",
        (BlobReplicator,),
        {"model": Scratch, "storage": "n", "blob_path": lambda self: "x"},
    )
    assert Catalog([news, item]).names == ["news", "news_item"]


@pytest.fixture
def replicators_module() -> Iterator[types.ModuleType]:
    """A real importable module, empty until the test fills it."""
    module = types.ModuleType("catalog_test_replicators")
    sys.modules[module.__name__] = module
    try:
        yield module
    finally:
        del sys.modules[module.__name__]


def test_a_catalog_from_a_module_path_holds_the_replicators_defined_there() -> None:
    catalog = Catalog.from_module("geosync.demo.replicators")
    assert list(catalog) == [UploadReplicator, PackageFileReplicator, SnippetReplicator]


def test_an_unimportable_module_is_a_catalog_error_naming_the_setting() -> None:
    with pytest.raises(CatalogError, match=r"setting 'replicators': cannot import 'no\.such'"):
        Catalog.from_module("no.such")


def test_a_module_that_defines_no_replicator_is_a_catalog_error(
    replicators_module: types.ModuleType,
) -> None:
    replicators_module.UploadReplicator = UploadReplicator  # type: ignore[attr-defined]
    with pytest.raises(CatalogError, match=r"catalog_test_replicators.*defines no replicator"):
        Catalog.from_module(replicators_module.__name__)


def test_a_model_with_one_replicator_binds_it_to_the_record() -> None:
    record = Attachment(id=3, path="a/b")
    replicator = record.replicator
    assert isinstance(replicator, AttachmentReplicator)
    assert replicator.model_record is record
    assert replicator.model_record_id == 3
    assert replicator.blob_path() == "a/b"


def test_a_model_with_two_replicators_maps_them_by_name_and_refuses_the_singular() -> None:
    record = Wiki(id=5)
    replicators = record.replicators
    assert set(replicators) == {"wiki_export", "wiki_repository"}
    assert isinstance(replicators["wiki_export"], WikiExportReplicator)
    assert replicators["wiki_repository"].repository_path() == "wikis/5.git"  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match=r"Wiki has 2 replicators.*record\.replicators"):
        _ = record.replicator


def test_a_replicator_refuses_a_record_of_another_model() -> None:
    with pytest.raises(TypeError, match="AttachmentReplicator replicates Attachment records"):
        AttachmentReplicator(Wiki(id=1))


def test_served_names_a_replicator_of_one_strategy_and_reveals_nothing_else() -> None:
    from geosync.strategies.blob import BlobReplicator
    from geosync.strategies.repository import RepositoryReplicator

    catalog = Catalog([UploadReplicator, PackageFileReplicator, SnippetReplicator])
    assert catalog.served("upload", BlobReplicator) is UploadReplicator
    assert catalog.served("snippet", RepositoryReplicator) is SnippetReplicator
    for name, kind in (("snippet", BlobReplicator), ("nothing", BlobReplicator)):
        with pytest.raises(NotFound) as raised:
            catalog.served(name, kind)
        assert str(raised.value) == f"{name} not found"
