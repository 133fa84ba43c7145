"""The psutil driver: CPU and memory of the node's own PC as a component.

Techniques ``all_info``, ``cpu_info`` and ``mem_info`` (as in tomato-psutil); every attr
is read-only and part of the component status. Values carry units (percent, bytes,
MHz), spelled as tomato-psutil spells them (kept so in the file). Any address and
channel work: the component is always this PC.

``cpu_usage`` is the system-wide CPU load since this component's previous reading (at
least 50 ms before; a quicker reading repeats the last value, the first one is the
average since boot). Each component keeps its own window, so a status read between two
points of a task does not shorten the task's window, as psutil's process-wide
``cpu_percent(interval=None)`` would. ``cpu_freq`` is None where the OS does not tell.

Settings (``[drivers.psutil]`` in settings.toml):

``idle_measurement_interval``
    seconds between measurements while no task runs (default: none).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import pint
import psutil

from tomato_mqtt.driver import Attr, ModelDevice, ModelInterface, TaskSpec

__all__ = ["CpuUsage", "Device", "DriverInterface"]

_MEM = ("mem_total", "mem_avail", "mem_used", "mem_usage")
_CPU = ("cpu_count", "cpu_freq", "cpu_usage")
_TECHNIQUES = {"all_info": _MEM + _CPU, "mem_info": _MEM, "cpu_info": _CPU}


def _q(value: float, units: str) -> pint.Quantity[Any]:
    return pint.Quantity(value, units)


def _busy_total(t: Any) -> tuple[float, float]:
    """Busy and total CPU seconds from ``psutil.cpu_times()``."""
    f = t._asdict()
    # Linux counts guest time in user/nice already; idle and iowait are not busy
    total = sum(f.values()) - f.get("guest", 0.0) - f.get("guest_nice", 0.0)
    return total - f.get("idle", 0.0) - f.get("iowait", 0.0), total


class CpuUsage:
    """System CPU usage in percent over one component's own reading window."""

    MIN_WINDOW = 0.05
    """Seconds; a reading sooner than this after the last one repeats its value."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        busy, total = _busy_total(psutil.cpu_times())
        self._prev = (busy, total)
        self._at = time.monotonic()
        self._value = 100.0 * busy / total if total > 0 else 0.0  # the average since boot

    def read(self) -> float:
        with self._lock:
            now = time.monotonic()
            if now - self._at >= self.MIN_WINDOW:
                busy, total = _busy_total(psutil.cpu_times())
                d_total = total - self._prev[1]
                if d_total > 0:
                    pct = 100.0 * (busy - self._prev[0]) / d_total
                    self._value = min(100.0, max(0.0, pct))
                    self._prev, self._at = (busy, total), now
            return self._value


def _cpu_freq() -> float | None:
    try:
        freq = psutil.cpu_freq()  # None, or an error, where the OS does not tell (some VMs)
    except (OSError, NotImplementedError, AttributeError):
        return None
    return float(freq.current) if freq is not None else None


class Device(ModelDevice):
    # the file spells them as tomato-psutil does
    data_units = {
        "mem_total": "bytes",
        "mem_avail": "bytes",
        "mem_used": "bytes",
        "cpu_freq": "MHz",
    }

    def __init__(self, driver: DriverInterface, key: tuple[str, str], **kwargs: Any) -> None:
        super().__init__(driver, key, **kwargs)
        self.cpu = CpuUsage()
        self.constants["cpu_count"] = psutil.cpu_count()

    def attrs(self) -> dict[str, Attr]:
        return {
            "mem_total": Attr(type=pint.Quantity, units="bytes", status=True),
            "mem_avail": Attr(type=pint.Quantity, units="bytes", status=True),
            "mem_used": Attr(type=pint.Quantity, units="bytes", status=True),
            "mem_usage": Attr(type=pint.Quantity, units="percent", status=True),
            "cpu_count": Attr(type=int, status=True),
            "cpu_freq": Attr(type=pint.Quantity, units="MHz", status=True),
            "cpu_usage": Attr(type=pint.Quantity, units="percent", status=True),
        }

    def capabilities(self) -> set[str]:
        return set(_TECHNIQUES)

    def get_attr(self, attr: str) -> Any:
        values = self._read((attr,))
        if attr not in values:
            raise AttributeError(f"unknown attr {attr!r}")
        return values[attr]

    def status(self) -> dict[str, Any]:
        return self._read(_TECHNIQUES["all_info"])

    def do_task(self, task: TaskSpec, t_start: float, t_now: float) -> Mapping[str, Any]:
        return self._read(_TECHNIQUES[task.technique_name])

    def do_measure(self) -> Mapping[str, Any]:
        return self._read(_TECHNIQUES["all_info"])

    def _read(self, names: tuple[str, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if any(n.startswith("mem_") for n in names):
            vm = psutil.virtual_memory()
            mem = {
                "mem_total": _q(vm.total, "byte"),
                "mem_avail": _q(vm.available, "byte"),
                "mem_used": _q(vm.used, "byte"),
                "mem_usage": _q(vm.percent, "percent"),
            }
            out.update((n, mem[n]) for n in names if n in mem)
        if "cpu_count" in names:
            out["cpu_count"] = psutil.cpu_count()
        if "cpu_freq" in names:
            freq = _cpu_freq()
            out["cpu_freq"] = _q(freq, "MHz") if freq is not None else None
        if "cpu_usage" in names:
            out["cpu_usage"] = _q(self.cpu.read(), "percent")
        return out


class DriverInterface(ModelInterface):
    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        interval = self.settings.get("idle_measurement_interval")
        if interval is not None:
            if isinstance(interval, bool) or not isinstance(interval, int | float):
                raise ValueError(
                    "[drivers.psutil] idle_measurement_interval must be a number of seconds,"
                    f" not {interval!r}"
                )
            self.idle_measurement_interval = float(interval) if interval > 0 else None

    def DeviceFactory(self, key: tuple[str, str], **kwargs: Any) -> Device:
        return Device(self, key, **kwargs)
