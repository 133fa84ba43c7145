"""Plots at 1 kHz for hours in a bounded amount of memory and DOM: min/max decimation.

A job's data for one component is kept as at most :data:`MAX_BUCKETS` time buckets of
equal width; each holds, per numeric variable, the minimum and the maximum of the points
that fell into it (min/max per pixel column, so a spike is never averaged away). When
the buckets run out, the width doubles and neighbours merge, so a job of any length
costs the same: the page draws ≤ 2 points per bucket, never the whole history.

The page keeps a copy: :meth:`Series.take_update` says what changed since the last call
(the buckets from the first one touched, or everything after a merge).

Pure: no I/O, no MQTT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MAX_BUCKETS", "Series"]

#: buckets kept per series (about one per pixel column of a plot)
MAX_BUCKETS = 800
#: the first bucket width (s): fine enough that a slow job shows every point
FIRST_WIDTH = 0.001


@dataclass
class _Bucket:
    index: int
    t: float  # time of the first point in the bucket
    n: int
    lo: dict[str, float] = field(default_factory=dict)
    hi: dict[str, float] = field(default_factory=dict)
    #: time of the last point in the bucket (the page draws the bucket from t to t1: drawn
    #: at t alone, a line ended up to one bucket before the last point: a newcomer's tour)
    t1: float = -math.inf

    def add(self, values: dict[str, float], t: float) -> None:
        self.n += 1
        self.t1 = max(self.t1, t)
        for k, v in values.items():
            lo = self.lo.get(k)
            if lo is None or v < lo:
                self.lo[k] = v
            hi = self.hi.get(k)
            if hi is None or v > hi:
                self.hi[k] = v

    def merge(self, other: _Bucket) -> None:
        self.n += other.n
        self.t = min(self.t, other.t)
        self.t1 = max(self.t1, other.t1)
        for k, v in other.lo.items():
            if k not in self.lo or v < self.lo[k]:
                self.lo[k] = v
        for k, v in other.hi.items():
            if k not in self.hi or v > self.hi[k]:
                self.hi[k] = v


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


class Series:
    """The decimated data of one component in one job (see the module docstring)."""

    def __init__(self, max_buckets: int = MAX_BUCKETS, first_width: float = FIRST_WIDTH) -> None:
        self.max_buckets = max_buckets
        self.width = first_width
        self.t0: float | None = None
        self.buckets: list[_Bucket] = []
        self.units: dict[str, str] = {}
        self.variables: list[str] = []  # in order of first appearance
        self.points = 0
        self.last_t: float | None = None
        self.first_t: float | None = None
        self._dirty_from: int | None = None  # position of the first bucket changed
        self._reset = True  # the page must take everything

    def add(self, uts: list[float], columns: dict[str, list[Any]], units: dict[str, str]) -> None:
        """Add a batch of points (columns aligned with ``uts``)."""
        self.units.update(units)
        for name in columns:
            if name not in self.variables:
                self.variables.append(name)
        for i, t in enumerate(uts):
            if not math.isfinite(t):
                continue
            values = {}
            for name, col in columns.items():
                if i < len(col):
                    v = _number(col[i])
                    if v is not None:
                        values[name] = v
            self._add_point(t, values)

    def _add_point(self, t: float, values: dict[str, float]) -> None:
        if self.t0 is None:
            self.t0 = t
        if t < self.t0:  # out of order before the start: re-base (rare: a replay)
            self._rebase(t)
        self.points += 1
        self.last_t = t if self.last_t is None else max(self.last_t, t)
        self.first_t = t if self.first_t is None else min(self.first_t, t)
        idx = int((t - self.t0) / self.width)
        pos = self._find(idx)
        if pos < len(self.buckets) and self.buckets[pos].index == idx:
            self.buckets[pos].add(values, t)
            self.buckets[pos].t = min(self.buckets[pos].t, t)
        else:
            b = _Bucket(idx, t, 0)
            b.add(values, t)
            self.buckets.insert(pos, b)
        self._touch(pos)
        while len(self.buckets) > self.max_buckets:
            self._coarsen()

    def _find(self, idx: int) -> int:
        # points arrive in order: the answer is nearly always the end
        n = len(self.buckets)
        if n == 0 or self.buckets[-1].index < idx:
            return n
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi) // 2
            if self.buckets[mid].index < idx:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _touch(self, pos: int) -> None:
        if self._dirty_from is None or pos < self._dirty_from:
            self._dirty_from = pos

    def _coarsen(self) -> None:
        self.width *= 2
        merged: list[_Bucket] = []
        for b in self.buckets:
            b.index //= 2
            if merged and merged[-1].index == b.index:
                merged[-1].merge(b)
            else:
                merged.append(b)
        self.buckets = merged
        self._reset = True

    def _rebase(self, t: float) -> None:
        if self.t0 is None:
            return
        shift = math.ceil((self.t0 - t) / self.width)
        self.t0 -= shift * self.width
        for b in self.buckets:
            b.index += shift
        self._reset = True

    # -- what the page gets ---------------------------------------------------------------
    def columns(self, start: int = 0) -> dict[str, Any]:
        """Buckets from position ``start`` as columns: ``t``, ``n``, and per variable
        ``lo``/``hi`` (null where a bucket has no number for it)."""
        part = self.buckets[start:]
        return {
            "t": [b.t for b in part],
            "t1": [b.t1 for b in part],
            "n": [b.n for b in part],
            "lo": {v: [b.lo.get(v) for b in part] for v in self.variables},
            "hi": {v: [b.hi.get(v) for b in part] for v in self.variables},
        }

    def snapshot(self) -> dict[str, Any]:
        """Everything, for a page that starts watching (pending updates stay pending: a
        page that gets one after its snapshot just replaces the same tail)."""
        return {"from": 0, **self._head(), **self.columns()}

    def take_update(self) -> dict[str, Any] | None:
        """What changed since the last update (everything after a merge); None if nothing."""
        if self._reset:
            self._reset = False
            self._dirty_from = None
            return self.snapshot()
        if self._dirty_from is None:
            return None
        start = self._dirty_from
        self._dirty_from = None
        return {"from": start, **self._head(), **self.columns(start)}

    def _head(self) -> dict[str, Any]:
        return {
            "units": self.units,
            "points": self.points,
            "first": self.first_t,
            "last": self.last_t,
        }
