"""An upstream tomato driver as a tomato_mqtt driver: the node sees a ``ModelInterface``
whose devices forward every call to the driver host (:mod:`.host`).

Attrs, capabilities and constants are read from the host when a component registers
and published like a native driver's (tomato's ``Attr`` types, units, limits and
options become :class:`~tomato_mqtt.driver.spec.AttrSpec`), so the scheduler validates
payloads against them as for any driver. Values are validated here with the same rules
and messages as native drivers, then set by the upstream driver's own ``set_attr``.
Tasks are not run by :class:`~tomato_mqtt.driver.runner.ComponentRunner` but by the
driver's own task thread, watched by :class:`~.runner.UpstreamRunner`.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tomato_mqtt.driver.base import Attr, ModelDevice, ModelInterface
from tomato_mqtt.driver.spec import AttrSpec
from tomato_mqtt.driver.upstream.client import HostCallError, HostProcess
from tomato_mqtt.driver.upstream.env import UpstreamDriverInfo
from tomato_mqtt.driver.validate import to_jsonable

__all__ = ["UpstreamDevice", "UpstreamDriver", "upstream_driver_class"]

log = logging.getLogger(__name__)

#: the key in a driver's ``[drivers.<name>]`` settings that picks native or upstream
SOURCE_KEY = "source"


class UpstreamDriver(ModelInterface):
    """The proxy of one upstream driver; starts its host process on construction."""

    info: UpstreamDriverInfo
    python: Path

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.settings.pop(SOURCE_KEY, None)  # ours, not the driver's
        self.host = HostProcess(self.python, self.info.name)
        try:
            loaded = self.host.call("load", module=self.info.module, settings=dict(self.settings))
        except HostCallError:
            self.host.close(timeout=2)
            raise
        idle = loaded.get("idle_measurement_interval")
        self.idle_measurement_interval = float(idle) if idle else None
        self.tomato_version = loaded.get("tomato_version")
        log.info(
            "upstream driver %s %s (tomato %s) runs in host pid %d",
            self.info.name,
            self.info.version,
            self.tomato_version,
            self.host.pid,
        )

    def DeviceFactory(self, key: tuple[str, str], **kwargs: Any) -> UpstreamDevice:
        return UpstreamDevice(self, key, **kwargs)

    @property
    def alive(self) -> bool:
        """False once the host process has exited: the node starts a new one."""
        return self.host.alive()

    def close(self) -> None:
        """End the host process (it resets its components as tomato's driver does)."""
        self.host.close()


def upstream_driver_class(info: UpstreamDriverInfo, python: Path) -> type[UpstreamDriver]:
    """A driver class for ``info`` in the venv whose interpreter is ``python``."""
    return type(
        f"Upstream_{info.module}",
        (UpstreamDriver,),
        {"info": info, "python": python, "__module__": __name__},
    )


class UpstreamDevice(ModelDevice):
    """One component of an upstream driver: every call goes to the host."""

    driver: UpstreamDriver

    def __init__(self, driver: UpstreamDriver, key: tuple[str, str], **kwargs: Any) -> None:
        super().__init__(driver, key, **kwargs)
        self.host = driver.host
        self._args: dict[str, Any] = {"address": key[0], "channel": key[1]}
        try:
            meta = self.host.call("register", **self._args)
        except HostCallError as e:
            # tomato's cmp_register turns RuntimeError into "failed to register": retry later
            raise RuntimeError(str(e)) from None
        self._attrs: dict[str, Attr] = {}
        for name, raw in dict(meta["attrs"]).items():
            self._attrs[name] = _attr_from_spec(name, AttrSpec.model_validate(raw))
        self._caps = {str(c) for c in meta["capabilities"]}
        self.constants = dict(meta.get("constants") or {})
        self._closed = threading.Event()
        self._status: dict[str, Any] = {}
        self.refresh_status()

    def call(self, op: str, timeout: float | None = None, **args: Any) -> Any:
        return self.host.call(op, timeout=timeout, **self._args, **args)

    def attrs(self) -> dict[str, Attr]:
        return dict(self._attrs)

    def capabilities(self) -> set[str]:
        return set(self._caps)

    def do_set_attr(self, attr: str, val: Any) -> None:
        try:
            self.call("set_attr", attr=attr, val=to_jsonable(val))
        except HostCallError as e:
            if e.kind == "attribute":
                raise AttributeError(str(e)) from None
            if e.kind == "value":
                raise ValueError(str(e)) from None
            raise
        self.refresh_status()

    def get_attr(self, attr: str) -> Any:
        if attr not in self._attrs:
            raise AttributeError(f"unknown attr {attr!r}")
        try:
            return self.call("get_attr", attr=attr)
        except HostCallError as e:
            if e.kind == "attribute":
                raise AttributeError(str(e)) from None
            raise

    def status(self) -> dict[str, Any]:
        """The status attrs as last read. Called on the node's event loop, so it never
        talks to the host (a real instrument may take long to answer): the values are
        read by :meth:`refresh_status`, from the runner's thread."""
        return dict(self._status)

    def refresh_status(self) -> None:
        """Read the status attrs from the driver (blocking; a failure keeps the old)."""
        if not self.host.alive():
            return
        try:
            self._status = dict(self.call("status", timeout=10))
        except HostCallError as e:
            log.warning("status of %s: %s", self.key, e)

    def do_measure(self) -> Mapping[str, Any] | None:
        cols = self.call("measure")
        if not cols or not cols.get("uts"):
            return None
        return {k: v[-1] for k, v in dict(cols.get("vars") or {}).items()}  # the newest

    def reset(self) -> None:
        self.call("reset")
        self.refresh_status()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            self.call("teardown", timeout=15)
        except HostCallError as e:
            log.warning("teardown of %s failed: %s", self.key, e)


def _attr_from_spec(name: str, spec: AttrSpec) -> Attr:
    """tomato's Attr (as the host described it) as ours; a bad one says which attr.
    Without Attr's warning of a quantity without units: tomato's drivers may declare
    one, and its advice ("give units=…") is for this project's drivers (a review: it
    pointed at this module, and followed the warning of units pint does not know)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            return Attr(
                type=spec.type,
                rw=spec.rw,
                status=spec.status,
                units=spec.units,
                minimum=spec.minimum,
                maximum=spec.maximum,
                options=spec.options,
            )
        except (TypeError, ValueError) as e:
            # e.g. units pint does not know: keep the attr, drop what cannot be checked
            log.warning("upstream attr %r: %s; published without units", name, e)
            return Attr(type=spec.type, rw=spec.rw, status=spec.status, options=spec.options)
