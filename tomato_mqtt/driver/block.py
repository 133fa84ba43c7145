"""Many points in one call: :class:`Block`, the bulk (columnar) form of a driver's data.

High-rate instruments (DAQ cards, potentiostats, network analysers) hand over buffers,
not one point per call. A device that sets :attr:`ModelDevice.block_interval
<tomato_mqtt.driver.base.ModelDevice.block_interval>` is asked every that many seconds
for the points it took since the previous call, as columns with their own timestamps.
The columns travel as they are (numpy arrays or lists) from the driver to the wire
encoder: nothing on the way makes one Python object per point.

A variable may carry **extra dimensions** (a spectrum or a sweep per timestamp): its
column then has shape ``(n, *extra)`` and :attr:`Block.dims` names the extra dimensions,
whose coordinate values are in :attr:`Block.coords` (and their units in
:attr:`Block.units`, like a variable's). In the NetCDF file such a variable has the
dimensions ``("uts", *extra)`` and each extra dimension is a coordinate, as tomato
writes the xarray Datasets of its drivers.

numpy is optional: lists work too (nested lists for extra dimensions).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tomato_mqtt.driver.names import (
    INT_MAX,
    INT_MIN,
    check_names,
    int_problem,
    saw_nonfinite,
    text_problem,
)
from tomato_mqtt.driver.spec import TaskSpec

__all__ = ["Block", "BlockError"]


class BlockError(ValueError):
    """A block whose columns do not fit together (lengths, shapes, names)."""


@dataclass(slots=True)
class Block:
    """Points of one component as columns: ``uts[i]`` is when point ``i`` was taken.

    ``data[name]`` has one entry per ``uts`` (a scalar, or an array of shape
    ``[len(coords[d]) for d in dims[name]]``). ``units`` may name the units of variables
    and of coordinates, spelled as the driver spells them (kept verbatim in the file).
    """

    uts: Sequence[float] | Any
    data: Mapping[str, Sequence[Any] | Any]
    units: Mapping[str, str] = field(default_factory=dict)
    dims: Mapping[str, Sequence[str]] = field(default_factory=dict)
    coords: Mapping[str, Sequence[Any] | Any] = field(default_factory=dict)
    task: TaskSpec | None = None
    """The task that took the points; set by the runner (None: idle)."""

    def __len__(self) -> int:
        return len(self.uts)

    def check(self) -> None:
        """Raise :class:`BlockError` when the columns do not fit the timestamps, or hold
        what the file cannot keep as it is (a data-fidelity review found such blocks
        left out of the file, NaN-filled or relabelled, the job ``c``).

        numpy arrays are checked by numpy (dtype, shape, finite timestamps); lists, the
        slow path anyway, value by value.
        """
        n = len(self.uts)
        try:
            check_names(self.data)
            check_names(self.coords, "dimension")
        except ValueError as e:
            raise BlockError(str(e)) from None
        _check_uts(self.uts)
        for name, col in self.data.items():
            if name in ("uts", "task") or name in self.coords:
                raise BlockError(f"variable {name!r}: the name is taken by a coordinate")
            if len(col) != n:
                raise BlockError(f"variable {name!r}: {len(col)} values for {n} timestamps")
            if name not in self.dims:
                _check_scalars(name, col)
        for d, values in self.coords.items():
            _check_coordinate(d, values)
        for name, extra in self.dims.items():
            if name not in self.data:
                raise BlockError(f"dims of {name!r}: no such variable")
            want = []
            for d in extra:
                if d not in self.coords:
                    raise BlockError(f"variable {name!r}: dimension {d!r} has no coordinate")
                want.append(len(self.coords[d]))
            col = self.data[name]
            if n == 0:
                continue
            shape = getattr(col, "shape", None)
            kind = getattr(getattr(col, "dtype", None), "kind", None)
            if shape is not None and kind is not None and kind not in "biuf":
                raise BlockError(
                    f"variable {name!r}: the values of an array variable must be numbers "
                    f"(got numpy dtype kind {kind!r})"
                )
            lists = shape is None
            if lists:  # one conversion by numpy, not a walk of every leaf (a review:
                # 29 ms a block of 100 spectra of 1,000, where orjson took 2.7)
                arr = _numeric(col)
                if arr is not None:
                    shape, lists = arr.shape, False
                    if arr.dtype.kind == "f" and not _np().isfinite(arr).all():
                        saw_nonfinite()
            shapes = [list(shape[1:])] if shape is not None else _list_shapes(col, len(want))
            for got in shapes:
                if got != want:
                    raise BlockError(
                        f"variable {name!r}: a point has shape {tuple(got)}, but its dims "
                        f"{tuple(extra)} have lengths {tuple(want)}"
                    )
            if lists:
                _check_array_leaves(name, col)
        for d in self.coords:
            if d in ("uts", "task"):  # the file's own names (the file was unwritable)
                raise BlockError(f"{d!r} cannot be an extra dimension")


def _list_shape(first: Any, depth: int) -> list[int]:
    shape: list[int] = []
    cur = first
    for _ in range(depth):
        try:
            shape.append(len(cur))
            cur = cur[0] if len(cur) else None
        except TypeError:
            break
    return shape


def _np() -> Any:
    return sys.modules["numpy"]


def _numeric(col: Any) -> Any:
    """A list column of numbers (nested: an array variable's) as a numpy array, or None:
    numpy not loaded (a driver without it), or values numpy cannot make numbers of
    (text, ragged points: the value-by-value checks then say which)."""
    np = sys.modules.get("numpy")
    if np is None:
        return None
    try:
        a = np.asarray(col)
    except (TypeError, ValueError, OverflowError):
        return None
    return a if a.dtype.kind in "biuf" else None


def _list_shapes(col: Any, depth: int) -> list[list[int]]:
    """The distinct shapes of a list column's points (ragged points: more than one)."""
    out: list[list[int]] = []
    for point in col:
        got = _list_shape(point, depth)
        if got not in out:
            out.append(got)
    return out


_SCALARS = (int, float, bool, str, type(None))


def _number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) or _np_kind(v) in "iuf"


def _np_kind(v: Any) -> str:
    kind = getattr(getattr(v, "dtype", None), "kind", None)
    return kind if isinstance(kind, str) and getattr(v, "ndim", 1) == 0 else "-"


def _check_uts(uts: Any) -> None:
    """Timestamps are finite numbers (seconds since the epoch): a numpy datetime64 went
    on the wire as text and its whole batch was left out of the file."""
    np = sys.modules.get("numpy")
    kind = getattr(getattr(uts, "dtype", None), "kind", None)
    if kind is not None and np is not None:
        if kind not in "iuf":
            raise BlockError(
                f"uts: timestamps are seconds since the epoch (numbers), not numpy dtype "
                f"{uts.dtype} (datetime64: uts.astype('datetime64[ns]').astype(float) / 1e9)"
            )
        if kind == "f" and len(uts) and not bool(np.isfinite(uts).all()):
            raise BlockError("uts: a timestamp is not finite (NaN or infinity)")
        return
    arr = _numeric(uts)
    if (  # numpy's check of a list (a review: 19 ms a block of 100,000, value by value)
        arr is not None
        and arr.ndim == 1
        and arr.dtype.kind in "iuf"
        and (arr.dtype.kind != "f" or arr.size == 0 or bool(_np().isfinite(arr).all()))
    ):
        return
    for i, u in enumerate(uts):
        try:
            good = _number(u) and math.isfinite(u)
        except (OverflowError, TypeError, ValueError):
            good = False
        if not good:
            raise BlockError(
                f"uts[{i}]: timestamps are finite numbers of seconds since the epoch, not {u!r}"
            )


def _check_scalars(name: str, col: Any) -> None:
    """A variable without dims holds one number, text, bool or null per point: a list or
    a dict there made the file unwritable or went in as its Python text."""
    kind = getattr(getattr(col, "dtype", None), "kind", None)
    ndim = getattr(col, "ndim", 1)
    if kind is None and isinstance(col, list):  # numpy's view of a list, when it has one
        arr = _numeric(col)
        if arr is not None and arr.ndim == 1:
            if arr.dtype.kind == "f" and not _np().isfinite(arr).all():
                saw_nonfinite()
            return
    if kind is not None:
        if ndim != 1:
            raise BlockError(
                f"variable {name!r}: {ndim}-d values without dims (an array variable names "
                "its extra dimensions in Block.dims)"
            )
        if kind in "biuf":
            return
        if kind == "U":
            for v in col.tolist():
                if (problem := text_problem(v)) is not None:
                    raise BlockError(f"variable {name!r}: {problem}")
            return
        if kind != "O":
            raise BlockError(f"variable {name!r}: numpy dtype {col.dtype} cannot go in the file")
    for v in col:
        if type(v) in _SCALARS or _np_kind(v) in "biufU":
            if isinstance(v, str) and (problem := text_problem(v)) is not None:
                raise BlockError(f"variable {name!r}: {problem}")
            if isinstance(v, float) and v - v != 0.0:
                saw_nonfinite()  # the node's flush looks for infinities in lists from now on
            if type(v) is int and not INT_MIN <= v <= INT_MAX:
                raise BlockError(f"variable {name!r}: {int_problem(v)}")
            continue
        raise BlockError(
            f"variable {name!r}: a point's value must be a number, text, bool or None, not "
            f"{type(v).__name__} (an array variable names its extra dimensions in Block.dims)"
        )


def _check_array_leaves(name: str, col: Any) -> None:
    """An array variable given as lists holds numbers (or None) only."""
    stack = list(col)
    while stack:
        v = stack.pop()
        if isinstance(v, (list, tuple)):
            stack.extend(v)
        elif v is None or _number(v) or isinstance(v, bool) or _np_kind(v) == "b":
            if isinstance(v, float) and v - v != 0.0:
                saw_nonfinite()
            if type(v) is int and not INT_MIN <= v <= INT_MAX:
                raise BlockError(f"variable {name!r}: {int_problem(v)}")
            continue
        elif hasattr(v, "dtype") and getattr(v, "ndim", 0) > 0:  # a point as an array
            if v.dtype.kind not in "biuf":
                raise BlockError(f"variable {name!r}: array values must be numbers")
        else:
            raise BlockError(
                f"variable {name!r}: array values must be numbers, not {type(v).__name__}"
            )


def _check_coordinate(d: str, values: Any) -> None:
    """A coordinate's values are finite numbers or text: NaN or infinity there made the
    file unwritable."""
    kind = getattr(getattr(values, "dtype", None), "kind", None)
    np = sys.modules.get("numpy")
    if kind is not None and np is not None:
        if kind == "f" and not bool(np.isfinite(values).all()):
            raise BlockError(f"coordinate {d!r}: a value is not finite (NaN or infinity)")
        if kind not in "biufU":
            raise BlockError(f"coordinate {d!r}: numpy dtype {values.dtype} cannot go in the file")
        return
    for v in values:
        if isinstance(v, str) or (_number(v) and math.isfinite(v)):
            continue
        raise BlockError(f"coordinate {d!r}: values are finite numbers or text, not {v!r}")
