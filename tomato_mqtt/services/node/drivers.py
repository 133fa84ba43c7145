"""The drivers of a node: which class ``driver: <name>`` means here, one instance each,
their settings, and why a driver could not be had.

Native drivers and upstream tomato driver packages alike (``resolve_driver``); an
upstream driver's instance owns a host process, so instances are created off the event
loop, closed when dropped, and made anew when that process has died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

from tomato_mqtt.driver import ModelInterface
from tomato_mqtt.driver.discovery import DriverNotFound, all_drivers, resolve_driver
from tomato_mqtt.wire.messages import DriverInfo

__all__ = ["NodeDrivers", "close_quietly", "idle_interval", "off_loop"]

log = logging.getLogger(__name__)

T = TypeVar("T")


async def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` (a call into driver code) on a thread of its own, awaited.

    Not asyncio's shared pool (``to_thread``): its few workers (6 on a 2-core PC) were
    taken for good by instruments' constructors that never return, and then no healthy
    component of the node answered anything (a fault-injection run). A daemon thread per
    call; one that never returns holds only itself, and not the interpreter's exit."""
    import threading

    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if fut.done():  # the caller stopped waiting (cancelled)
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def run() -> None:
        try:
            result = fn(*args, **kwargs)
        except BaseException as e:  # (handed to the awaiting task)
            outcome: tuple[bool, Any] = (False, e)
        else:
            outcome = (True, result)
        # (the loop closed meanwhile, the node stopped: nobody waits)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, *outcome)

    name = f"driver-call-{getattr(fn, '__name__', 'call')}"
    threading.Thread(target=run, name=name, daemon=True).start()
    return await fut


#: keys of ``[drivers.<name>]`` that are tomato-mqtt's, not the driver's
_OURS = ("source",)
_UNSET: Any = object()


class NodeDrivers:
    def __init__(
        self,
        settings: Mapping[str, Mapping[str, Any]],
        upstream_env: Path | None,
        node: str | None = None,
    ) -> None:
        self.settings = {k: dict(v) for k, v in settings.items()}
        self.upstream_env = upstream_env
        self.node = node  # its name, for the messages
        self.instances: dict[str, ModelInterface] = {}
        self.errors: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._sent: set[str] = set()  # drivers whose settings the scheduler sent last
        #: (source, version) each instance was made of (an upstream driver upgraded
        #: since runs its old code until its host process is made anew: upgraded())
        self.made_of: dict[str, tuple[str, str]] = {}

    def update_settings(self, settings: Mapping[str, Mapping[str, Any]]) -> set[str]:
        """Take the scheduler's settings; returns the drivers whose settings changed.

        A driver whose table the scheduler sent before and sends no more had its
        settings removed: it changed too (found by fault injection: removing
        ``fail_on_connect`` was reported applied, and the node kept it). A table the
        scheduler never sent (this node's own settings) is kept."""
        changed = set()
        for name, table in settings.items():
            if self.settings.get(name) != dict(table):
                changed.add(name)
            self.settings[name] = dict(table)
        for name in self._sent - set(settings):
            if self.settings.pop(name, None):
                changed.add(name)
        self._sent = set(settings)
        return changed

    async def get(self, name: str) -> ModelInterface:
        """The instance of driver ``name``; raises :class:`DriverNotFound`."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            drv = self.instances.get(name)
            if drv is not None and not getattr(drv, "alive", True):
                # an upstream driver's host process died: registering starts a new one
                log.warning("the host process of driver %s died; starting a new one", name)
                self.drop(name)
                drv = None
            if drv is None:
                settings = self.settings.get(name, {})
                try:
                    cls = resolve_driver(name, settings, self.upstream_env, self.node)
                except DriverNotFound as e:
                    self.errors[name] = str(e)
                    raise
                theirs = {k: v for k, v in settings.items() if k not in _OURS}
                # the setting overrides what the driver sets (its class or __init__), as
                # the upstream host does for tomato's drivers (a native driver's was
                # ignored: a newcomer's tour); checked before a host process starts
                idle = settings.get("idle_measurement_interval", _UNSET)
                if idle is not _UNSET:
                    idle = idle_interval(name, idle)
                # an upstream driver starts its host process here: off the event loop
                drv = await off_loop(cls, theirs)
                if idle is not _UNSET:
                    drv.idle_measurement_interval = idle
                self.instances[name] = drv
                self.errors.pop(name, None)
                made = self._installed().get(name)
                if made is not None:
                    self.made_of[name] = made
            return drv

    def _installed(self) -> dict[str, tuple[str, str]]:
        """(source, version) of the driver each name resolves to, as installed now."""
        return {
            d.name: (d.source, d.version)
            for d in all_drivers(self.settings, self.upstream_env)
            if d.used
        }

    def upgraded(self) -> set[str]:
        """Upstream drivers installed anew (another version) since their instance was
        made: its host process runs the old code (an admin installed a driver's fix,
        `tomato reload`, and `tomato status drivers` showed the new version while every
        job ran the old one: a tomato 2.2 user's review). A native driver's code is
        imported into the node itself: a restart of the node takes a new version."""
        now = self._installed()
        return {
            name
            for name, made in self.made_of.items()
            if name in self.instances and made[0] == "upstream" and now.get(name, made) != made
        }

    def drop(self, name: str) -> None:
        """Forget (and close) the instance of ``name``; the next :meth:`get` makes one."""
        drv = self.instances.pop(name, None)
        self.made_of.pop(name, None)
        if drv is not None:
            close_quietly(drv)

    def close_all(self) -> None:
        for name in list(self.instances):
            self.drop(name)

    def infos(self, used: Collection[str] | None = None) -> dict[str, DriverInfo]:
        """For the node's status: installed drivers (the one each name resolves to) and
        the errors of those that could not be had (of the drivers in ``used`` only, when
        given: a driver no component of the node names any more was still listed "not
        installed" after its device was removed: a newcomer's tour)."""
        out: dict[str, DriverInfo] = {}
        for d in all_drivers(self.settings, self.upstream_env):
            if d.used:
                ver = d.version if d.source == "native" else f"{d.version} (tomato {d.package})"
                made = self.made_of.get(d.name)
                if d.name in self.instances and made is not None and made[1] != d.version:
                    # the version that runs, not only the one installed since
                    ver = f"{made[1]} running, {ver} installed: " + (
                        "used once its components are idle at a `tomato reload`"
                        if made[0] == "upstream"
                        else "used after the node is restarted (`tomato restart-node`)"
                    )
                out[d.name] = DriverInfo(version=ver, loaded=d.name in self.instances)
        for name, err in self.errors.items():
            if used is None or name in used:
                out[name] = DriverInfo(loaded=False, error=err)
        return out


def close_quietly(obj: Any) -> None:
    """``obj.close()`` if it has one (a driver: an upstream one ends its host process; a
    device: its port), logging what it raises."""
    close = getattr(obj, "close", None)
    if callable(close):
        try:
            close()
        except Exception:
            log.exception("closing %s failed", type(obj).__name__)


def idle_interval(driver: str, value: object) -> float | None:
    """``[drivers.<driver>] idle_measurement_interval``: seconds, 0 (or less) for off."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value):  # type: ignore[arg-type]
        raise DriverNotFound(
            f"[drivers.{driver}] idle_measurement_interval must be a number of seconds"
            f" (0: off), not {value!r}"
        )
    return float(value) if value > 0 else None  # type: ignore[operator,arg-type]
