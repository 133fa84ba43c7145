"""What a runner buffers and reports: :class:`Point` (one-point drivers),
:class:`PointRun` (consecutive points of one task, buffered as columns) and
:class:`TaskEnd`; the scalar coercion of one-point values."""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pint

from tomato_mqtt.driver.names import (
    GOOD_NAMES,
    INT_MAX,
    INT_MIN,
    check_names,
    int_problem,
    saw_nonfinite,
    text_problem,
)
from tomato_mqtt.driver.spec import TaskSpec

__all__ = ["Point", "PointRun", "TaskEnd", "Value", "spelling", "to_values"]

log = logging.getLogger(__name__)

Value = float | int | str | bool | None


@dataclass(slots=True)
class Point:
    """One measured point: quantities are reduced to magnitudes (units go with drain)."""

    uts: float
    values: dict[str, Value]
    task: TaskSpec | None = None
    """The task that took the point; None for idle and ad-hoc measurements."""


class PointRun:
    """Consecutive points of one task (None: idle and ad-hoc measurements) as columns:
    ``uts`` and one list per variable, null where a point has no value for it.

    A runner buffers its points this way: a point costs a few appends, not an object
    and a dict kept until the node flushes (at 50 components x 1 kHz, 50,000 of each a
    second, which the garbage collector then walked through while the clock waited),
    and the node publishes the columns as they are.
    """

    __slots__ = ("absent", "cols", "n", "task", "uts")

    def __init__(self, task: TaskSpec | None) -> None:
        self.task = task
        self.uts: list[float] = []
        self.cols: dict[str, list[Value]] = {}
        self.n = 0
        #: per variable, the points that had no value for it (their null is not a
        #: value the driver gave: :meth:`points` leaves it out); rare, so kept apart
        self.absent: dict[str, set[int]] = {}

    def __len__(self) -> int:
        return self.n

    def add(self, uts: float, values: Mapping[str, Value]) -> None:
        n = self.n
        cols = self.cols
        for k, v in values.items():
            col = cols.get(k)
            if col is None:
                col = cols[k] = [None] * n
                if n:
                    self.absent[k] = set(range(n))
            col.append(v)
        if len(values) != len(cols):  # a variable of earlier points is not in this one
            for k, col in cols.items():
                if len(col) == n:
                    col.append(None)
                    self.absent.setdefault(k, set()).add(n)
        self.uts.append(uts)
        self.n = n + 1

    def points(self) -> list[Point]:
        """The run as :class:`Point` objects, each with the values its driver gave."""
        cols, absent = self.cols, self.absent
        if not absent:
            return [
                Point(u, {k: c[i] for k, c in cols.items()}, self.task)
                for i, u in enumerate(self.uts)
            ]
        return [
            Point(
                u,
                {k: c[i] for k, c in cols.items() if i not in absent.get(k, ())},
                self.task,
            )
            for i, u in enumerate(self.uts)
        ]


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
    clock_step: float = 0.0
    """s the wall clock stepped by (its first step) while the task ran (against its
    monotonic twin); 0.0: none."""
    clock_step_at: float | None = None
    """The ``uts`` of the first point after the (first) step."""


def _scalar(name: str, v: object) -> Value:
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return float(v)
    if getattr(getattr(v, "dtype", None), "kind", None) == "b":  # numpy's bool (bool_ in
        # numpy 1, bool in numpy 2: a review found it refused as "not bool")
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
    first value; later values in the same units skip pint's comparison (~10 µs): the same
    units object (a driver re-using its quantity) is told by identity, in one step.
    """
    values: dict[str, Value] = {}
    units: dict[str, str] | None = None
    try:
        items = raw.items()
    except AttributeError:
        raise TypeError(
            "a point must be a mapping of variable name -> value (or None for no point),"
            f" not {type(raw).__name__}"
        ) from None
    if "uts" in raw or "task" in raw:  # the file's own: the driver's values were lost
        taken = "uts" if "uts" in raw else "task"
        raise TypeError(f"variable {taken!r}: the name is taken by the file (name it otherwise)")
    good = GOOD_NAMES
    for k, v in items:
        if k not in good:  # names the file keeps as they are (each checked once: names.py)
            try:
                check_names((k,))
            except ValueError as e:
                raise TypeError(str(e)) from None
        t = type(v)
        if t is float:
            values[k] = v
            if v - v != 0.0:  # inf (or NaN): the node's flush looks for infinities
                saw_nonfinite()
            continue
        if t is int:
            if not INT_MIN <= v <= INT_MAX:
                raise TypeError(f"variable {k!r}: {int_problem(v)}")
            values[k] = v
            continue
        if t is bool or v is None:
            values[k] = v
            continue
        if t is str:
            if "\x00" in v or not v.isascii():
                problem = text_problem(v)
                if problem is not None:
                    raise TypeError(f"variable {k!r}: {problem}")
            values[k] = v
            continue
        seen = known.get(k)
        if seen is not None and seen[2] is not None and getattr(v, "_units", None) is seen[2]:
            mag = v._magnitude  # the same units object as the first value's
        elif isinstance(v, pint.Quantity):
            if seen is None:
                u, label = spelling(device, k, v.units)
                seen = known[k] = (u, label, v._units if u == v.units else None)
            if seen[2] is not None and v._units == seen[2]:
                mag = v._magnitude
            else:
                try:
                    mag = v.magnitude if v.units == seen[0] else v.m_as(seen[0])
                except pint.DimensionalityError as e:  # (said without the variable's
                    # name: a driver author's tour)
                    raise TypeError(f"variable {k!r}: {e}") from None
        else:
            values[k] = s = _scalar(k, v)
            if isinstance(s, str) and (problem := text_problem(s)) is not None:  # numpy's str_
                raise TypeError(f"variable {k!r}: {problem}")
            if isinstance(s, float) and s - s != 0.0:
                saw_nonfinite()
            continue
        t = type(mag)
        values[k] = mag = mag if t is float or t is int else _scalar(k, mag)
        if type(mag) is int and not INT_MIN <= mag <= INT_MAX:
            raise TypeError(f"variable {k!r}: {int_problem(mag)}")
        if isinstance(mag, float) and mag - mag != 0.0:
            saw_nonfinite()
        if units is None:
            units = {}
        units[k] = seen[1]
    return values, units


def _describe(task: TaskSpec) -> str:
    who = f" (job {task.job}, task {task.index})" if task.job is not None else ""
    name = f" {task.task_name!r}" if task.task_name else ""
    return f"{task.technique_name!r}{name}{who}"
