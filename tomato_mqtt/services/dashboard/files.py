"""A job's data as stored: a snapshot written by the recorder, fetched over MQTT.

Used twice: the page's download link streams it, and a job page opened for a job that
began before this dashboard did starts its plots with it (then streams). Both go through
``job_snapshot`` and the recorder's ``fetch`` with the session's own login, so they work
from any PC and only for roles that may take snapshots.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from tomato_mqtt.nclock import NC_LOCK
from tomato_mqtt.services.dashboard.sessions import Session
from tomato_mqtt.wire.commands import ChunkData, FileData, command
from tomato_mqtt.wire.topics import slug

__all__ = ["StoredRole", "chunks", "read_job_file", "take_snapshot"]


async def take_snapshot(s: Session, job: int, record: bool = True) -> FileData:
    """Ask the scheduler for an up-to-date file of ``job`` (raises ReplyError/NoResponder);
    ``record=False``: a copy for the plots, which changes neither the job nor its events."""
    snap = await s.requester.call(
        s.topics.scheduler_cmd("job_snapshot"),
        command("scheduler", "job_snapshot"),
        {"jobid": job, "record": record},
        timeout=60,
        who="scheduler",
    )
    if not isinstance(snap, FileData):
        raise TypeError("the scheduler's reply names no file")
    return snap


async def chunks(s: Session, snap: FileData) -> AsyncIterator[bytes]:
    """The file's bytes, chunk by chunk, from the recorder."""
    fetch = command("recorder", "fetch")
    for index in range(snap.chunks):
        chunk = await s.requester.call(
            s.topics.recorder_cmd("fetch"),
            fetch,
            {"token": snap.token, "index": index},
            timeout=30,
            who="recorder",
        )
        if isinstance(chunk, ChunkData):
            yield base64.b64decode(chunk.data)


@dataclass
class StoredRole:
    """One role's group of a job file, as columns."""

    role: str
    component: str  # the slug of the component (the key of the live series)
    uts: list[float]
    columns: dict[str, list[Any]] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    task: list[int] = field(default_factory=list)


def _floats(values: Any) -> list[Any]:
    if hasattr(values, "filled"):
        values = values.filled(math.nan)
    return list(values.tolist())


def read_job_file(data: bytes) -> list[StoredRole]:
    """The 1-D numeric variables of every role of a job file (netCDF4; the ``server``
    extra). Array-valued and text variables are left out: the plots cannot show them."""
    import netCDF4

    out = []
    # two pages may load at once: netCDF4 is not thread-safe (tomato_mqtt/nclock.py)
    with NC_LOCK, netCDF4.Dataset("snapshot.nc", mode="r", memory=data) as ds:
        for name, g in ds.groups.items():
            if "uts" not in g.variables:
                continue
            component = name
            if "tomato_Component" in g.ncattrs():
                meta = json.loads(g.getncattr("tomato_Component"))
                if isinstance(meta, dict) and meta.get("name"):
                    component = str(meta["name"])
            role = str(g.getncattr("role")) if "role" in g.ncattrs() else name
            r = StoredRole(role, slug(component), _floats(g.variables["uts"][:]))
            for vname, var in g.variables.items():
                if vname == "uts" or var.dimensions != ("uts",):
                    continue
                if getattr(var.dtype, "kind", "O") not in "biuf":  # str: a Python type
                    continue
                if vname == "task":
                    r.task = [int(x) for x in _floats(var[:])]
                    continue
                r.columns[vname] = _floats(var[:])
                if "units" in var.ncattrs():
                    r.units[vname] = str(var.getncattr("units"))
            out.append(r)
    return out
