"""The NetCDF file of a job: written once with netCDF4, in the layout xarray writes.

Pure (no MQTT). A role's batches are read twice: once to plan its group (every
variable's name, type and dimensions: :func:`plan_groups`), then, a run at a time, to
write it; a long job's file is written in bounded memory. Layout, compatible with
tomato's: root attrs ``tomato_version`` and ``tomato_Job`` (JSON); one group per role
with the coordinate ``uts`` (unix time, s), the driver's variables with CF ``units``
attrs, a ``task`` variable (index of the payload task that produced each point, -1 for
none) and the group attrs ``tomato_Component`` (JSON) and ``role`` (plus
``tomato_clock_offset``, s, when the node's clock was off). An array-valued variable has
the dimensions ``("uts", *extra)``, and every extra dimension is a coordinate variable
with its ``units``, as tomato writes its drivers' xarray Datasets.
The file is written next to its final place and renamed, so a reader never sees half a
file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from tomato_mqtt.driver.names import name_problem
from tomato_mqtt.nclock import NC_LOCK

__all__ = ["RoleInput", "plan_groups", "write_job_file"]

log = logging.getLogger(__name__)

#: bytes free below which a failed write is taken for a full disk
_FULL = 2**20

#: netCDF's refusals of the data itself (names: a third-party node's batches), which the
#: same data meets again on any disk: not tried again (any other error may be the disk's)
_DATA_REFUSED = ("illegal characters", "name in use", "Invalid name", "Name too long")


@dataclass
class RoleInput:
    role: str
    component_json: str
    # raw DataBatch JSON: a list, or the store's Raws (iterated once, then fetch(idx))
    batches: Iterable[bytes] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)  # more group attrs (clock offset)


def _made_here(a: np.ndarray[Any, Any]) -> bool:
    """An object array of text only (what the slow path below makes): None or numbers
    among its values came from elsewhere (a review: an array variable's column)."""
    return all(isinstance(v, str) for v in a.tolist())


def _chunk(vals: Sequence[Any]) -> np.ndarray[Any, Any]:
    """One batch's values of one variable, typed by numpy (C speed for the usual case)."""
    if isinstance(vals, np.ndarray) and (
        vals.dtype.kind in "biufU" or (vals.dtype.kind == "O" and _made_here(vals))
    ):
        return vals  # (made here already, by _load)
    a = np.asarray(vals)
    if a.dtype.kind == "f" and len(vals) and type(vals[0]) is int:
        return _ints(vals, a)
    if a.dtype.kind in "biufU":
        return a
    # None among them, or a mix of kinds: decide per value (rare: slow path)
    if all(v is None or isinstance(v, (int, float, bool)) for v in vals):
        return np.asarray([math.nan if v is None else float(v) for v in vals], dtype=float)
    return np.asarray(["" if v is None else str(v) for v in vals], dtype=object)


def _numbers(vals: Any) -> np.ndarray[Any, Any]:
    """An array variable's values (nested lists) as numpy makes them, integers past
    int64's range as uint64 (see _ints)."""
    a = np.asarray(vals)
    if a.dtype.kind == "f" and not isinstance(vals, np.ndarray):
        first = vals
        while isinstance(first, list) and first:
            first = first[0]
        if type(first) is int:
            return _ints(vals, a)
    return a


def _ints(vals: Sequence[Any], made: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Integers numpy made float64 because one is past int64's range: uint64 when all
    are integers and none is negative (a data-fidelity review: [2**63 + 5, 1] lost its
    last digits within one batch; only across batches was uint64 kept)."""
    flat = np.ravel(np.asarray(vals, dtype=object))
    if all(type(v) is int and v >= 0 for v in flat):
        with contextlib.suppress(OverflowError, ValueError):
            return np.asarray(vals, dtype=np.uint64)
    return made


def _load(raws: Sequence[bytes], problems: list[str]) -> list[dict[str, Any]]:
    """Parse the batches (orjson: C speed); one whose columns do not fit is left out, and
    ``problems`` says so (the job's verdict is then not ``c``: a review found such
    batches left out with a log line, the job ``c``).

    Each batch's columns become numpy arrays as it is parsed: as Python lists, a job's
    points took ~300 bytes each until the file was written (4 million points: 1.2 GB, a
    review), as arrays 8 bytes a value."""
    out = []
    for raw in raws:
        b: Any = None
        try:
            b = orjson.loads(raw)
            if type(b["seq"]) is not int:
                raise ValueError("its seq is not an integer")
            n = len(b["uts"])
            if not all(len(c) == n for c in b["vars"].values()):
                raise ValueError("a column's length differs from uts")
            try:
                b["uts"] = np.asarray(b["uts"], dtype=float)
            except (TypeError, ValueError):
                raise ValueError("its uts are not all numbers (seconds)") from None
            arrays = b.get("dims") or {}
            for name, col in b["vars"].items():
                # a column numpy cannot make (a list among a scalar's values, ragged
                # points) stays as it came: the writer deals with it as before (a review:
                # the whole batch was left out, and the job could still end c)
                with contextlib.suppress(ValueError, TypeError):
                    if arrays.get(name):  # (dims [] is a scalar: a review)
                        b["vars"][name] = _numbers(col)
                    else:
                        b["vars"][name] = _chunk(col)
            if b.get("nonfinite"):
                if not isinstance(b["nonfinite"], dict):
                    raise ValueError("its nonfinite is not an object of variables")
                _restore_infinities(b)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            what = _batch_name(b)
            log.error("%s cannot go into the file (%s): left out", what, e)
            problems.append(f"{what} was left out: {e}")
            continue
        out.append(b)
    return out


def _restore_infinities(b: dict[str, Any]) -> None:
    """+inf and -inf where the batch's ``nonfinite`` says (null on the wire, as JSON has
    no infinity: see DataBatch)."""
    for name, where in b["nonfinite"].items():
        col = b["vars"].get(name)
        if not isinstance(where, dict) or col is None:
            continue
        if not isinstance(col, np.ndarray):
            continue  # a column numpy could not make: the write says what is wrong
        text = col.dtype.kind in "OU"  # a column of mixed kinds is written as text
        if text:
            col = b["vars"][name] = col.astype(object)
        elif col.dtype.kind != "f":
            continue
        flat = col.reshape(-1)
        for key, sign in (("inf", 1.0), ("-inf", -1.0)):
            idx = np.asarray(where.get(key) or [], dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= flat.size):
                raise ValueError(f"nonfinite.{name}.{key}: an index is out of range")
            flat[idx] = key if text else sign * math.inf


def _batch_name(b: Any) -> str:
    """A stored batch, as a problem names it: its component, seq and size where known."""
    if not isinstance(b, dict):
        return "a stored batch"
    try:
        n = f", {b['_n'] if '_n' in b else len(b['uts'])} point(s)"
    except (KeyError, TypeError):
        n = ""
    return f"the batch of {b.get('component')} (seq {b.get('seq')}{n})"


def _array_values(vals: Any) -> np.ndarray[Any, Any]:
    """One batch's values of an array-valued variable as numbers: ``(n, *shape)``."""
    a = _numbers(vals)
    if a.dtype.kind not in "biuf":  # nulls (None) among the numbers
        a = np.asarray(vals, dtype=float)
    return a


def _nonneg(a: np.ndarray[Any, Any]) -> bool:
    """What :func:`_int_dtype` asks of a part of integers: none of it is negative."""
    return a.dtype.kind == "u" or a.size == 0 or a.dtype.kind != "i" or bool(a.min() >= 0)


_Kind = tuple[str, bool, tuple[int, ...]]
"""What a batch's column of a variable is, as the pass over the batches keeps it: its
numpy kind, whether none of its integers is negative, the shape of a point (an array
variable; ``("!", False, ())`` with the reason beside it: values that are not numbers)."""


def _kind(col: Any, array: bool) -> tuple[_Kind, str]:
    if not array:
        c = _chunk(col)
        return (c.dtype.kind, _nonneg(c), ()), ""
    try:
        a = _array_values(col)
    except (TypeError, ValueError) as e:
        return ("!", False, ()), str(e)
    return (a.dtype.kind, _nonneg(a), tuple(a.shape[1:])), ""


def _coordinate_sets(batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The batches, each dimension named by its coordinate values: the first values a
    dimension ``freq`` has keep its name, other values get ``freq_1``, ``freq_2`` … and
    the variables on them ``spectrum_1`` … (NaN where the points have the other ones).

    A node starts a new batch when a variable's coordinates change (a spectrum of 64 bins
    after one of 32, other frequencies): the file kept the first batch's and filled the
    others with NaN, or labelled them with the wrong frequencies, and the job ended ``c``
    (a review)."""
    seen: dict[str, list[Any]] = {}  # dimension -> its coordinate values, in order
    # the names the driver uses are never given to another (a review: "power_1" of the
    # driver took a renamed spectrum, "freq_1" as a variable made the file unwritable)
    taken = {"uts", "task"}
    for b in batches:
        taken.update(b["vars"])
        taken.update(b.get("coords") or {})
        for ds in (b.get("dims") or {}).values():
            taken.update(ds)
    named: dict[tuple[str, tuple[int, ...]], str] = {}

    def name_of(base: str, version: tuple[int, ...]) -> str:
        if not any(version):
            return base
        if (base, version) not in named:
            k = 1
            while f"{base}_{k}" in taken:
                k += 1
            named[(base, version)] = f"{base}_{k}"
            taken.add(named[(base, version)])
        return named[(base, version)]

    out = []
    for b in batches:
        bdims = b.get("dims") or {}
        if not bdims:
            out.append(b)
            continue
        coords = b.get("coords") or {}
        version: dict[str, int] = {}
        for ds in bdims.values():
            for d in ds:
                if d not in version:
                    known = seen.setdefault(d, [])
                    # its values and their units (Hz then kHz: one coordinate labelled
                    # kHz for both, a review)
                    vals = (coords.get(d), (b.get("units") or {}).get(d))
                    i = next((i for i, k in enumerate(known) if k == vals), len(known))
                    if i == len(known):
                        known.append(vals)
                    version[d] = i
        if not any(version.values()):
            out.append(b)
            continue
        dim_name = {d: name_of(d, (i,)) for d, i in version.items()}
        units = dict(b.get("units") or {})
        for d, new in dim_name.items():
            if new != d and d in units:  # moved, not copied: the old name's are another's
                units[new] = units.pop(d)
        new_vars: dict[str, Any] = {}
        new_dims: dict[str, list[str]] = {}
        for name, col in b["vars"].items():
            ds = bdims.get(name)
            new = name_of(name, tuple(version[d] for d in ds)) if ds else name
            if new != name and name in units:
                units[new] = units.pop(name)
            new_vars[new] = col
            if ds:
                new_dims[new] = [dim_name[d] for d in ds]
        out.append(
            {
                **b,
                "vars": new_vars,
                "dims": new_dims,
                "coords": {dim_name.get(d, d): v for d, v in coords.items()},
                "units": units,
            }
        )
    return out


def _variable_versions(batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The batches, each variable named by its units and extra dimensions: the first
    ones a variable has keep its name, others get ``v_1``, ``v_2`` … (NaN where the
    points have the other ones), as coordinate sets do.

    A bulk driver's units changed from V to mV between blocks (the node starts a new
    batch then): the file labelled every value mV; a spectrum over ``f``, then over
    ``t``, was labelled with ``f`` (a data-fidelity review; the job ended ``c``). A
    batch without units for a variable takes the version of the same dimensions."""
    taken = {"uts", "task"}
    for b in batches:
        taken.update(b["vars"])
        taken.update(b.get("coords") or {})
    versions: dict[str, list[list[Any]]] = {}  # name -> [[units, dims, its name], ...]
    out = []
    for b in batches:
        units = b.get("units") or {}
        bdims = b.get("dims") or {}
        renamed: dict[str, str] = {}
        for name in b["vars"]:
            u, d = units.get(name), tuple(bdims.get(name) or ())
            known = versions.setdefault(name, [])
            for v in known:
                if v[1] == d and (u is None or v[0] is None or v[0] == u):
                    if v[0] is None:
                        v[0] = u
                    break
            else:
                new = name
                if known:
                    k = 1
                    while f"{name}_{k}" in taken:
                        k += 1
                    new = f"{name}_{k}"
                    taken.add(new)
                v = [u, d, new]
                known.append(v)
            if v[2] != name:
                renamed[name] = v[2]
        if not renamed:
            out.append(b)
            continue
        out.append(
            {
                **b,
                "vars": {renamed.get(k, k): c for k, c in b["vars"].items()},
                "units": {renamed.get(k, k): u for k, u in units.items()},
                "dims": {renamed.get(k, k): ds for k, ds in bdims.items()},
            }
        )
    return out


@dataclass
class _Var:
    """A variable of a group as it will be written: its dimensions, type, attrs, and
    (its per-batch parts) which name it has in each batch and how it is filled."""

    dims: tuple[str, ...]
    dtype: Any  # a numpy dtype, float, or object (text)
    attrs: dict[str, Any]
    shape: tuple[int, ...] = ()  # of a point (an array variable)


@dataclass
class _Plan:
    """A role's group, planned from one pass over its batches (their values dropped
    unless they fit :data:`_KEEP_PARSED`): its batches in the order of the file, each as
    a skeleton (``_i`` its index among the role's batches, ``_n`` its points, ``vars``
    each variable's name in the file -> its name in the batch), its variables in order,
    and its coordinates."""

    role: str
    batches: list[dict[str, Any]]
    variables: dict[str, _Var]
    coords: dict[str, np.ndarray[Any, Any]]
    attrs: dict[str, Any]

    @property
    def points(self) -> int:
        return sum(b["_n"] for b in self.batches)


#: a role's parsed batches are kept between the plan and the write up to this many raw
#: bytes (a usual job is parsed once); past it they are parsed again as they are written,
#: so that a long job's file is written in bounded memory: the write held a job's every
#: batch, raw and parsed (4 million points of 3 variables: 531 MB more at its peak, 104
#: MB now; past that, ~550 bytes a batch of the plan's skeletons)
_KEEP_PARSED = 64 * 2**20

#: bytes of values written to the file at a time
_WRITE_BYTES = 16 * 2**20


def _fetch(raws: Any, idx: Sequence[int]) -> list[bytes]:
    """The role's batches at ``idx`` (a store's :class:`Raws` fetches them by rowid)."""
    fetch = getattr(raws, "fetch", None)
    return list(fetch(idx)) if fetch is not None else [raws[i] for i in idx]


def _interned(coords: dict[str, Any], seen: dict[Any, Any]) -> dict[str, Any]:
    """The batch's coordinates, each value set shared with an earlier batch's equal one
    (every batch of a spectrometer carries its frequencies: kept once, not per batch)."""
    out = {}
    for k, v in coords.items():
        out[k] = seen.setdefault(("values", orjson.dumps(v)), v)
    shared: dict[str, Any] = seen.setdefault(("coords", orjson.dumps(out)), out)
    return shared


def _scan(raws: Any, problems: list[str]) -> list[dict[str, Any]]:
    """One pass over a role's batches: a skeleton of each (see :class:`_Plan`). What
    batches share (their variables, kinds, units, dimensions, coordinates) is kept once:
    a day of a 10 Hz driver is 170,000 batches."""
    out = []
    kept = 0
    seen: dict[Any, Any] = {}
    for i, raw in enumerate(raws):
        loaded = _load([raw], problems)
        if not loaded:
            continue
        b = loaded[0]
        bdims = b.get("dims") or {}
        n = len(b["uts"])
        kinds, why = {}, {}
        for name, col in b["vars"].items():
            kinds[name], w = _kind(col, bool(bdims.get(name)))
            if w:
                why[name] = w
        units = b.get("units") or {}
        # (hashable as it is: a tuple per batch, not a JSON text: 170,000 batches)
        shared = (
            tuple(kinds.items()),
            tuple(units.items()),
            tuple((k, tuple(v)) for k, v in bdims.items()) if bdims else (),
        )
        coords = b.get("coords")
        sk = {
            "component": seen.setdefault(
                ("component", str(b.get("component"))), b.get("component")
            ),
            "seq": b["seq"],
            "epoch": b.get("epoch"),
            "stream": b.get("stream"),
            "task": b.get("task"),
            "units": seen.setdefault((shared, 0), units),
            "dims": seen.setdefault((shared, 1), bdims),
            "coords": _interned(coords, seen) if coords else _NO_COORDS,
            "vars": seen.setdefault((shared, 2), {name: name for name in b["vars"]}),
            "_i": i,
            "_n": n,
            "_first": float(b["uts"][0]) if n else math.inf,
            "_kinds": seen.setdefault((shared, 3), kinds),
        }
        if why:
            sk["_why"] = why
        # what a parsed batch takes beyond its bytes: its dicts and arrays (a batch of 5
        # points takes ~2 KB parsed; counted by its 250 bytes, 32 MB "kept" were 300 MB:
        # a review)
        kept += 2 * len(raw) + 600 + 250 * len(kinds)
        if kept <= _KEEP_PARSED:
            sk["_parsed"] = b
        out.append(sk)
    return out


#: the coordinates of a batch without any (one object for all of them)
_NO_COORDS: dict[str, Any] = {}


def _scalar_dtype(parts: list[_Kind | None]) -> Any:
    """A variable's type in the file from its batches' kinds (None: a batch without it,
    filled with NaN or ""): netCDF has no bool; integers are int64 (uint64 past its
    range, none negative); numbers with gaps are floats; anything else is text."""
    kinds = {p[0] for p in parts if p is not None}
    gaps = any(p is None for p in parts)
    if not gaps and kinds <= {"b"}:
        return np.int8
    if not gaps and kinds <= {"i", "u"}:
        return _int_dtype_of([p for p in parts if p is not None])
    if kinds <= {"b", "i", "u", "f"}:
        return float
    return object


def _int_dtype_of(parts: Sequence[_Kind]) -> Any:
    """int64 for integers, unless one is past its range (numpy made it uint64): then
    uint64 when none is negative, else float (a review: 2**63 + 5 became a negative
    int64 in the file, without a word). From the parts' kinds."""
    if all(p[0] != "u" for p in parts):
        return np.int64
    if all(p[0] == "u" or p[1] for p in parts):
        return np.uint64
    return float


def plan_groups(roles: Sequence[RoleInput], problems: list[str] | None = None) -> list[_Plan]:
    """The file's groups, one per role (a later role of the same name replaces one),
    planned. ``problems`` gets what of the stored points the groups could not hold as
    they came (per role: ``role <r>: …``)."""
    out: dict[str, _Plan] = {}
    for ri in roles:
        mine: list[str] = []
        out[ri.role] = _plan(ri, mine)
        if problems is not None:
            problems.extend(f"role {ri.role}: {p}" for p in mine)
    return list(out.values())


def _plan(ri: RoleInput, problems: list[str]) -> _Plan:
    batches = _scan(ri.batches, problems)

    # in the order the points were taken: by seq within a stream (its node's clock may
    # have stepped: the uts then jump, as measured; sorted by uts, a batch across a step
    # back landed among later ones, found by fault injection), and a job's streams (a
    # node restarted, a component re-registered: their seqs say nothing of each other)
    # by the time of their first point
    def stream(b: dict[str, Any]) -> tuple[str, str]:
        return (str(b.get("epoch")), str(b.get("stream")))

    began: dict[tuple[str, str], tuple[int, float]] = {}
    for b in batches:
        first = (b["seq"], b["_first"])
        began[stream(b)] = min(began.get(stream(b), first), first)
    batches.sort(key=lambda b: (began[stream(b)][1], stream(b), b["seq"]))
    batches = _variable_versions(_coordinate_sets(batches))
    names: dict[str, None] = {}
    units: dict[str, str] = {}
    dims: dict[str, tuple[str, ...]] = {}
    coords: dict[str, Any] = {}
    for b in batches:
        names.update(dict.fromkeys(b["vars"]))
        units.update(b.get("units") or {})
        for k, v in (b.get("dims") or {}).items():
            dims.setdefault(k, tuple(v))
        for k, v in (b.get("coords") or {}).items():
            coords.setdefault(k, v)
    for name in _unfit(ri.role, names, dims, coords, problems):
        names.pop(name, None)
        coords.pop(name, None)
    variables: dict[str, _Var] = {}
    for name in names:
        attrs = {"units": units[name]} if units.get(name) else {}
        parts = [b["_kinds"][b["vars"][name]] if name in b["vars"] else None for b in batches]
        extra = dims.get(name)
        if not extra:
            dtype = _scalar_dtype(parts)
            if dtype is np.int8:  # booleans: xarray reads them back as bool (its mark)
                attrs["dtype"] = "bool"
            variables[name] = _Var(("uts",), dtype, attrs)
            continue
        shape = tuple(len(coords[d]) for d in extra)
        for b, p in zip(batches, parts, strict=True):
            if p is None or (p[2] == shape and p[0] != "!"):
                continue
            why = (
                f"points of shape {p[2]}, expected {shape}"
                if p[0] != "!"
                else b.get("_why", {}).get(b["vars"][name]) or "not numbers"
            )
            log.error("variable %r: %s: NaN in the file for those points", name, why)
            problems.append(
                f"variable {name!r} of {_batch_name(b)}: {why}: NaN in the file for those points"
            )
            b.setdefault("_nan", set()).add(name)
        good = [
            p for b, p in zip(batches, parts, strict=True) if p and name not in b.get("_nan", ())
        ]
        whole = len(good) == len(parts) and {p[0] for p in good} <= {"i", "u"}
        dtype = _int_dtype_of(good) if whole else float
        variables[name] = _Var(("uts", *extra), dtype, attrs, shape)
    variables["task"] = _Var(
        ("uts",),
        np.int64,
        {"long_name": "index of the payload task that produced the point (-1: none)"},
    )
    both = sorted(set(coords).union(["uts"]) & set(variables))
    if both:  # a variable named as a coordinate: xarray refused such a Dataset too
        raise ValueError(f"variables {both} are found in both data_vars and coords")
    # our own axis: pint's canonical name (a driver's variables keep their spelling)
    variables["uts"] = _Var(("uts",), float, {"units": "second"})
    values = {}
    for d, vals in coords.items():
        values[d] = np.asarray(vals)
        if values[d].ndim != 1:
            raise ValueError(f"variable {d!r}: {values[d].ndim}-d values for dims ({d!r},)")
        variables[d] = _Var((d,), values[d].dtype, {"units": units[d]} if units.get(d) else {})
    return _Plan(
        ri.role,
        batches,
        variables,
        values,
        {"tomato_Component": ri.component_json, "role": ri.role, **ri.attrs},
    )


def _unfit(
    role: str,
    names: Mapping[str, None],
    dims: Mapping[str, tuple[str, ...]],
    coords: Mapping[str, Any],
    problems: list[str],
) -> list[str]:
    """The variables and coordinates of a role the file cannot hold, each said once in
    ``problems``: a name netCDF refuses (or takes for a group's path: '/'), a variable
    named as a coordinate, a coordinate that is not one-dimensional, a variable whose
    dimension has no coordinate. The node refuses them from its drivers, but a batch
    of a node's login with one of them made the whole file unwritable, and every
    snapshot of it (a security round): only they are left out."""
    out: dict[str, str] = {}
    for name in [*coords, *{d for ds in dims.values() for d in ds}]:
        why = name_problem(name)
        if why is None and name in ("uts", "task"):
            why = "the file's own name"
        if why is None and name in coords and np.ndim(coords[name]) != 1:
            why = f"{np.ndim(coords[name])}-dimensional values for a coordinate"
        if why is not None:
            out.setdefault(name, f"coordinate {name!r}: {why}")
    for name in names:
        why = name_problem(name)
        if why is None and name in ("uts", "task", *coords):
            why = "a variable named as a coordinate (or as the file's own 'uts' or 'task')"
        lacking = [d for d in dims.get(name, ()) if d in out or d not in coords]
        if why is None and lacking:
            why = f"its dimension {lacking[0]!r} has no coordinate the file can hold"
        if why is not None:
            out.setdefault(name, f"variable {name!r}: {why}")
    for why in out.values():
        log.error("role %r: %s: not in the file", role, why)
        problems.append(f"{why}: not in the file (role {role!r})")
    return list(out)


def _part(plan: _Plan, name: str, b: dict[str, Any], parsed: dict[str, Any]) -> Any:
    """One batch's values of one variable, as the file holds them."""
    var = plan.variables[name]
    n = b["_n"]
    if name == "uts":
        return np.asarray(parsed["uts"], dtype=float)
    if name == "task":
        return np.full(n, -1 if b.get("task") is None else int(b["task"]), dtype=np.int64)
    col = parsed["vars"].get(b["vars"].get(name, ""))
    if var.shape:
        if col is None or name in b.get("_nan", ()):
            return np.full((n, *var.shape), math.nan)
        return _array_values(col).astype(var.dtype, copy=False)
    if col is None:
        return np.full(n, "" if var.dtype is object else math.nan, dtype=var.dtype)
    c = _chunk(col)
    if var.dtype is object:
        return c.astype(str).astype(object) if c.dtype.kind != "O" else c
    return c.astype(var.dtype, copy=False)


#: batches in one run at most (a run of many small batches, parsed again, is held
#: whole: 60,000 batches of 5 points were one run of 16 MB of values, a review)
_WRITE_BATCHES = 2048


def _windows(plan: _Plan) -> list[list[dict[str, Any]]]:
    """The plan's batches in runs of about :data:`_WRITE_BYTES` of values each, and of
    at most :data:`_WRITE_BATCHES` batches."""
    width = 16 + sum(8 * max(1, math.prod(v.shape)) for v in plan.variables.values())
    out: list[list[dict[str, Any]]] = []
    run: list[dict[str, Any]] = []
    size = 0
    for b in plan.batches:
        run.append(b)
        size += b["_n"] * width
        if size >= _WRITE_BYTES or len(run) >= _WRITE_BATCHES:
            out.append(run)
            run, size = [], 0
    if run:
        out.append(run)
    return out


def _write_group(nc: Any, plan: _Plan, raws: Any) -> None:
    """The role's group: its variables created, then filled a run of batches at a time
    (each parsed again unless the plan kept it)."""
    g = nc.createGroup(plan.role)
    sizes = {"uts": plan.points, **{d: len(vals) for d, vals in plan.coords.items()}}
    for dim in dict.fromkeys(d for var in plan.variables.values() for d in var.dims):
        g.createDimension(dim, sizes[dim])  # in the order of first use, as xarray's
    made = {}
    for vname, var in plan.variables.items():
        dtype = np.dtype(var.dtype)
        if dtype.kind in "UO":
            made[vname] = g.createVariable(vname, str, var.dims)
        else:
            fill = np.nan if dtype.kind == "f" else None
            made[vname] = g.createVariable(vname, dtype, var.dims, fill_value=fill)
        made[vname].setncatts({str(k): a for k, a in var.attrs.items()})
    for d, vals in plan.coords.items():
        if vals.size:
            made[d][:] = vals.astype(object) if vals.dtype.kind in "UO" else vals
    along = [v for v in plan.variables if v not in plan.coords]
    at = 0
    for run in _windows(plan):
        again = [b for b in run if "_parsed" not in b]
        if again:
            mine: list[str] = []
            loaded = _load(_fetch(raws, [b["_i"] for b in again]), mine)
            if mine or len(loaded) != len(again):  # the store changed under the write
                raise OSError(errno.EIO, f"stored batches changed while written: {mine}")
            parsed = dict(zip((b["_i"] for b in again), loaded, strict=True))
        n = sum(b["_n"] for b in run)
        if not n:
            continue
        for vname in along:
            parts = [
                _part(plan, vname, b, b["_parsed"] if "_parsed" in b else parsed[b["_i"]])
                for b in run
            ]
            made[vname][at : at + n] = np.concatenate(parts)
        at += n
    g.setncatts({str(k): a for k, a in plan.attrs.items()})


def _umask() -> int:
    """The process umask (read by setting it back at once: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_job_file(
    path: Path,
    roles: Sequence[RoleInput],
    root_attrs: Mapping[str, str],
    problems: list[str] | None = None,
    check: Callable[[str], None] | None = None,
    shown: Path | None = None,
) -> Path:
    """Write the job's file atomically at ``path``; returns the path written.
    ``problems`` gets what of the stored points the file could not hold as they came;
    ``check`` sees the new file before it takes the name (and may refuse it: raise);
    ``shown``: the path the messages name (``path`` may lead through an open folder)."""
    path = Path(path)
    named = (shown or path).parent
    plans = plan_groups(roles, problems)
    _remove_stale_temps(path)
    # the writer's pid in the name: a later write removes only a dead writer's leftovers
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
    )
    os.close(fd)
    try:
        with NC_LOCK:  # netCDF-C/HDF5 are not thread-safe (tomato_mqtt/nclock.py)
            try:
                _write(tmp, plans, roles, root_attrs)
            except RuntimeError as e:  # netCDF4's "NetCDF: HDF error" of a disk that
                # filled up mid-write (a review: answered "internal", never retried); a
                # refusal of the data itself (a name with '/', a NUL, too long: a data-
                # fidelity review) is not retried: the same data fails the same way
                if any(w in str(e) for w in _DATA_REFUSED):
                    raise ValueError(f"the file cannot hold the data as it came: {e}") from e
                raise _why_not_written(OSError(errno.EIO, str(e)), path.parent, named, tmp) from e
            except OSError as e:
                raise _why_not_written(e, path.parent, named, tmp) from e
        if check is not None:
            check(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: lab colleagues read results
        _sync(tmp)  # on the disk before it takes the name: a power cut leaves the old one
        os.replace(tmp, path)
        _sync(path.parent)  # and the name with it (a review: neither was synced)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _sync(p: str | Path) -> None:
    """fsync a file (an error is the write's: raised) or a folder (its entry: where the
    OS allows it, not on Windows; an error there is not the file's)."""
    folder = Path(p).is_dir()
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError:
        if folder:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not folder:
            raise
    finally:
        os.close(fd)


#: folders this process swept of dead writers' temporary files (_remove_stale_temps)
_SWEPT: set[str] = set()


def _remove_stale_temps(path: Path) -> None:
    """The half-written temporary files that a killed recorder left in ``path``'s folder
    (this process removes its own on failure): a killed write must leave nothing behind
    in the user's folder. Only those whose writer (the pid in the name) is gone: another
    recorder may be writing right now. Once per folder and process: only a process that
    is gone leaves them, and a scan at every write cost time in proportion to the
    folder's files (4 ms a write at 4,000 results files in a soak, growing with each)."""
    folder = os.path.realpath(path.parent)  # (an open folder's /proc/self/fd/N: reused)
    if folder in _SWEPT:
        return
    if len(_SWEPT) >= 10_000:
        _SWEPT.clear()
    _SWEPT.add(folder)
    try:
        entries = os.scandir(str(path.parent))  # (through the open folder, when it is one)
    except OSError:
        return
    with entries:
        for entry in entries:
            name = entry.name
            if not (name.startswith(".") and name.endswith(".tmp")):
                continue
            # ".<file>.<pid>.<random>.tmp", as write_job_file names them
            parts = name[:-4].rsplit(".", 2)
            if len(parts) != 3 or not parts[0].endswith(".nc") or not parts[1].isdigit():
                continue
            pid = int(parts[1])
            if pid == os.getpid() or not _gone(pid):
                continue
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                log.info("removed %s, left by an interrupted write", entry.path)


def _gone(pid: int) -> bool:
    """Whether process ``pid`` is certainly gone (POSIX; elsewhere it is never assumed:
    a file is rather left than removed under a live writer). A reused pid counts as
    alive, a zombie as gone."""
    if os.name != "posix" or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("Z", "X")


def _why_not_written(
    e: OSError, folder: Path, named: Path | None = None, tmp: str | None = None
) -> OSError:
    """HDF5 reports a full disk as whatever failed last (often EACCES, "Permission
    denied"): a user then looks at permissions. Name the full disk when it is one
    (``named``: the folder as the message names it). ``tmp``, the write's own file, is
    removed first: the space said free is without it (a file larger than the free space
    was said "0 bytes free" of a disk with 448 kB free: a check of the fix)."""
    try:
        free = shutil.disk_usage(folder).free  # (the disk as the write found it)
    except OSError:
        return e
    full = e.errno == errno.ENOSPC or free < _FULL
    left = free
    if tmp is not None:
        Path(tmp).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            left = shutil.disk_usage(folder).free
    if full and left > free:
        return OSError(
            errno.ENOSPC,
            f"no space left in {named or folder}: the file did not fit ({left} bytes free "
            "without it)",
        )
    if e.errno != errno.ENOSPC and full:
        # (HDF5's own words left out: "Permission denied" sent users to the permissions)
        return OSError(errno.ENOSPC, f"no space left in {named or folder} ({free} bytes free)")
    return e


def _write(
    path: str,
    plans: Sequence[_Plan],
    roles: Sequence[RoleInput],
    root_attrs: Mapping[str, str],
) -> None:
    """The groups with netCDF4 directly, in one open file: the layout xarray's
    ``DataTree.to_netcdf`` writes (dimension coordinates, ``_FillValue`` NaN for floats,
    text as variable-length strings), without xarray and pandas in the recorder (~60 MB
    of RSS for as long as it runs) and without re-opening the file for every group
    (~30 ms each: a job of 100 components spent seconds there).
    """
    import netCDF4

    _close_abandoned()
    raws = {ri.role: ri.batches for ri in roles}  # (the last of a name, as plan_groups)
    nc = netCDF4.Dataset(path, "w", format="NETCDF4")
    try:
        nc.setncatts({str(k): v for k, v in root_attrs.items()})
        for plan in plans:
            _write_group(nc, plan, raws[plan.role])
    except BaseException:
        _abandon(nc, path)
        raise
    try:
        nc.close()
    except BaseException:
        _abandon(nc, path)
        raise


#: files of writes that failed whose close failed too: HDF5 holds them open (a full
#: disk), and closing them is tried again before every write
_ABANDONED: list[Any] = []


def _abandon(nc: Any, path: str) -> None:
    """A write that failed, closed if it can be. A disk that filled up mid-write fails
    the close as well (HDF5 flushes what it holds, the variable-length strings' heap
    last), and HDF5 kept the file open, with the space it had taken, after its name was
    removed: each failed write held more of a full disk until the recorder restarted
    (fault injection). Its descriptors then lead to /dev/null: the space is free at
    once, and what HDF5 still writes goes nowhere until its close succeeds."""
    try:
        nc.close()
        return
    except Exception:  # (RuntimeError: "NetCDF: HDF error")
        if not nc.isopen():
            return
    _to_devnull(path)
    try:
        nc.close()
    except Exception:
        if nc.isopen():
            _ABANDONED.append(nc)


def _to_devnull(path: str) -> None:
    """Every descriptor of this process open on the file at ``path`` made a descriptor
    of /dev/null (found by device and inode: ``path`` may lead through an open folder)."""
    try:
        st = os.stat(path)
        fds = [
            int(fd)
            for fd in os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd")
        ]
    except (OSError, ValueError):
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in fds:
            with contextlib.suppress(OSError):
                got = os.fstat(fd)
                if fd != null and (got.st_dev, got.st_ino) == (st.st_dev, st.st_ino):
                    os.dup2(null, fd)
    finally:
        os.close(null)


def _close_abandoned() -> None:
    """Close the files of earlier failed writes that can be closed now (under NC_LOCK)."""
    for nc in list(_ABANDONED):
        try:
            nc.close()
        except Exception:
            if nc.isopen():
                continue
        _ABANDONED.remove(nc)
