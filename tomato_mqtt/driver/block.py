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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
        """Raise :class:`BlockError` when the columns do not fit the timestamps.

        Only lengths and shapes are checked (O(number of variables), not of points).
        """
        n = len(self.uts)
        for name, col in self.data.items():
            if name in ("uts", "task") or name in self.coords:
                raise BlockError(f"variable {name!r}: the name is taken by a coordinate")
            if len(col) != n:
                raise BlockError(f"variable {name!r}: {len(col)} values for {n} timestamps")
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
            got = list(shape[1:]) if shape is not None else _list_shape(col[0], len(want))
            if got != want:
                raise BlockError(
                    f"variable {name!r}: each point has shape {tuple(got)}, but its dims "
                    f"{tuple(extra)} have lengths {tuple(want)}"
                )
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
