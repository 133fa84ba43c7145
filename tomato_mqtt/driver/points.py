"""What a runner buffers and reports: :class:`Point` (one-point drivers) and
:class:`TaskEnd`; the scalar coercion of one-point values."""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass
from typing import Any, Literal

import pint

from tomato_mqtt.driver.spec import TaskSpec

__all__ = ["Point", "TaskEnd", "Value", "spelling"]

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


def _describe(task: TaskSpec) -> str:
    who = f" (job {task.job}, task {task.index})" if task.job is not None else ""
    name = f" {task.task_name!r}" if task.task_name else ""
    return f"{task.technique_name!r}{name}{who}"
