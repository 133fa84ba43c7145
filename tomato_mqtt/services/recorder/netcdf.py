"""The NetCDF file of a job: written once with netCDF4, in the layout xarray writes.

Pure (no MQTT). Layout, compatible with tomato's: root attrs ``tomato_version`` and
``tomato_Job`` (JSON); one group per role with the coordinate ``uts`` (unix time, s),
the driver's variables with CF ``units`` attrs, a ``task`` variable (index of the payload
task that produced each point, -1 for none) and the group attrs ``tomato_Component``
(JSON) and ``role`` (plus ``tomato_clock_offset``, s, when the node's clock was off).
An array-valued variable has the dimensions ``("uts", *extra)``, and every extra
dimension is a coordinate variable with its ``units``, as tomato writes its drivers'
xarray Datasets.
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from tomato_mqtt.nclock import NC_LOCK

__all__ = ["Group", "RoleInput", "build_groups", "write_job_file"]

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
    batches: list[bytes] = field(default_factory=list)  # raw DataBatch JSON
    attrs: dict[str, Any] = field(default_factory=dict)  # more group attrs (clock offset)


def _made_here(a: np.ndarray[Any, Any]) -> bool:
    """An object array of text only (what the slow path below makes): None or numbers
    among its values came from elsewhere (a review: an array variable's column)."""
    return all(isinstance(v, str) for v in a.tolist())


def _chunk(vals: Sequence[Any]) -> np.ndarray[Any, Any]:
    """One batch's values of one variable, typed by numpy (C speed for the usual case)."""
    if isinstance(vals, np.ndarray) and vals.dtype.kind == "O" and _made_here(vals):
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


def _int_dtype(parts: Sequence[np.ndarray[Any, Any]]) -> Any:
    """int64 for integers, unless one is past its range (numpy made it uint64): then
    uint64 when none is negative, else float (a review: 2**63 + 5 became a negative
    int64 in the file, without a word)."""
    if all(p.dtype.kind != "u" for p in parts):
        return np.int64
    if all(p.dtype.kind == "u" or p.size == 0 or p.min() >= 0 for p in parts):
        return np.uint64
    return float


def _column(chunks: Sequence[np.ndarray[Any, Any] | None], lens: Sequence[int]) -> Any:
    """Join a variable's per-batch arrays; a batch without it gets NaN (or "")."""
    kinds = {c.dtype.kind for c in chunks if c is not None}
    gaps = any(c is None for c in chunks)
    if not gaps and kinds <= {"b"}:
        dtype: Any = np.int8  # netCDF has no bool
    elif not gaps and kinds <= {"i", "u"}:
        dtype = _int_dtype([c for c in chunks if c is not None])
    elif kinds <= {"b", "i", "u", "f"}:
        dtype = float
    else:
        dtype = object
    fill: Any = math.nan if dtype is float else ""
    parts = []
    for c, n in zip(chunks, lens, strict=True):
        if c is None:
            parts.append(np.full(n, fill, dtype=dtype))
        elif dtype is object:
            parts.append(c.astype(str).astype(object) if c.dtype.kind != "O" else c)
        else:
            parts.append(c.astype(dtype, copy=False))
    if not parts:
        return np.asarray([], dtype=float)
    return np.concatenate(parts)


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
        n = f", {len(b['uts'])} point(s)"
    except (KeyError, TypeError):
        n = ""
    return f"the batch of {b.get('component')} (seq {b.get('seq')}{n})"


def _array(vals: Sequence[Any], shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    """One batch's values of an array-valued variable: shape ``(n, *shape)``."""
    a = _numbers(vals)
    if a.dtype.kind not in "biuf":  # nulls (None) among the numbers
        a = np.asarray(vals, dtype=float)
    if a.shape[1:] != shape:
        raise ValueError(f"points of shape {a.shape[1:]}, expected {shape}")
    return a


def _array_column(
    name: str, batches: Sequence[Mapping[str, Any]], shape: tuple[int, ...], problems: list[str]
) -> np.ndarray[Any, Any]:
    parts: list[np.ndarray[Any, Any]] = []
    for b in batches:
        n = len(b["uts"])
        col = b["vars"].get(name)
        try:
            parts.append(_array(col, shape) if col is not None else np.full((n, *shape), math.nan))
        except (TypeError, ValueError) as e:
            log.error("variable %r: %s: NaN in the file for those points", name, e)
            problems.append(
                f"variable {name!r} of {_batch_name(b)}: {e}: NaN in the file for those points"
            )
            parts.append(np.full((n, *shape), math.nan))
    kinds = {p.dtype.kind for p in parts}
    dtype: Any = _int_dtype(parts) if kinds <= {"i", "u"} else float
    if not parts:
        return np.empty((0, *shape), dtype=float)
    return np.concatenate([p.astype(dtype, copy=False) for p in parts])


@dataclass
class Group:
    """One group of the file as xarray's ``Dataset`` would hold it: variables in order
    (data variables, then coordinates), each ``(dims, values, attrs)``, and its attrs."""

    variables: dict[str, tuple[tuple[str, ...], np.ndarray[Any, Any], dict[str, Any]]]
    attrs: dict[str, Any]

    @property
    def sizes(self) -> dict[str, int]:
        """Each dimension's length, in the order of first use (as ``Dataset.sizes``)."""
        sizes: dict[str, int] = {}
        for name, (dims, values, _) in self.variables.items():
            if values.ndim != len(dims):
                raise ValueError(f"variable {name!r}: {values.ndim}-d values for dims {dims}")
            for d, n in zip(dims, values.shape, strict=True):
                if sizes.setdefault(d, n) != n:
                    raise ValueError(f"dimension {d!r}: length {n} and {sizes[d]}")
        return sizes


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


def _role_group(ri: RoleInput, problems: list[str]) -> Group:
    batches = _load(ri.batches, problems)

    # in the order the points were taken: by seq within a stream (its node's clock may
    # have stepped: the uts then jump, as measured; sorted by uts, a batch across a step
    # back landed among later ones, found by fault injection), and a job's streams (a
    # node restarted, a component re-registered: their seqs say nothing of each other)
    # by the time of their first point
    def stream(b: dict[str, Any]) -> tuple[str, str]:
        return (str(b.get("epoch")), str(b.get("stream")))

    began: dict[tuple[str, str], tuple[int, float]] = {}
    for b in batches:
        first = (b["seq"], b["uts"][0] if len(b["uts"]) else math.inf)
        began[stream(b)] = min(began.get(stream(b), first), first)
    batches.sort(key=lambda b: (began[stream(b)][1], stream(b), b["seq"]))
    batches = _variable_versions(_coordinate_sets(batches))
    lens = [len(b["uts"]) for b in batches]
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
    variables: dict[str, Any] = {}
    for name in names:
        attrs = {"units": units[name]} if units.get(name) else {}
        extra = dims.get(name)
        if extra:
            shape = tuple(len(coords[d]) for d in extra)
            column = _array_column(name, batches, shape, problems)
            variables[name] = (("uts", *extra), column, attrs)
            continue
        chunks = [_chunk(b["vars"][name]) if name in b["vars"] else None for b in batches]
        variables[name] = (("uts",), _column(chunks, lens), attrs)
    task = [
        np.full(n, -1 if b.get("task") is None else int(b["task"]), dtype=np.int64)
        for b, n in zip(batches, lens, strict=True)
    ]
    variables["task"] = (
        ("uts",),
        np.concatenate(task) if task else np.asarray([], dtype=np.int64),
        {"long_name": "index of the payload task that produced the point (-1: none)"},
    )
    both = sorted(set(coords).union(["uts"]) & set(variables))
    if both:  # a variable named as a coordinate: xarray refused such a Dataset too
        raise ValueError(f"variables {both} are found in both data_vars and coords")
    uts = [np.asarray(b["uts"], dtype=float) for b in batches]
    # our own axis: pint's canonical name (a driver's variables keep their spelling)
    variables["uts"] = (
        ("uts",),
        np.concatenate(uts) if uts else np.asarray([]),
        {"units": "second"},
    )
    for d, vals in coords.items():
        variables[d] = ((d,), np.asarray(vals), {"units": units[d]} if units.get(d) else {})
    return Group(variables, {"tomato_Component": ri.component_json, "role": ri.role, **ri.attrs})


def build_groups(roles: Sequence[RoleInput], problems: list[str] | None = None) -> dict[str, Group]:
    """The file's groups, one per role (a later role of the same name replaces one).
    ``problems`` gets what of the stored points the groups could not hold as they came
    (per role: ``role <r>: …``)."""
    out = {}
    for ri in roles:
        mine: list[str] = []
        out[ri.role] = _role_group(ri, mine)
        if problems is not None:
            problems.extend(f"role {ri.role}: {p}" for p in mine)
    return out


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
) -> Path:
    """Write the job's file atomically at ``path``; returns the path written.
    ``problems`` gets what of the stored points the file could not hold as they came."""
    path = Path(path)
    groups = build_groups(roles, problems)
    _remove_stale_temps(path)
    # the writer's pid in the name: a later write removes only a dead writer's leftovers
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
    )
    os.close(fd)
    try:
        with NC_LOCK:  # netCDF-C/HDF5 are not thread-safe (tomato_mqtt/nclock.py)
            try:
                _write(tmp, groups, root_attrs)
            except RuntimeError as e:  # netCDF4's "NetCDF: HDF error" of a disk that
                # filled up mid-write (a review: answered "internal", never retried); a
                # refusal of the data itself (a name with '/', a NUL, too long: a data-
                # fidelity review) is not retried: the same data fails the same way
                if any(w in str(e) for w in _DATA_REFUSED):
                    raise ValueError(f"the file cannot hold the data as it came: {e}") from e
                raise _why_not_written(OSError(errno.EIO, str(e)), path.parent) from e
            except OSError as e:
                raise _why_not_written(e, path.parent) from e
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
    folder = str(path.parent)
    if folder in _SWEPT:
        return
    if len(_SWEPT) >= 10_000:
        _SWEPT.clear()
    _SWEPT.add(folder)
    try:
        entries = os.scandir(folder)
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


def _why_not_written(e: OSError, folder: Path) -> OSError:
    """HDF5 reports a full disk as whatever failed last (often EACCES, "Permission
    denied"): a user then looks at permissions. Name the full disk when it is one."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return e
    if e.errno != errno.ENOSPC and free < _FULL:
        return OSError(errno.ENOSPC, f"no space left in {folder} ({free} bytes free; {e})")
    return e


def _write(path: str, groups: Mapping[str, Group], root_attrs: Mapping[str, str]) -> None:
    """The groups with netCDF4 directly, in one open file: the layout xarray's
    ``DataTree.to_netcdf`` writes (dimension coordinates, ``_FillValue`` NaN for floats,
    text as variable-length strings), without xarray and pandas in the recorder (~60 MB
    of RSS for as long as it runs) and without re-opening the file for every group
    (~30 ms each: a job of 100 components spent seconds there).
    """
    import netCDF4

    with netCDF4.Dataset(path, "w", format="NETCDF4") as nc:
        nc.setncatts({str(k): v for k, v in root_attrs.items()})
        for name, group in groups.items():
            g = nc.createGroup(name)
            for dim, size in group.sizes.items():
                g.createDimension(dim, size)
            for vname, (dims, values, attrs) in group.variables.items():
                kind = values.dtype.kind
                if kind in "UO":
                    v = g.createVariable(vname, str, dims)
                    if values.size:
                        v[:] = values.astype(object)
                else:
                    fill = np.nan if kind == "f" else None
                    v = g.createVariable(vname, values.dtype, dims, fill_value=fill)
                    if values.size:
                        v[:] = values
                v.setncatts({str(k): a for k, a in attrs.items()})
            g.setncatts({str(k): a for k, a in group.attrs.items()})
