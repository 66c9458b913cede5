"""Site settings: one object resolved at the edge and passed down.

Values come, strongest first, from explicit overrides, ``GEOSYNC_*`` environment variables and a
TOML file (``--config`` or ``GEOSYNC_CONFIG``). This is the only module that reads ``os.environ``.
"""

from __future__ import annotations

import os
import re
import tomllib
from contextvars import ContextVar
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from geosync.db.engines import database_url_problem
from geosync.errors import ConfigurationError

ENV_PREFIX = "GEOSYNC_"
CONFIG_ENV = "GEOSYNC_CONFIG"

#: A duration written as seconds: `604800`, `90.5`.
_SECONDS = re.compile(r"\d+(\.\d*)?")
#: What a duration setting accepts, for its error message.
DURATION_FORMS = "seconds (e.g. 604800) or an ISO 8601 duration (e.g. P7D, PT12H)"

_toml_path: ContextVar[Path | None] = ContextVar("geosync_toml_path", default=None)


class ObjectStorage(BaseModel):
    """A blob storage in an S3-compatible object store: `url` is `s3://bucket/prefix`.

    Credentials left out come from the standard AWS chain (`AWS_ACCESS_KEY_ID`,
    `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, profiles, instance roles). Secrets are
    `SecretStr`: never logged, never shown in pages or status.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="s3://bucket or s3://bucket/prefix")
    endpoint_url: str | None = Field(default=None, description="Endpoint of a non-AWS store.")
    region: str | None = Field(default=None, description="The bucket's region.")
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None

    @field_validator("url")
    @classmethod
    def _s3_url(cls, value: str) -> str:
        if not value.startswith("s3://") or not value[5:].strip("/"):
            raise ValueError("must be s3://bucket or s3://bucket/prefix")
        return value.rstrip("/")

    @property
    def bucket(self) -> str:
        """The bucket's name."""
        return self.url[5:].split("/", 1)[0]

    @property
    def prefix(self) -> str:
        """The key prefix inside the bucket ('' or ending in '/')."""
        rest = self.url[5:].split("/", 1)
        return rest[1].strip("/") + "/" if len(rest) > 1 and rest[1].strip("/") else ""


class Settings(BaseSettings):
    """Everything a site needs to know about itself; see docs/configuration.md."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    node_name: str = Field(min_length=1, description="Name of this site's node in geo_nodes.")
    main_database_url: str = Field(description="SQLAlchemy URL of the main database.")
    tracking_database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the tracking database (secondaries)."
    )
    blob_storages: dict[str, Path | ObjectStorage] = Field(
        default_factory=dict,
        description="Named blob storages: name -> directory, or s3://bucket/prefix (a string,"
        " or a table with `url` and the object store's options).",
    )
    repository_storage_root: Path | None = Field(
        default=None, description="Directory holding bare git repositories."
    )
    internal_url: str | None = Field(
        default=None, description="URL other sites use to reach this one."
    )
    secret_key_base: SecretStr = Field(
        description="Secret shared by all sites; encrypts node secrets. At least 32 characters."
    )
    replicators: str | None = Field(
        default=None, description="Dotted module path whose replicators form the catalog."
    )
    backoff_scale: float = Field(
        default=1.0, gt=0, description="Multiplier on retry delays (tests shrink it)."
    )
    lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Lifetime of worker leases; a dead worker's work is taken over after this"
        " long by workers of other machines (those of its own machine take it at once).",
    )
    blob_batches: bool = Field(
        default=True,
        description="A secondary fetches small blobs many per request (files over 1 MiB are"
        " always fetched alone, with resumable downloads).",
    )
    poll_interval: float = Field(
        default=2.0, gt=0, description="Seconds an idle worker waits before looking again."
    )
    event_log_max_age: timedelta = Field(
        default=timedelta(days=7),
        gt=timedelta(0),
        description="The primary never keeps events older than this, even for a dead secondary.",
    )
    status_history_hours: int = Field(
        default=24,
        ge=1,
        le=24 * 31,
        description="The primary keeps each site's status counts for this many hours (the"
        " admin UI's activity charts).",
    )
    scrub_period: timedelta = Field(
        default=timedelta(days=7),
        gt=timedelta(0),
        description="Every copy is re-checksummed at least once per this period by the scrub;"
        " status counts a copy as verified only when its verification is this recent.",
    )
    scrub_items_per_second: float = Field(
        default=50.0,
        ge=0,
        description="The scrub re-checksums at most this many copies per second (0 turns it off).",
    )
    scrub_bytes_per_second: float = Field(
        default=32 * 1024 * 1024,
        gt=0,
        description="The scrub reads at most this many bytes per second on average.",
    )
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("secret_key_base")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters")
        return value

    @field_validator("blob_storages", mode="before")
    @classmethod
    def _object_storage_urls(cls, value: Any) -> Any:
        """`name = "s3://bucket/prefix"` is an object storage with the default options."""
        if isinstance(value, dict):
            return {
                name: {"url": entry}
                if isinstance(entry, str) and entry.startswith("s3://")
                else entry
                for name, entry in value.items()
            }
        return value

    @field_validator("main_database_url", "tracking_database_url")
    @classmethod
    def _usable_database_url(cls, value: str | None) -> str | None:
        problem = None if value is None else database_url_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("event_log_max_age", "scrub_period", mode="before")
    @classmethod
    def _seconds_as_text(cls, value: Any) -> Any:
        """Seconds read the same from the environment (text) as from TOML (a number)."""
        if isinstance(value, str) and _SECONDS.fullmatch(value.strip()):
            return float(value)
        return value

    @field_validator("internal_url")
    @classmethod
    def _url_with_slash(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value if value.endswith("/") else value + "/"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Overrides beat the environment, which beats the TOML file."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _toml_path.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> Settings:
        """Resolve settings from overrides, the environment and a TOML file, or explain why not."""
        path = config_file or os.environ.get(CONFIG_ENV)
        resolved = Path(path) if path else None
        if resolved is not None:
            _check_toml(resolved)
        token = _toml_path.set(resolved)
        try:
            return cls(**overrides)
        except pydantic.ValidationError as exc:
            raise ConfigurationError(_describe(exc)) from None
        finally:
            _toml_path.reset(token)

    def blob_storage(self, name: str) -> Path:
        """The directory of a named blob storage, or a configuration error naming it (also
        when the storage is an object store: `blob_storage_entry` gives either kind)."""
        entry = self.blob_storage_entry(name)
        if isinstance(entry, ObjectStorage):
            raise ConfigurationError(
                f"setting 'blob_storages': storage {name!r} is an object store ({entry.url}),"
                " not a directory"
            )
        return entry

    def blob_storage_entry(self, name: str) -> Path | ObjectStorage:
        """A named blob storage as configured, or a configuration error naming it."""
        try:
            return self.blob_storages[name]
        except KeyError:
            known = ", ".join(sorted(self.blob_storages)) or "none"
            raise ConfigurationError(
                f"setting 'blob_storages': no storage named {name!r} (configured: {known})"
            ) from None

    def to_toml(self) -> str:
        """This object as a TOML document that `load` reads back (secrets included)."""
        lines: list[str] = []
        tables: list[str] = []
        for key, value in self.model_dump(exclude_none=True).items():
            if key == "secret_key_base":
                value = self.secret_key_base.get_secret_value()
            if key == "blob_storages":
                value = {k: _storage_value(v) for k, v in self.blob_storages.items()}
            if isinstance(value, dict):
                tables.append(f"\n[{key}]")
                tables.extend(f"{k} = {_toml_value(v)}" for k, v in sorted(value.items()))
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines + tables) + "\n"


def _storage_value(entry: Path | ObjectStorage) -> Any:
    """A blob storage as TOML: a path, or an inline table with the secrets in the clear."""
    if isinstance(entry, Path):
        return entry
    fields = entry.model_dump(exclude_none=True)
    return {k: v.get_secret_value() if isinstance(v, SecretStr) else v for k, v in fields.items()}


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, timedelta):  # seconds, the form the environment takes too
        seconds = value.total_seconds()
        return repr(int(seconds) if seconds.is_integer() else seconds)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _check_toml(path: Path) -> None:
    if not path.is_file():
        raise ConfigurationError(f"config file {path} does not exist")
    try:
        tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"config file {path} is not valid TOML: {exc}") from None


def _describe(exc: pydantic.ValidationError) -> str:
    problems = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"]) or "settings"
        env = ENV_PREFIX + str(error["loc"][0]).upper() if error["loc"] else CONFIG_ENV
        message = str(error["msg"])
        if error["type"] == "missing":
            message = f"missing (set it in the config file or {env})"
        elif error["type"] == "extra_forbidden":
            message = "is not a known setting"
        elif error["type"].startswith("time_delta"):
            message = f"{error['input']!r} is not a duration: use {DURATION_FORMS}"
        elif error["type"] == "value_error":
            message = message.removeprefix("Value error, ")
        problems.append(f"setting '{name}': {message}")
    return "; ".join(problems)
