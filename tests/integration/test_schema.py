"""Schema: Alembic migrations equal the framework tables; derived tables follow §5; upgrades
are idempotent. Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, MetaData, String, Table, inspect, text
from sqlalchemy.engine.interfaces import ReflectedIndex

from geosync import ConfigurationError, Geo
from geosync.db.schema import (
    VERSION_TABLE,
    current_revision,
    head_revision,
    schema_state,
    upgrade,
)
from geosync.db.tables import main_metadata, tracking_metadata
from geosync.demo.replicators import PackageFileReplicator, SnippetReplicator, UploadReplicator
from geosync.registry import Registry
from geosync.testing import DatabaseFactory, SitePair, build_site_pair
from geosync.testing.sites import site_settings

REGISTRY_COLUMNS = {
    "id",
    "upload_id",
    "created_at",
    "state",
    "retry_count",
    "retry_at",
    "last_synced_at",
    "last_sync_failure",
    "missing_on_primary",
    "verification_state",
    "verification_started_at",
    "verification_retry_at",
    "verification_retry_count",
    "verified_at",
    "verification_checksum",
    "verification_checksum_mismatched",
    "checksum_mismatch",
    "verification_failure",
    "claimed_by",
    "verification_claimed_by",
    "claim_generation",
    "resync_requested",
}

#: §5's partial indexes: name suffix -> (column, WHERE clause normalised per backend).
PARTIAL_INDEXES = {
    "verification_failed": (
        "verification_retry_at",
        {"state=2andverification_state=3"},
    ),
    "needs_verification": (
        "verification_state",
        {"state=2andverification_statein0,3", "state=2andverification_state=anyarray[0,3]"},
    ),
    "verification_pending": (
        "verified_at",
        {"state=2andverification_state=0"},
    ),
    "pending": ("id", {"state=0"}),
    # Beyond §5: who holds started verifications, read by every stuck sweep.
    "verification_started": ("verification_claimed_by", {"verification_state=1"}),
}


def framework_diff(engine: Engine, metadata: MetaData, ignore: set[str]) -> list[Any]:
    """Alembic's differences between a migrated database and `metadata`, ignoring `ignore`."""

    def include_name(name: str | None, type_: str, _parent: Any) -> bool:
        return not (type_ == "table" and name in ignore)

    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_name": include_name}
        )
        return list(compare_metadata(context, metadata))


def normalised_where(engine: Engine, table: str, index: ReflectedIndex) -> str:
    """The WHERE clause of a partial index, without spaces, parentheses or case."""
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            sql = conn.execute(
                text("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :n"),
                {"n": index["name"]},
            ).scalar_one()
        clause = sql.split(" WHERE ", 1)[1]
    else:
        clause = index["dialect_options"]["postgresql_where"]
    return re.sub(r"[\s()\"]", "", clause).lower()


def test_main_migrations_create_exactly_the_framework_tables(sites: SitePair) -> None:
    engine = sites.primary.main_engine
    app_tables = {r.model.__table__.name for r in sites.primary.catalog}
    derived = set(sites.primary.tables.main.tables)
    assert framework_diff(engine, main_metadata, app_tables | derived | {VERSION_TABLE}) == []
    assert set(main_metadata.tables) <= set(inspect(engine).get_table_names())


def test_tracking_migrations_create_exactly_the_framework_tables(sites: SitePair) -> None:
    engine = sites.secondary.tracking_engine
    derived = set(sites.secondary.tables.tracking.tables)
    assert framework_diff(engine, tracking_metadata, derived | {VERSION_TABLE}) == []
    names = set(inspect(engine).get_table_names())
    assert names == set(tracking_metadata.tables) | derived | {VERSION_TABLE}


def test_the_registry_table_has_every_column_of_the_architecture(sites: SitePair) -> None:
    columns = {
        c["name"]: c
        for c in inspect(sites.secondary.tracking_engine).get_columns("upload_registry")
    }
    assert set(columns) >= REGISTRY_COLUMNS
    assert columns["upload_id"]["nullable"] is False
    assert columns["state"]["nullable"] is False
    assert cast(String, columns["last_sync_failure"]["type"]).length == 255
    assert cast(String, columns["verification_failure"]["type"]).length == 255


def test_the_registry_table_has_the_indexes_of_the_architecture(sites: SitePair) -> None:
    engine = sites.secondary.tracking_engine
    inspector = inspect(engine)
    indexes = {i["name"]: i for i in inspector.get_indexes("upload_registry")}
    assert indexes["ix_upload_registry_retry_at"]["column_names"] == ["retry_at"]
    assert indexes["ix_upload_registry_state"]["column_names"] == ["state"]
    for suffix, (column, wheres) in PARTIAL_INDEXES.items():
        index = indexes[f"ix_upload_registry_{suffix}"]
        assert index["column_names"] == [column]
        assert normalised_where(engine, "upload_registry", index) in wheres, suffix
    unique = [u["column_names"] for u in inspector.get_unique_constraints("upload_registry")]
    assert ["upload_id"] in unique


def test_every_replicator_gets_its_registry_and_states_table(sites: SitePair) -> None:
    tracking = set(inspect(sites.secondary.tracking_engine).get_table_names())
    main = set(inspect(sites.primary.main_engine).get_table_names())
    assert {"upload_registry", "package_file_registry", "snippet_registry"} <= tracking
    # PackageFile keeps its verification state in its own columns (VerificationStateMixin).
    assert {"upload_states", "snippet_states"} <= main
    assert "package_file_states" not in main


def test_upgrade_adds_a_column_missing_from_an_existing_registry(sites: SitePair) -> None:
    """A registry made by an older geosync lacks `claim_generation`: `geosync check` reports
    the schema behind, and `geosync db upgrade` adds the column, its rows claimable at 0."""
    geo = sites.secondary
    engine = geo.tracking_engine
    registry = Registry(geo, UploadReplicator)
    with geo.tracking() as conn:
        registry.insert_pending(conn, [5])
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE upload_registry DROP COLUMN claim_generation"))
    behind = schema_state(engine, "tracking", geo.tables.tracking)
    assert not behind.current
    assert behind.missing_columns == ["upload_registry.claim_generation"]
    assert "missing columns upload_registry.claim_generation" in behind.describe()
    report = upgrade(geo)
    assert report.created_columns == ["upload_registry.claim_generation"] and report.changed
    assert schema_state(engine, "tracking", geo.tables.tracking).current
    with geo.tracking() as conn:
        assert registry.require(conn, 5).claim_generation == 0
        assert [(key, claim.generation) for key, claim in registry.claim(conn, 1)] == [(5, 1)]
    assert upgrade(geo).created_columns == []


def test_upgrade_adds_an_index_missing_from_an_existing_registry(sites: SitePair) -> None:
    engine = sites.secondary.tracking_engine
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_upload_registry_pending"))
    report = upgrade(sites.secondary)
    assert report.created_indexes == ["ix_upload_registry_pending"] and report.changed
    assert "ix_upload_registry_pending" in {
        i["name"] for i in inspect(engine).get_indexes("upload_registry")
    }
    assert upgrade(sites.secondary).created_indexes == []


def test_upgrade_twice_changes_nothing_the_second_time(sites: SitePair) -> None:
    for site in (sites.primary, sites.secondary):
        report = upgrade(site)
        assert not report.changed
        assert report.created_tables == []
    assert upgrade(sites.primary).applied == {"main": None}
    assert upgrade(sites.secondary).applied == {"tracking": None}
    with sites.primary.main_engine.connect() as conn:
        assert current_revision(conn) == head_revision("main")
    with sites.secondary.tracking_engine.connect() as conn:
        assert current_revision(conn) == head_revision("tracking")


def test_a_first_upgrade_reports_what_it_did(tmp_path: Path, databases: DatabaseFactory) -> None:
    pair = build_site_pair(tmp_path / "a", [UploadReplicator], databases)
    try:
        tracking = databases.url("tracking2")
        settings = site_settings(
            "secondary",
            tmp_path / "b",
            [UploadReplicator],
            pair.primary.settings.main_database_url,
            tracking,
            pair.primary.settings.secret_key_base.get_secret_value(),
        )
        fresh = Geo(settings, [UploadReplicator])
        try:
            report = upgrade(fresh)
            assert report.applied == {"tracking": head_revision("tracking")}
            assert report.created_tables == ["upload_registry"]
            assert report.changed
            assert not upgrade(fresh).changed
        finally:
            fresh.dispose()
    finally:
        pair.dispose()


def test_a_new_replicator_only_adds_its_own_tables(
    tmp_path: Path, databases: DatabaseFactory
) -> None:
    pair = build_site_pair(tmp_path, [UploadReplicator], databases)
    try:
        secondary = Geo(pair.secondary.settings, [UploadReplicator, SnippetReplicator])
        primary = Geo(pair.primary.settings, [UploadReplicator, SnippetReplicator])
        try:
            cast(Table, SnippetReplicator.model.__table__).create(primary.main_engine)
            assert upgrade(primary).created_tables == ["snippet_states"]
            assert upgrade(secondary).created_tables == ["snippet_registry"]
            assert upgrade(primary).applied == {"main": None}
        finally:
            secondary.dispose()
            primary.dispose()
    finally:
        pair.dispose()


def test_the_primary_upgrade_needs_the_applications_tables_first(
    tmp_path: Path, databases: DatabaseFactory
) -> None:
    settings = site_settings(
        "primary", tmp_path, [PackageFileReplicator, SnippetReplicator], databases.url("m"),
        None, "k" * 40,
    )  # fmt: skip
    site = Geo(settings, [PackageFileReplicator, SnippetReplicator])
    try:
        with pytest.raises(ConfigurationError, match=r"table 'snippets' does not exist yet"):
            upgrade(site)
        assert "geo_nodes" not in inspect(site.main_engine).get_table_names()
    finally:
        site.dispose()
