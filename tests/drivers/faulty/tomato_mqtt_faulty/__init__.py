"""A test-only driver that raises where it is told to. Never install it on an instrument PC.

Where it fails comes from the component's address and from ``[drivers.faulty]``:

- an address ``fail-<where>[-<where>...]``, e.g. ``fail-task`` or ``fail-connect-set``
  (any other address is a device that works);
- the setting ``fail = ["task", ...]`` (or ``"task,set"``), for every component.

The setting ``set_seconds`` makes every attribute set take that long (a slow
instrument: a task's ``task_params`` are set before it begins).

``<where>`` is one of:

``connect``
    ``Device.__init__`` (so ``DeviceFactory``) raises ``RuntimeError``, as an
    instrument that is not plugged in. The setting ``connect_failures = n`` limits this
    to the first ``n`` attempts per component, so a node's retry succeeds.
``task``
    ``do_task`` raises ``RuntimeError`` at point ``fail_at_point`` (setting, default 3:
    the points before it are taken).
``exit``
    ``do_task`` calls ``sys.exit()`` at that point, as tomato's ``log_errors`` decorator
    does in ported drivers.
``hang``
    ``do_task`` never returns from that point on (an instrument that stopped answering
    a read without a timeout).
``intkey``
    ``do_task`` returns a point whose variable name is not text (``{1: 2.0}``) at that
    point, as a driver might with channel numbers.
``surrogate``
    ``do_task`` returns text that is no valid UTF-8 (a lone surrogate, as bytes read
    with ``errors="surrogateescape"``) at that point: the wire cannot carry it.
``bigint``
    ``do_task`` returns the integer 2**70 at that point: no file (nor the wire) holds it.
``huge``
    ``do_task`` returns a point of 9 MiB of text at that point: more than one MQTT message
    may carry under the default ``[broker] max_packet_bytes`` (8 MiB).
``badattrs``
    ``attrs()`` returns a list, not a dict: a driver's code that is wrong (registering
    again cannot help).
``set``
    ``do_set_attr`` raises ``RuntimeError`` (``set_attr`` and tasks with parameters fail).
``measure``
    ``do_measure`` raises ``RuntimeError`` (ad-hoc and idle measurements fail).
``reset``
    ``reset`` raises ``RuntimeError``.
``status``
    ``get_attr`` raises ``RuntimeError`` (so does ``status()``).
``oneattr``
    ``get_attr("mode")`` raises ``RuntimeError``; the other attributes read.
``linger``
    ``Device.__init__`` starts a thread of its own (not a daemon) that never ends: the
    interpreter waits for it at exit.
``closehang``
    ``close`` never returns (an instrument whose port hangs as it is released).

The setting ``idle_measurement_interval`` (seconds) turns idle measurements on;
``connect_seconds`` makes every ``Device.__init__`` take that long (an instrument that
takes a while to answer when a node registers it).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from tomato_mqtt.driver import Attr, ModelDevice, ModelInterface, TaskSpec

__all__ = ["FAULTS", "Device", "DriverInterface"]

FAULTS = frozenset(
    {
        "connect",
        "task",
        "exit",
        "hang",
        "intkey",
        "surrogate",
        "huge",
        "bigint",
        "badattrs",
        "set",
        "measure",
        "reset",
        "status",
        "oneattr",
        "linger",
        "closehang",
    }
)


def faults_of(address: str, settings: Mapping[str, Any]) -> frozenset[str]:
    """The places where the component at ``address`` fails."""
    out: set[str] = set()
    words = address.split("-")
    if len(words) > 1 and words[0] == "fail":
        out.update(words[1:])
    cfg = settings.get("fail", [])
    words = cfg.split(",") if isinstance(cfg, str) else [str(w) for w in cfg]
    out.update(w.strip() for w in words if w.strip())
    unknown = out - FAULTS
    if unknown:
        raise ValueError(
            f"faulty: unknown fault(s) {sorted(unknown)} for {address!r}; known: {sorted(FAULTS)}"
        )
    return frozenset(out)


class Device(ModelDevice):
    level: float
    mode: str

    def __init__(self, driver: DriverInterface, key: tuple[str, str], **kwargs: Any) -> None:
        super().__init__(driver, key, **kwargs)
        self.faults = faults_of(key[0], driver.settings)
        time.sleep(float(driver.settings.get("connect_seconds", 0)))
        driver.attempts[key] += 1
        if "connect" in self.faults:
            limit = driver.settings.get("connect_failures")
            if limit is None or driver.attempts[key] <= int(limit):
                raise RuntimeError(
                    f"faulty: cannot connect to {key[0]!r} (simulated, attempt"
                    f" {driver.attempts[key]})"
                )
        self.fail_at_point = int(driver.settings.get("fail_at_point", 3))
        self.set_seconds = float(driver.settings.get("set_seconds", 0))
        self.level = 1.0
        self.mode = "a"
        self.serial = f"SN-{key[0]}-{key[1]}"
        self.constants["faults"] = ",".join(sorted(self.faults))
        if "linger" in self.faults:
            threading.Thread(target=threading.Event().wait, name="linger", daemon=False).start()

    def attrs(self) -> dict[str, Attr]:
        if "badattrs" in self.faults:
            return [Attr(type=float)]  # type: ignore[return-value]
        return {
            "level": Attr(type=float, rw=True, minimum=0, maximum=10),
            "mode": Attr(type=str, rw=True, options=["a", "b"]),
            "serial": Attr(type=str, status=True),
        }

    def capabilities(self) -> set[str]:
        return {"sample"}

    def do_set_attr(self, attr: str, val: Any) -> None:
        time.sleep(self.set_seconds)  # a slow instrument (setting set_seconds)
        if "set" in self.faults:
            raise RuntimeError(f"faulty: cannot set {attr!r} (simulated)")
        setattr(self, attr, val)

    def get_attr(self, attr: str) -> Any:
        if "status" in self.faults or ("oneattr" in self.faults and attr == "mode"):
            raise RuntimeError(f"faulty: cannot read {attr!r} (simulated)")
        return super().get_attr(attr)

    def do_task(self, task: TaskSpec, t_start: float, t_now: float) -> Mapping[str, Any]:
        k = round((t_now - t_start) / task.sampling_interval)  # 1, 2, ... of this task
        if k >= self.fail_at_point:
            if "task" in self.faults:
                raise RuntimeError(f"faulty: do_task failed at point {k} (simulated)")
            if "exit" in self.faults:
                sys.exit(f"faulty: do_task exits at point {k} (simulated)")
            if "hang" in self.faults:
                threading.Event().wait()  # for ever
            if "intkey" in self.faults:
                return {1: 2.0, "k": k}  # type: ignore[dict-item]
            if "surrogate" in self.faults:
                return {"k": k, "level": self.level, "mode": "a\udcff"}
            if "bigint" in self.faults:
                return {"k": 2**70, "level": self.level, "mode": self.mode}
            if "huge" in self.faults:
                return {"k": k, "level": self.level, "mode": "x" * 9 * 2**20}
        return {"k": k, "level": self.level, "mode": self.mode}

    def do_measure(self) -> Mapping[str, Any]:
        if "measure" in self.faults:
            raise RuntimeError("faulty: do_measure failed (simulated)")
        return {"level": self.level, "mode": self.mode}

    def close(self) -> None:
        if "closehang" in self.faults:
            threading.Event().wait()  # for ever

    def reset(self) -> None:
        if "reset" in self.faults:
            raise RuntimeError("faulty: reset failed (simulated)")
        self.level, self.mode = 1.0, "a"


class DriverInterface(ModelInterface):
    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.attempts: defaultdict[tuple[str, str], int] = defaultdict(int)
        interval = self.settings.get("idle_measurement_interval")
        if interval is not None:
            self.idle_measurement_interval = float(interval)

    def DeviceFactory(self, key: tuple[str, str], **kwargs: Any) -> Device:
        return Device(self, key, **kwargs)
