"""Points and blocks of one task -> the columns of data batches.

One-point drivers' points come as :class:`~tomato_mqtt.driver.points.PointRun` columns
(the runner buffers them so; :class:`~tomato_mqtt.driver.points.Point` objects are
taken too): consecutive ones become one set of columns (a missing value is null). Bulk drivers give
:class:`~tomato_mqtt.driver.block.Block` columns: consecutive blocks with the same
variables and extra dimensions are joined into one batch (lists by concatenation, numpy
arrays with numpy, which the driver that made them has already imported), so a flush
sends one message per component and task whatever the block size; the values are never
unpacked into per-point Python objects.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tomato_mqtt.driver.block import Block
from tomato_mqtt.driver.points import Point, PointRun, Value

__all__ = ["Columns", "pieces", "to_columns"]


@dataclass
class Columns:
    uts: Any
    vars: dict[str, Any]
    units: dict[str, str]
    dims: dict[str, Sequence[str]] = field(default_factory=dict)
    coords: dict[str, Any] = field(default_factory=dict)
    job: int | None = None
    task: int | None = None


def pieces(cols: Columns, k: int) -> list[Columns]:
    """A batch's points in ``k`` consecutive parts of (nearly) one size (lists or numpy
    arrays alike), none empty."""
    n = len(cols.uts)
    k = max(1, min(k, n))
    bounds = [n * i // k for i in range(k + 1)]
    return [
        Columns(
            uts=cols.uts[a:b],
            vars={name: v[a:b] for name, v in cols.vars.items()},
            units=cols.units,
            dims=cols.dims,
            coords=cols.coords,
            job=cols.job,
            task=cols.task,
        )
        for a, b in itertools.pairwise(bounds)
    ]


def _layout(b: Block) -> tuple[Any, ...]:
    return (
        tuple(b.data),
        tuple((k, tuple(v)) for k, v in b.dims.items()),
        tuple((k, _values(v)) for k, v in b.coords.items()),
        tuple(sorted(b.units.items())),
    )


def _values(v: Any) -> tuple[Any, ...]:
    return tuple(v.tolist() if hasattr(v, "tolist") else v)


def _concat(parts: list[Any]) -> Any:
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(p, list) for p in parts):
        return list(itertools.chain.from_iterable(parts))
    np = sys.modules.get("numpy")
    if np is None:  # arrays of another kind (tuples, array.array): join as lists
        return list(itertools.chain.from_iterable(parts))
    return np.concatenate([np.asarray(p) for p in parts])


def _wide(v: Any) -> Any:
    """float16/float32 arrays as float64: orjson writes a float32 in its shortest float32
    text, which reads back as another float64 (float32(1e-45), 1.4013e-45, came back as
    1e-45; a one-point driver's float32(0.1) reached the file as 0.10000000149011612, a
    bulk driver's as 0.1: a data-fidelity review)."""
    dtype = getattr(v, "dtype", None)
    if dtype is not None and dtype.kind == "f" and dtype.itemsize < 8:
        return v.astype("float64")
    return v


def _join(blocks: list[Block]) -> Columns:
    first = blocks[0]
    return Columns(
        uts=_wide(_concat([b.uts for b in blocks])),
        vars={k: _wide(_concat([b.data[k] for b in blocks])) for k in first.data},
        units=dict(first.units),
        dims={k: list(v) for k, v in first.dims.items()},
        coords={k: _wide(v) for k, v in first.coords.items()},
    )


def _runs_to_columns(runs: Sequence[PointRun]) -> tuple[list[float], dict[str, list[Value]]]:
    """Join consecutive runs' columns (a variable missing from a run is null there)."""
    if len(runs) == 1:
        return runs[0].uts, runs[0].cols
    names: dict[str, None] = {}
    for r in runs:
        names.update(dict.fromkeys(r.cols))
    uts = list(itertools.chain.from_iterable(r.uts for r in runs))
    cols = {
        k: list(itertools.chain.from_iterable(r.cols.get(k) or [None] * r.n for r in runs))
        for k in names
    }
    return uts, cols


def to_columns(items: Sequence[Point | PointRun | Block], units: dict[str, str]) -> list[Columns]:
    """The batches of one task's items, in order (``units``: of the points' quantities)."""
    out: list[Columns] = []
    runs: list[PointRun] = []
    blocks: list[Block] = []

    def flush_points() -> None:
        if runs:
            uts, cols = _runs_to_columns(runs)
            out.append(Columns(uts, dict(cols), {k: u for k, u in units.items() if k in cols}))
            runs.clear()

    def flush_blocks() -> None:
        if blocks:
            out.append(_join(blocks))
            blocks.clear()

    for it in items:
        if isinstance(it, (Point, PointRun)):
            flush_blocks()
            if isinstance(it, Point):
                run = PointRun(it.task)
                run.add(it.uts, it.values)
                it = run
            runs.append(it)
        else:
            flush_points()
            if blocks and _layout(blocks[0]) != _layout(it):
                flush_blocks()
            blocks.append(it)
    flush_points()
    flush_blocks()
    return out
