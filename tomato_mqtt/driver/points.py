"""What a runner buffers and reports: :class:`Point` (one-point drivers) and
:class:`TaskEnd`; the scalar coercion of one-point values."""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pint

from tomato_mqtt.driver.spec import TaskSpec

__all__ = ["Point", "TaskEnd", "Value", "spelling", "to_values"]

log = logging.getLogger(__name__)

Value = float | int | str | bool | None
_PLAIN = (float, int, str, bool, type(None))


@dataclass(slots=True)
class Point:
    """One measured point: quantities are reduced to magnitudes (units go with drain)."""

    uts: float
    values: dict[str, Value]
    task: TaskSpec | None = None
    """The task that took the point; None for idle and ad-hoc measurements."""


@dataclass(slots=True)
class TaskEnd:
    task: TaskSpec
    reason: Literal["done", "stopped", "error"]
    message: str | None
    t_start: float
    t_end: float
    npoints: int
    missed: int = 0
    """Deadlines skipped because the runner was behind (see the runner's docstring)."""


def _scalar(name: str, v: object) -> Value:
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return float(v)
    if type(v).__name__ == "bool_":  # numpy.bool_ is not a numbers.Integral
        return bool(v)
    raise TypeError(
        f"variable {name!r}: a point value must be a number, text, bool or quantity,"
        f" not {type(v).__name__}"
    )


def spelling(device: Any, name: str, units: Any) -> tuple[Any, str]:
    """(pint units, label) of a quantity variable: the driver's ``data_units`` spelling
    (``MHz``, ``bytes``: kept verbatim in the file) when it names the variable, else the
    quantity's own units, labelled as pint names them (as tomato writes quantities)."""
    spelled = (getattr(device, "data_units", None) or {}).get(name)
    if spelled:
        try:
            return pint.Unit(spelled), str(spelled)
        except Exception:
            log.warning("data_units[%r] = %r is not known to pint: ignored", name, spelled)
    return units, str(units)


def to_values(
    raw: Mapping[str, Any], known: dict[str, tuple[Any, str, Any]], device: Any
) -> tuple[dict[str, Value], dict[str, str] | None]:
    """A driver's point as plain values, and the units of its quantities.

    ``known`` caches, per quantity variable, (pint units, label, units container) of its
    first value; later values in the same units skip pint's comparison (~10 µs).
    """
    values: dict[str, Value] = {}
    units: dict[str, str] | None = None
    for k, v in raw.items():
        if type(v) in _PLAIN:
            values[k] = v
        elif isinstance(v, pint.Quantity):
            seen = known.get(k)
            if seen is None:
                u, label = spelling(device, k, v.units)
                seen = known[k] = (u, label, v._units if u == v.units else None)
            if seen[2] is not None and v._units == seen[2]:
                mag = v._magnitude
            else:
                mag = v.magnitude if v.units == seen[0] else v.m_as(seen[0])
            values[k] = _scalar(k, mag)
            if units is None:
                units = {}
            units[k] = seen[1]
        else:
            values[k] = _scalar(k, v)
    return values, units


def _describe(task: TaskSpec) -> str:
    who = f" (job {task.job}, task {task.index})" if task.job is not None else ""
    name = f" {task.task_name!r}" if task.task_name else ""
    return f"{task.technique_name!r}{name}{who}"
