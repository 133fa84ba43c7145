"""Modules imported for real only when first used.

A service that imports a library only because a dependency does so at module level
(dgbowl-schemas imports pint in its task model, and pint imports numpy: ~22 MB of RSS)
but uses it only on a rare path holds that memory for as long as it runs. Putting a
stand-in into ``sys.modules`` before the dependency is imported defers the cost to the
first use of one of the module's attributes, which may never come.

Not ``importlib.util.LazyLoader``: on Python 3.11 the import statement itself reads the
module's ``__spec__``, which makes a LazyLoader module load at once.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from typing import Any

__all__ = ["defer_import"]

_lock = threading.Lock()


class _Deferred(types.ModuleType):
    """Stands for a module until one of its attributes is asked for, then imports it
    (replacing itself in ``sys.modules``) and hands out the real module's attributes."""

    def __getattr__(self, attr: str) -> Any:  # only for what the stand-in lacks
        real = self.__dict__.get("_deferred_real")
        if real is None:
            with _lock:
                real = self.__dict__.get("_deferred_real")
                if real is None:
                    if sys.modules.get(self.__name__) is self:
                        del sys.modules[self.__name__]
                    real = importlib.import_module(self.__name__)
                    self.__dict__["_deferred_real"] = real
        return getattr(real, attr)


def defer_import(name: str) -> types.ModuleType | None:
    """Make ``import name`` cheap until ``name.attr`` is used; None if not installed.

    For a top-level module that is not imported yet (else: that module, unchanged).
    ``from name import x`` and ``import name.sub`` load the real module at once, which
    is correct, only not deferred.
    """
    if name in sys.modules:
        return sys.modules[name]
    if importlib.util.find_spec(name) is None:
        return None
    stand_in = _Deferred(name)
    sys.modules[name] = stand_in
    return stand_in
