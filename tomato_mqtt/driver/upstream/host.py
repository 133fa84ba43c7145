"""The driver host: runs ONE upstream tomato driver package in its own process.

Run as a script by the interpreter of the upstream-driver environment (a venv that
holds ``tomato>=2.2`` and the driver packages, see :mod:`.env`)::

    <env>/bin/python -I host.py

It must stay self-contained: it imports nothing of tomato_mqtt (whose dependencies are
not in that environment) and nothing but the standard library at module level; tomato,
xarray and the driver are imported by the ``load`` request.

Protocol: one JSON object per line. The node writes ``{"id", "op", "args"}`` on stdin;
the host answers ``{"id", "ok": true, "data"}`` or ``{"id", "ok": false, "error",
"kind"}`` on stdout, one answer per request, in order. ``kind`` tells the node how to
treat a failure: ``retry`` (the instrument is not there yet), ``value`` / ``attribute``
(a refused value or attr), ``driver`` (anything else). Everything a driver prints goes
to stderr (the node's log): stdout carries only the protocol. The host drives the
driver exactly as tomato's own driver process does, through the public
``ModelInterface`` methods (``cmp_register``, ``task_start``, ``task_data``, ...), so the
driver's own task threads run its tasks. EOF on stdin ends the host.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["dataset_to_columns", "main"]

log = logging.getLogger("tomato_mqtt.upstream_host")


class HostError(Exception):
    def __init__(self, msg: str, kind: str = "driver") -> None:
        super().__init__(msg)
        self.kind = kind


class _LastCritical(logging.Handler):
    """Remembers the last critical log record: tomato's task threads report the reason
    they died only there (``logger.critical(e, exc_info=True)``)."""

    def __init__(self) -> None:
        super().__init__(logging.CRITICAL)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        self.last = f"{type(exc).__name__}: {exc}" if exc is not None else record.getMessage()


_critical = _LastCritical()


def jsonable(v: Any) -> Any:
    """A value of the driver as JSON: quantities as ``"<magnitude> <units>"`` text, numpy
    scalars as Python numbers, sets as sorted lists, anything else as text."""
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return None if math.isnan(v) else v
    if hasattr(v, "magnitude") and hasattr(v, "units"):
        return f"{v.magnitude} {v.units}"
    if isinstance(v, set | frozenset):
        return sorted((jsonable(x) for x in v), key=str)
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if hasattr(v, "item"):  # numpy scalar
        return jsonable(v.item())
    return str(v)


def dataset_to_columns(ds: Any) -> dict[str, Any]:
    """An upstream ``xarray.Dataset`` (dimension ``uts``) as columns: THE conversion.

    Returns ``{"uts": [t...], "vars": {name: [value per uts]}, "units": {name: units},
    "arrays": {name: {"dims": [...], "coords": {dim: [...]}, "coord_units": {...}}}}``.
    A variable with extra dimensions (a spectrum per timestamp) has one nested list per
    ``uts`` in ``vars`` and its extra dimensions described in ``arrays``. A coordinate
    along ``uts`` that is no dimension is a variable here. Variables without ``uts``
    (constants) are left out, and attributes other than ``units``; NaN becomes null.
    """
    out: dict[str, Any] = {"uts": [], "vars": {}, "units": {}, "arrays": {}}
    if ds is None or "uts" not in ds.dims:
        return out
    out["uts"] = [float(t) for t in ds["uts"].values.tolist()]
    # a coordinate along uts that is no dimension (a cycle number per point) is data:
    # kept as a variable (a tomato 2.2 user's review: it was left out without a word,
    # and a script's groupby("cycle") broke)
    along = [(n, c) for n, c in ds.coords.items() if n not in ds.dims and "uts" in c.dims]
    for name, da in [*ds.data_vars.items(), *along]:
        if "uts" not in da.dims:
            continue
        da = da.transpose("uts", ...)
        out["vars"][str(name)] = _nan_to_none(da.values.tolist())
        units = da.attrs.get("units")
        if units is not None:
            out["units"][str(name)] = str(units)
        if da.ndim > 1:
            extra = [str(d) for d in da.dims[1:]]
            coords: dict[str, Any] = {}
            coord_units: dict[str, str] = {}
            for d in extra:
                if d in ds.coords:
                    coords[d] = _nan_to_none(ds[d].values.tolist())
                    cu = ds[d].attrs.get("units")
                    if cu is not None:
                        coord_units[d] = str(cu)
            out["arrays"][str(name)] = {"dims": extra, "coords": coords, "coord_units": coord_units}
    return out


def _nan_to_none(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, list):
        return [_nan_to_none(x) for x in v]
    return v


class Host:
    """One driver: its ``DriverInterface`` instance and the requests on it."""

    def __init__(self) -> None:
        self.interface: Any = None
        self.module = ""
        self.task_cls: Any = None

    # -- helpers ------------------------------------------------------------------------
    def _key(self, args: dict[str, Any]) -> tuple[str, str]:
        key = (str(args["address"]), str(args["channel"]))
        if self.interface is None or key not in self.interface.devmap:
            raise HostError(f"component {key} is not registered in {self.module}")
        return key

    def _reply(self, reply: Any, kind: str = "driver") -> Any:
        """A tomato ``Reply``: its data, or a HostError with its message."""
        if not reply.success:
            raise HostError(str(reply.msg), kind)
        return reply.data

    def _meta(self, key: tuple[str, str]) -> dict[str, Any]:
        dev = self.interface.devmap[key]
        return {
            "attrs": {k: self._attr_spec(a) for k, a in dev.attrs(key=key).items()},
            "capabilities": sorted(str(c) for c in dev.capabilities(key=key)),
            "constants": jsonable(dict(self.interface.constants) | dict(dev.constants)),
        }

    @staticmethod
    def _attr_spec(a: Any) -> dict[str, Any]:
        """tomato's ``Attr`` as tomato_mqtt's AttrSpec fields."""
        t = a.type
        name = getattr(t, "__name__", str(t))
        kind = {"float": "float", "int": "int", "str": "str", "bool": "bool"}.get(name)
        if kind is None:
            kind = "quantity" if name == "Quantity" else "str"
        units = a.units
        lims: list[float | None] = []
        for lim in (a.minimum, a.maximum):
            if lim is None:
                lims.append(None)
            elif hasattr(lim, "magnitude"):
                if units is None:
                    units = str(lim.units)
                lims.append(float(lim.to(units).magnitude))
            else:
                lims.append(float(lim))
        options = None if a.options is None else jsonable(a.options)
        return {
            "type": kind,
            "units": units,
            "rw": bool(a.rw),
            "status": bool(a.status),
            "minimum": lims[0],
            "maximum": lims[1],
            "options": options,
        }

    def _idle_wait(self, key: tuple[str, str], timeout: float) -> None:
        """Wait until the component's task thread has worked off its queue."""
        dev = self.interface.devmap[key]
        deadline = time.monotonic() + timeout
        while dev.task_list.unfinished_tasks or dev.running:
            if not dev.thread.is_alive():
                why = _critical.last or "see the node's log"
                raise HostError(f"the task thread of component {key} died: {why}")
            if time.monotonic() > deadline:
                raise HostError(f"component {key} is still busy after {timeout:g} s")
            time.sleep(0.005)

    # -- requests -----------------------------------------------------------------------
    def op_load(self, args: dict[str, Any]) -> Any:
        self.module = str(args["module"])
        try:
            mod = importlib.import_module(self.module)
        except Exception as e:
            raise HostError(f"cannot import {self.module}: {type(e).__name__}: {e}") from e
        cls = getattr(mod, "DriverInterface", None)
        if cls is None:
            raise HostError(f"{self.module} has no DriverInterface")
        self.task_cls = importlib.import_module("tomato.models").Task
        settings = dict(args.get("settings") or {})
        self.interface = cls(settings=settings)
        if "idle_measurement_interval" in self.interface.settings:  # as tomato does
            idle = self.interface.settings["idle_measurement_interval"]
        else:
            idle = getattr(self.interface, "idle_measurement_interval", None)
        from importlib import metadata

        def version(dist: str) -> str | None:
            try:
                return metadata.version(dist)
            except metadata.PackageNotFoundError:
                return None

        return {
            "idle_measurement_interval": idle,
            "interface_version": str(getattr(self.interface, "version", "")),
            "tomato_version": version("tomato"),
            "version": version(self.module.replace("_", "-")),
        }

    def op_register(self, args: dict[str, Any]) -> Any:
        if self.interface is None:
            raise HostError("no driver loaded")
        reply = self.interface.cmp_register(address=args["address"], channel=args["channel"])
        self._reply(reply, kind="retry")
        return self._meta(self._key(args))

    def op_meta(self, args: dict[str, Any]) -> Any:
        return self._meta(self._key(args))

    def op_set_attr(self, args: dict[str, Any]) -> Any:
        key = self._key(args)
        try:
            reply = self.interface.cmp_set_attr(attr=args["attr"], val=args["val"], key=key)
        except AttributeError as e:
            raise HostError(str(e), "attribute") from e
        except (ValueError, TypeError) as e:
            raise HostError(str(e), "value") from e
        return jsonable(self._reply(reply))

    def op_get_attr(self, args: dict[str, Any]) -> Any:
        key = self._key(args)
        try:
            reply = self.interface.cmp_get_attr(attr=args["attr"], key=key)
        except AttributeError as e:
            raise HostError(str(e), "attribute") from e
        return jsonable(self._reply(reply))

    def op_status(self, args: dict[str, Any]) -> Any:
        data = self._reply(self.interface.cmp_status(key=self._key(args)))
        return jsonable({k: v for k, v in dict(data).items() if k != "running"})

    def op_task_start(self, args: dict[str, Any]) -> Any:
        key = self._key(args)
        t = dict(args["task"])
        task = self.task_cls(
            # tomato_mqtt's task carries no role; tomato's Task requires one
            component_role=t.get("component_role") or "component",
            technique_name=t["technique_name"],
            max_duration=t["max_duration"],
            sampling_interval=t["sampling_interval"],
            task_params=t.get("task_params") or {},
            task_name=t.get("task_name"),
        )
        _critical.last = None
        self._reply(self.interface.task_start(key=key, task=task), kind="value")
        return None

    def op_task_status(self, args: dict[str, Any]) -> Any:
        key = self._key(args)
        dev = self.interface.devmap[key]
        busy = bool(dev.running) or bool(dev.task_list.unfinished_tasks)
        dead = busy and not dev.thread.is_alive()
        return {
            "running": busy and not dead,
            "error": (_critical.last or "the task thread died") if dead else None,
        }

    def op_task_data(self, args: dict[str, Any]) -> Any:
        key = self._key(args)
        return dataset_to_columns(self.interface.devmap[key].get_data())

    def op_task_stop(self, args: dict[str, Any]) -> Any:
        key = self._key(args)
        data = self.interface.task_stop(key=key).data
        return dataset_to_columns(data)

    def op_measure(self, args: dict[str, Any]) -> Any:
        key = self._key(args)
        dev = self.interface.devmap[key]
        _critical.last = None
        before = dev.get_last_data()
        self._reply(self.interface.cmp_measure(key=key))
        self._idle_wait(key, float(args.get("timeout", 30.0)))
        after = dev.get_last_data()
        if after is None or after is before:
            return dataset_to_columns(None)
        return dataset_to_columns(after)

    def op_reset(self, args: dict[str, Any]) -> Any:
        self._reply(self.interface.cmp_reset(key=self._key(args)))
        return None

    def op_teardown(self, args: dict[str, Any]) -> Any:
        key = (str(args["address"]), str(args["channel"]))
        if self.interface is not None and key in self.interface.devmap:
            self._reply(self.interface.cmp_teardown(key=key))
        return None

    def op_ping(self, args: dict[str, Any]) -> Any:
        return {"pid": os.getpid(), "python": sys.version.split()[0]}


def main() -> None:
    # stdout carries the protocol only: whatever the driver prints goes to stderr
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    logging.basicConfig(
        level=os.environ.get("TOMATO_MQTT_HOST_LOGLEVEL", "WARNING"),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s upstream-host[%(process)d] %(name)s: %(message)s",
    )
    logging.getLogger().addHandler(_critical)
    host = Host()
    ops: dict[str, Callable[[dict[str, Any]], Any]] = {
        "load": host.op_load,
        "register": host.op_register,
        "meta": host.op_meta,
        "set_attr": host.op_set_attr,
        "get_attr": host.op_get_attr,
        "status": host.op_status,
        "task_start": host.op_task_start,
        "task_status": host.op_task_status,
        "task_data": host.op_task_data,
        "task_stop": host.op_task_stop,
        "measure": host.op_measure,
        "reset": host.op_reset,
        "teardown": host.op_teardown,
        "ping": host.op_ping,
    }
    for line in sys.stdin:
        if not line.strip():
            continue
        rid: Any = None
        try:
            req = json.loads(line)
            rid = req.get("id")
            fn = ops.get(str(req.get("op")))
            if fn is None:
                raise HostError(f"unknown op {req.get('op')!r}")
            ans: dict[str, Any] = {"id": rid, "ok": True, "data": fn(dict(req.get("args") or {}))}
        except HostError as e:
            ans = {"id": rid, "ok": False, "error": str(e), "kind": e.kind}
        except (KeyboardInterrupt, GeneratorExit):
            raise
        except BaseException as e:  # incl. SystemExit: tomato's log_errors calls sys.exit
            log.warning("request failed", exc_info=True)
            ans = {"id": rid, "ok": False, "error": f"{type(e).__name__}: {e}", "kind": "driver"}
        proto.write(json.dumps(ans, default=str) + "\n")


if __name__ == "__main__":
    main()
