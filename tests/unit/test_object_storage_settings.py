"""`[blob_storages]` entries that are object stores: parsed, round-tripped, secrets hidden."""

from __future__ import annotations

from pathlib import Path

import pytest

from geosync.errors import ConfigurationError
from geosync.settings import ObjectStorage, Settings


def _settings(tmp_path: Path, **storages: object) -> Settings:
    return Settings.load(
        node_name="a",
        main_database_url=f"sqlite:///{tmp_path / 'main.db'}",
        secret_key_base="x" * 32,
        blob_storages=storages,
    )


def test_s3_urls_and_tables_are_object_storages_that_round_trip(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        files=str(tmp_path / "files"),
        plain="s3://bucket/some/prefix/",
        full={"url": "s3://other", "access_key_id": "key-id", "secret_access_key": "hidden-1"},
    )
    plain = settings.blob_storage_entry("plain")
    assert isinstance(plain, ObjectStorage)
    assert (plain.bucket, plain.prefix) == ("bucket", "some/prefix/")
    assert "hidden-1" not in repr(settings)
    config = tmp_path / "site.toml"
    config.write_text(settings.to_toml())
    assert Settings.load(config).blob_storages == settings.blob_storages
    with pytest.raises(ConfigurationError, match="is an object store"):
        settings.blob_storage("plain")


def test_a_bad_object_storage_url_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="s3://bucket"):
        _settings(tmp_path, broken={"url": "s3://"})
