"""The NetCDF file of a job: one xarray DataTree, written once with the netCDF4 engine.

Pure (no MQTT). Layout, compatible with tomato's: root attrs ``tomato_version`` and
``tomato_Job`` (JSON); one group per role with the coordinate ``uts`` (unix time, s),
the driver's variables with CF ``units`` attrs, a ``task`` variable (index of the payload
task that produced each point, -1 for none) and the group attrs ``tomato_Component``
(JSON) and ``role``. The file is written next to its final place and renamed, so a
reader never sees half a file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["RoleInput", "build_tree", "write_job_file"]


@dataclass
class RoleInput:
    role: str
    component_json: str
    batches: list[bytes] = field(default_factory=list)  # raw DataBatch JSON


def _column(values: Sequence[Any]) -> np.ndarray[Any, Any]:
    kinds = {type(v) for v in values if v is not None}
    has_none = any(v is None for v in values)
    if kinds <= {bool} and kinds and not has_none:
        return np.asarray(values, dtype=np.int8)
    if kinds <= {int} and kinds and not has_none:
        return np.asarray(values, dtype=np.int64)
    if kinds <= {int, float, bool}:
        return np.asarray([math.nan if v is None else float(v) for v in values], dtype=float)
    return np.asarray(["" if v is None else str(v) for v in values], dtype=object)


def _role_dataset(ri: RoleInput) -> xr.Dataset:
    uts: list[float] = []
    task: list[int] = []
    cols: dict[str, list[Any]] = {}
    units: dict[str, str] = {}
    batches = [json.loads(raw) for raw in ri.batches]
    batches.sort(key=lambda b: (b["epoch"], b["seq"]))
    for b in batches:
        n = len(b["uts"])
        start = len(uts)
        uts.extend(b["uts"])
        t = b.get("task")
        task.extend([-1 if t is None else int(t)] * n)
        for name, vals in b["vars"].items():
            col = cols.setdefault(name, [None] * start)
            col.extend(vals)
        for col in cols.values():
            if len(col) < start + n:  # a variable this batch did not carry
                col.extend([None] * (start + n - len(col)))
        units.update(b.get("units") or {})
    data_vars: dict[str, Any] = {}
    for name, col in cols.items():
        attrs = {"units": units[name]} if units.get(name) else {}
        data_vars[name] = xr.Variable(("uts",), _column(col), attrs)
    data_vars["task"] = xr.Variable(
        ("uts",),
        np.asarray(task, dtype=np.int64),
        {"long_name": "index of the payload task that produced the point (-1: none)"},
    )
    ds = xr.Dataset(
        data_vars,
        coords={"uts": ("uts", np.asarray(uts, dtype=float), {"units": "s"})},
        attrs={"tomato_Component": ri.component_json, "role": ri.role},  # as tomato's
    )
    return ds


def build_tree(roles: Sequence[RoleInput], root_attrs: Mapping[str, str]) -> xr.DataTree:
    tree = xr.DataTree(xr.Dataset(attrs=dict(root_attrs)))
    for ri in roles:
        tree[ri.role] = xr.DataTree(_role_dataset(ri))
    return tree


def write_job_file(path: Path, roles: Sequence[RoleInput], root_attrs: Mapping[str, str]) -> Path:
    """Write the job's file atomically at ``path``; returns the path written."""
    path = Path(path)
    tree = build_tree(roles, root_attrs)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        tree.to_netcdf(tmp, engine="netcdf4")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
