"""Settings: TOML file, GEOSYNC_* environment and overrides; every error names its setting."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from geosync import ConfigurationError, Geo, Settings
from geosync.demo.replicators import UploadReplicator

SECRET = "s" * 40


def write_toml(path: Path, text: str) -> Path:
    """A TOML file with `text`."""
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A complete primary configuration file."""
    return write_toml(
        tmp_path / "geosync.toml",
        f"""
node_name = "from-file"
main_database_url = "sqlite:///{tmp_path / "main.db"}"
secret_key_base = "{SECRET}"
internal_url = "http://127.0.0.1:8001"

[blob_storages]
uploads = "{tmp_path / "uploads"}"
""",
    )


def test_a_toml_file_gives_every_setting(config: Path, tmp_path: Path) -> None:
    settings = Settings.load(config)
    assert settings.node_name == "from-file"
    assert settings.blob_storages == {"uploads": tmp_path / "uploads"}
    assert settings.secret_key_base.get_secret_value() == SECRET
    assert settings.tracking_database_url is None


def test_the_environment_beats_the_file(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEOSYNC_NODE_NAME", "from-env")
    monkeypatch.setenv("GEOSYNC_BLOB_STORAGES__PACKAGES", "/srv/packages")
    settings = Settings.load(config)
    assert settings.node_name == "from-env"
    assert settings.blob_storages["packages"] == Path("/srv/packages")
    assert "uploads" in settings.blob_storages


def test_explicit_overrides_beat_the_environment(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEOSYNC_NODE_NAME", "from-env")
    assert Settings.load(config, node_name="override").node_name == "override"


def test_geosync_config_names_the_file_when_none_is_given(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEOSYNC_CONFIG", str(config))
    assert Settings.load().node_name == "from-file"


def test_the_environment_alone_is_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEOSYNC_NODE_NAME", "env-only")
    monkeypatch.setenv("GEOSYNC_MAIN_DATABASE_URL", "sqlite:///env.db")
    monkeypatch.setenv("GEOSYNC_SECRET_KEY_BASE", SECRET)
    monkeypatch.setenv("GEOSYNC_BACKOFF_SCALE", "0.5")
    settings = Settings.load()
    assert settings.node_name == "env-only"
    assert settings.backoff_scale == 0.5


def test_missing_settings_are_each_named_with_their_variable() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.load()
    message = str(caught.value)
    for name in ("node_name", "main_database_url", "secret_key_base"):
        assert f"setting '{name}': missing" in message
        assert f"GEOSYNC_{name.upper()}" in message
    assert "\n" not in message


def test_a_short_secret_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.load(node_name="a", main_database_url="sqlite:///a.db", secret_key_base="tiny-x")
    assert str(caught.value) == "setting 'secret_key_base': must be at least 32 characters"


def test_a_secret_never_appears_in_the_settings_repr() -> None:
    settings = Settings.load(
        node_name="a", main_database_url="sqlite:///a.db", secret_key_base=SECRET
    )
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)


def test_an_internal_url_must_be_http_and_gets_a_trailing_slash() -> None:
    base = {"node_name": "a", "main_database_url": "sqlite:///a.db", "secret_key_base": SECRET}
    assert Settings.load(**base, internal_url="http://127.0.0.1:9").internal_url == (
        "http://127.0.0.1:9/"
    )
    with pytest.raises(ConfigurationError, match=r"^setting 'internal_url': must start with http"):
        Settings.load(**base, internal_url="ftp://127.0.0.1")


def test_a_bad_value_from_the_environment_names_the_setting(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEOSYNC_BACKOFF_SCALE", "fast")
    with pytest.raises(ConfigurationError, match=r"^setting 'backoff_scale': .*number"):
        Settings.load(config)


def test_an_unknown_setting_in_the_file_is_named(tmp_path: Path, config: Path) -> None:
    text = config.read_text(encoding="utf-8").replace("[blob_storages]", "colour = 1\n[x]")
    with pytest.raises(ConfigurationError, match=r"setting 'colour': is not a known setting"):
        Settings.load(write_toml(tmp_path / "extra.toml", text))


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"config file .*nope\.toml does not exist"):
        Settings.load(tmp_path / "nope.toml")


def test_a_config_file_that_is_not_toml_is_named(tmp_path: Path) -> None:
    broken = write_toml(tmp_path / "broken.toml", "node_name = \n")
    with pytest.raises(ConfigurationError, match=r"config file .*broken\.toml is not valid TOML"):
        Settings.load(broken)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("not a url", "is not a database URL"),
        ("mysql://127.0.0.1/app", "unsupported database 'mysql'"),
        ("postgresql+asyncpg://127.0.0.1/app", "unsupported driver 'postgresql+asyncpg'"),
        ("postgresql://app:pw-secret@db:port/app", "'postgresql://app:***@db:port/app' is not"),
        ("sqlite://", "in-memory SQLite"),
    ],
)
def test_a_bad_database_url_names_its_setting(url: str, problem: str) -> None:
    for setting in ("main_database_url", "tracking_database_url"):
        values = {"main_database_url": "sqlite:///a.db", setting: url}
        with pytest.raises(ConfigurationError) as caught:
            Settings.load(node_name="a", secret_key_base=SECRET, **values)
        message = str(caught.value)
        assert message.startswith(f"setting '{setting}': ")
        assert problem in message
        assert "pw-secret" not in message
        assert len(message.splitlines()) == 1


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("not a url", "is not a database URL"),
        ("mysql://127.0.0.1/app", "unsupported database 'mysql'"),
        ("sqlite://", "in-memory SQLite"),
    ],
)
def test_an_engine_for_a_bad_url_names_its_setting(url: str, problem: str) -> None:
    """Settings built without validation (`model_copy`) still meet the check at the engine."""
    settings = Settings.load(
        node_name="a", main_database_url="sqlite:///a.db", secret_key_base=SECRET
    )
    for setting in ("main_database_url", "tracking_database_url"):
        geo = Geo(settings.model_copy(update={setting: url}), [UploadReplicator])
        engine_of = {"main_database_url": "main_engine", "tracking_database_url": "tracking_engine"}
        with pytest.raises(ConfigurationError) as caught:
            getattr(geo, engine_of[setting])
        assert str(caught.value).startswith(f"setting '{setting}': ")
        assert problem in str(caught.value)


BASE = {"node_name": "a", "main_database_url": "sqlite:///a.db", "secret_key_base": SECRET}


@pytest.mark.parametrize(
    ("toml", "env", "expected"),
    [
        ("3600", "3600", timedelta(hours=1)),
        ("90.5", "90.5", timedelta(seconds=90.5)),
        ('"P7D"', "P7D", timedelta(days=7)),
        ('"PT12H"', "PT12H", timedelta(hours=12)),
    ],
)
def test_event_log_max_age_takes_the_same_forms_in_toml_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str, env: str, expected: timedelta
) -> None:
    lines = "".join(f'{k} = "{v}"\n' for k, v in BASE.items())
    config = write_toml(tmp_path / "age.toml", lines + f"event_log_max_age = {toml}\n")
    assert Settings.load(config).event_log_max_age == expected
    monkeypatch.setenv("GEOSYNC_EVENT_LOG_MAX_AGE", env)
    assert Settings.load(**BASE).event_log_max_age == expected


@pytest.mark.parametrize("value", ["a week", "-5", "P7X", ""])
def test_a_bad_event_log_max_age_is_one_line_naming_the_forms(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("GEOSYNC_EVENT_LOG_MAX_AGE", value)
    with pytest.raises(ConfigurationError) as caught:
        Settings.load(**BASE)
    message = str(caught.value)
    assert message == (
        f"setting 'event_log_max_age': {value!r} is not a duration: use seconds"
        " (e.g. 604800) or an ISO 8601 duration (e.g. P7D, PT12H)"
    )


def test_a_zero_event_log_max_age_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEOSYNC_EVENT_LOG_MAX_AGE", "0")
    with pytest.raises(ConfigurationError, match=r"setting 'event_log_max_age': .*greater than"):
        Settings.load(**BASE)


def test_event_log_max_age_is_written_as_seconds(tmp_path: Path) -> None:
    settings = Settings.load(**BASE, event_log_max_age=timedelta(days=2))
    assert "event_log_max_age = 172800\n" in settings.to_toml()
    again = Settings.load(write_toml(tmp_path / "again.toml", settings.to_toml()))
    assert again.event_log_max_age == timedelta(days=2)


def test_a_site_without_a_catalog_names_the_replicators_setting() -> None:
    settings = Settings.load(
        node_name="a", main_database_url="sqlite:///a.db", secret_key_base=SECRET
    )
    with pytest.raises(ConfigurationError, match=r"setting 'replicators'"):
        Geo(settings)


def test_a_primary_has_no_tracking_database() -> None:
    settings = Settings.load(
        node_name="a", main_database_url="sqlite:///a.db", secret_key_base=SECRET
    )
    with pytest.raises(ConfigurationError, match=r"setting 'tracking_database_url'"):
        _ = Geo(settings, [UploadReplicator]).tracking_engine


def test_a_named_storage_that_is_not_configured_lists_the_configured_ones(config: Path) -> None:
    with pytest.raises(
        ConfigurationError, match=r"no storage named 'packages' \(configured: uploads\)"
    ):
        Settings.load(config).blob_storage("packages")


def test_settings_written_as_toml_load_back_equal(config: Path, tmp_path: Path) -> None:
    settings = Settings.load(config)
    again = Settings.load(write_toml(tmp_path / "again.toml", settings.to_toml()))
    assert again == settings
