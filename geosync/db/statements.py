"""Hot statements, built once: the one cache of SQLAlchemy statements geosync keeps.

Building a Core statement (and SQLAlchemy's compiled-cache key for it) costs more than running
it on the hot paths — every claim, every finished sync, every verification batch — so each
is built the first time it is asked for and kept under a key naming what varies in its shape:
a table object (not its name: another site in the same process has its own tables), a model,
a form, a size. The cache is bounded, least recently used first out, and safe across threads.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, ParamSpec, TypeVar

#: Statements kept: far more than the shapes one process uses (tables by forms by sizes).
LIMIT = 2048

P = ParamSpec("P")
T = TypeVar("T")

_built: OrderedDict[Hashable, Any] = OrderedDict()
_lock = threading.Lock()


def statement(key: Hashable, build: Callable[[], T]) -> T:
    """The statement `key`, built by `build` the first time it is asked for."""
    with _lock:
        found = _built.get(key)
        if found is not None:
            _built.move_to_end(key)
            return found  # type: ignore[no-any-return]
    made = build()
    with _lock:
        _built[key] = made
        while len(_built) > LIMIT:
            _built.popitem(last=False)
    return made


def built_once(builder: Callable[P, T]) -> Callable[P, T]:
    """`builder`, run once per distinct (hashable) arguments through `statement`."""

    @functools.wraps(builder)
    def cached(*args: P.args, **kwargs: P.kwargs) -> T:
        key = (builder, args, tuple(sorted(kwargs.items())))
        return statement(key, lambda: builder(*args, **kwargs))

    return cached
