"""Structured logging: one JSON object per line in services, readable lines in a terminal."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = ("authorization", "secret", "token", "password")


def _scrub(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Secrets never reach a log line, whatever a caller passes."""
    for key in list(event):
        if _secret_key(key):
            event[key] = "[FILTERED]"
    return event


@functools.lru_cache(maxsize=1024)
def _secret_key(key: str) -> bool:
    """Whether a log field named `key` may hold a secret (log fields are few and repeat)."""
    return any(word in key.lower() for word in _SECRET_KEYS)


def configure(fmt: str = "json", level: str = "info") -> None:
    """Set up structlog and the stdlib root logger once per process."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    numeric = getattr(logging, level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _scrub,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr)


def get_logger(name: str) -> Any:
    """A structured logger tagged with the component `name`."""
    return structlog.get_logger(component=name)
