"""Feature flags (ARCHITECTURE.md §2): one per replicator, stored on the primary."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Integer, String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from geosync import BlobReplicator, NotFound, Replicable
from geosync.db.tables import geo_events, geo_feature_flags
from geosync.demo.replicators import UploadReplicator
from geosync.flags import Flag, flag_enabled, list_flags, set_flag
from geosync.testing import DatabaseFactory, SitePair, build_site_pair


class Base(DeclarativeBase):
    """This test module's own models."""


class Preview(Replicable, Base):
    """A model whose replication is not released yet."""

    __tablename__ = "flag_previews"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String(100))


class PreviewReplicator(BlobReplicator):
    """Off by default: releasing it means deleting the line below."""

    model = Preview
    storage = "previews"
    replication_enabled_by_default = False

    def blob_path(self) -> str:
        """The stored path."""
        return str(self.model_record.path)


@pytest.fixture
def preview_sites(tmp_path: Path, databases: DatabaseFactory) -> Iterator[SitePair]:
    """A site pair replicating uploads and (not yet released) previews."""
    pair = build_site_pair(tmp_path / "sites", [UploadReplicator, PreviewReplicator], databases)
    yield pair
    pair.dispose()


def flags_of(sites: SitePair) -> dict[str, bool]:
    """Effective flag values as the secondary sees them through its read-only connection."""
    with sites.secondary.main_engine.connect() as conn:
        return {flag.name: flag.enabled for flag in list_flags(conn, sites.secondary.catalog)}


def switch(sites: SitePair, name: str, enabled: bool) -> Flag:
    """Set a flag on the primary."""
    with sites.primary.main() as conn:
        return set_flag(conn, sites.primary.catalog, name, enabled, sites.primary.clock.now())


def test_every_replicator_has_a_flag_that_defaults_to_on(sites: SitePair) -> None:
    with sites.primary.main_engine.connect() as conn:
        flags = list_flags(conn, sites.primary.catalog)
    assert [(f.name, f.enabled, f.default, f.replicable_name) for f in flags] == [
        ("geo_upload_replication", True, True, "upload"),
        ("geo_package_file_replication", True, True, "package_file"),
        ("geo_snippet_replication", True, True, "snippet"),
    ]
    assert all(f.is_default for f in flags)


def test_disabling_and_enabling_reaches_the_secondary(sites: SitePair) -> None:
    flag = switch(sites, "geo_snippet_replication", False)
    assert (flag.enabled, flag.default, flag.is_default) == (False, True, False)
    assert flags_of(sites)["geo_snippet_replication"] is False
    assert flags_of(sites)["geo_upload_replication"] is True
    switch(sites, "geo_snippet_replication", True)
    assert flags_of(sites)["geo_snippet_replication"] is True
    with sites.primary.main_engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(geo_feature_flags)).scalar_one()
    assert stored == 1


def test_setting_a_flag_twice_keeps_one_row(sites: SitePair) -> None:
    switch(sites, "geo_upload_replication", False)
    switch(sites, "geo_upload_replication", False)
    with sites.primary.main_engine.connect() as conn:
        rows = conn.execute(select(geo_feature_flags)).all()
        assert not flag_enabled(conn, UploadReplicator)
    assert len(rows) == 1
    assert rows[0].updated_at == sites.primary.clock.now()


def test_an_unknown_flag_is_not_found_and_lists_the_known_flags(sites: SitePair) -> None:
    with pytest.raises(NotFound) as caught:
        switch(sites, "geo_uploads_replication", True)
    assert str(caught.value) == (
        "unknown flag 'geo_uploads_replication' (known flags: geo_package_file_replication,"
        " geo_snippet_replication, geo_upload_replication)"
    )
    with sites.primary.main_engine.connect() as conn:
        assert conn.execute(select(geo_feature_flags)).all() == []


def test_an_unreleased_type_is_off_until_enabled(preview_sites: SitePair) -> None:
    sites = preview_sites
    assert flags_of(sites) == {"geo_upload_replication": True, "geo_preview_replication": False}
    with sites.primary.session() as session:
        session.add(Preview(path="a.png"))
        session.commit()
    switch(sites, "geo_preview_replication", True)
    with sites.primary.session() as session:
        session.add(Preview(path="b.png"))
        session.commit()
    with sites.primary.main_engine.connect() as conn:
        published = conn.execute(select(geo_events.c.payload)).scalars().all()
    assert published == [{"model_record_id": 2}]
    with sites.primary.main_engine.connect() as conn:
        (flag,) = [
            f for f in list_flags(conn, sites.primary.catalog) if f.replicable_name == "preview"
        ]
    assert (flag.enabled, flag.default, flag.is_default) == (True, False, False)
