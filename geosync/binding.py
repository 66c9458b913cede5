"""Which site an engine belongs to, so the session hooks know where to publish.

A site's own main engine belongs to it; an application binds its own engines with
`Geo.bind(engine)`. Every ORM session on a bound engine (however it was made) then publishes
events in its flush, as `Geo.session()` does. A flush that creates or deletes `Replicable`
records through an engine no site is bound to publishes nothing: it is reported once per engine
with an `UnboundEngineWarning` and one log line that name the fix, rather than refused, so an
application's own tests and scripts that run without any geosync site keep working.
"""

from __future__ import annotations

import sys
import threading
import warnings
import weakref
from collections.abc import Iterable
from types import FrameType
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from geosync.errors import ConfigurationError
from geosync.log import get_logger

if TYPE_CHECKING:
    from geosync.app import Geo

log = get_logger("binding")

_by_engine: weakref.WeakKeyDictionary[Engine, Geo] = weakref.WeakKeyDictionary()
_warned: weakref.WeakSet[Engine] = weakref.WeakSet()
_lock = threading.Lock()

#: Frames of these packages are skipped when a warning points at the code that flushed.
_INTERNAL_PACKAGES = ("geosync", "sqlalchemy")


class UnboundEngineWarning(UserWarning):
    """Replicable records were flushed through an engine that no geosync site is bound to: no
    events were published. Call `geo.bind(engine)` once at start-up.
    """


def geo_for_engine(engine: Engine) -> Geo | None:
    """The site `engine` belongs to (its main engine, or an engine bound to it), or None."""
    return _by_engine.get(engine)


def bind_engines(geo: Geo, engines: Iterable[object]) -> None:
    """Bind `engines` to `geo`; called by `Geo.bind` and for a site's own main engine.

    Binding again to the same site (or to a new `Geo` of the same node) is harmless; binding an
    engine that belongs to another site raises `ConfigurationError`, since one flush can only
    publish to one event log.
    """
    checked = [_checked_engine(engine) for engine in engines]
    with _lock:
        for engine in checked:
            bound = _by_engine.get(engine)
            if bound is not None and bound is not geo and _node(bound) != _node(geo):
                raise ConfigurationError(
                    f"{engine!r} is already bound to site {_node(bound)!r};"
                    f" it cannot be bound to site {_node(geo)!r} too"
                )
        for engine in checked:
            _by_engine[engine] = geo


def _checked_engine(engine: object) -> Engine:
    if not isinstance(engine, Engine):
        raise ConfigurationError(
            f"Geo.bind takes SQLAlchemy engines (create_engine(...)), not {type(engine).__name__}"
        )
    return engine


def _node(geo: Geo) -> str:
    return geo.settings.node_name


def warn_unbound(engine: Engine, models: Iterable[str]) -> None:
    """Report, once per engine, that replicable records were flushed through `engine` while no
    site is bound to it. Called by the session hooks of `geosync.model`.
    """
    with _lock:
        if engine in _warned:
            return
        _warned.add(engine)
    names = sorted(set(models))
    # `repr(engine)` shows its URL with the password hidden.
    message = (
        f"{', '.join(names)} records were flushed through {engine!r}, which no geosync site is"
        " bound to: no events were published and the primary's verification state was not"
        ' updated. Call geo.bind(engine) once at start-up (docs/concepts.md, "Binding the'
        " application's engine\")."
    )
    log.warning(
        "replicable records flushed through an unbound engine",
        engine=repr(engine),
        models=names,
        fix="geo.bind(engine)",
    )
    warnings.warn(message, UnboundEngineWarning, stacklevel=_application_stacklevel())


def _application_stacklevel() -> int:
    """The `stacklevel` of the first frame outside geosync and SQLAlchemy, counted from the
    caller of this function: the warning then points at the application's flush or commit.
    """
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        if module.split(".", 1)[0] not in _INTERNAL_PACKAGES:
            return level
        frame = frame.f_back
        level += 1
    return 1
