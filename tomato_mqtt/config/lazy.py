"""Import a dependency without the libraries it imports only for a rare path.

dgbowl-schemas imports pint at module level (and pint imports numpy: ~22 MB of RSS) for
durations given as text, which :func:`~tomato_mqtt.config.payloads.parse_payload` has
converted to seconds already. While such a module is imported, :func:`deferred` puts
a stand-in into ``sys.modules``; the module keeps the stand-in as its global, and the
stand-in imports the real library at the first use of one of its attributes, which may
never come. Once the import is done, the stand-in leaves ``sys.modules``: every other
``import pint`` gets the real module, as always.

Not ``importlib.util.LazyLoader``: on Python 3.11 the import statement itself reads the
module's ``__spec__``, which makes a LazyLoader module load at once.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

__all__ = ["deferred"]

_lock = threading.Lock()


class _Deferred(types.ModuleType):
    """Stands for a module until one of its attributes is asked for; then imports the
    real one and hands out its attributes."""

    def __getattr__(self, attr: str) -> Any:  # only for what the stand-in lacks
        real = self.__dict__.get("_deferred_real")
        if real is None:
            with _lock:
                real = self.__dict__.get("_deferred_real")
                if real is None:
                    if sys.modules.get(self.__name__) is self:  # used during the import
                        del sys.modules[self.__name__]
                    real = importlib.import_module(self.__name__)
                    self.__dict__["_deferred_real"] = real
        return getattr(real, attr)


@contextlib.contextmanager
def deferred(*names: str) -> Iterator[None]:
    """While in the block, ``import name`` (top-level, not imported yet) binds a stand-in
    that imports ``name`` at its first attribute use. Only for ``import name`` followed
    by ``name.attr``: ``from name import x`` loads the real module at once (correct, just
    not deferred); a submodule import of ``name`` must not happen inside the block."""
    added: dict[str, _Deferred] = {}
    for name in names:
        if name not in sys.modules and importlib.util.find_spec(name) is not None:
            added[name] = sys.modules[name] = _Deferred(name)
    try:
        yield
    finally:
        for name, stand_in in added.items():
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]
