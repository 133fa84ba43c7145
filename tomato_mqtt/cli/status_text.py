"""What ``tomato status <section>`` prints: one text view per section (typer-free).

status.py declares the command; :mod:`tomato_mqtt.cli.fast` runs it without typer.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from tomato_mqtt.cli.core import Opts, run_request
from tomato_mqtt.cli.output import errors_below, table

TYPE_CHECKING = False  # typing is ~2 ms of a one-request call: for the type checker only
if TYPE_CHECKING:
    from typing import Any

__all__ = ["HUMAN", "show"]


# -- human output, one per section ---------------------------------------------------------
def _rows(data: Any) -> list[Mapping[str, Any]]:
    if isinstance(data, Mapping):  # a section is a name -> object mapping (as in tomato)
        data = list(data.values())
    if not isinstance(data, Sequence):
        return []
    return [r for r in data if isinstance(r, Mapping)]


def _scheduler(msg: str, data: Any, came_by: str | None = None) -> str:
    if not isinstance(data, Mapping):
        return msg
    beat = data.get("heartbeat")
    broker = data.get("broker")
    if came_by and isinstance(broker, str) and broker.split("://")[-1] != came_by.split("://")[-1]:
        # the scheduler's own address of the broker (its PC's loopback, often): a user on
        # another PC is told the one they came by too (an admin's tour)
        broker = f"{broker} (the scheduler's; this call came by {came_by})"
    fields = [
        ("state", data.get("state")),
        ("instance", data.get("instance")),
        ("version", data.get("version")),
        ("broker", broker),
        ("running", data.get("jobs_running")),
        ("queued", data.get("jobs_queued")),
        ("heartbeat", f"{time.time() - beat:.1f} s ago" if isinstance(beat, float) else None),
        # the settings' folder (a client's hint points here: it was in --json only)
        ("appdir", data.get("appdir")),
        ("datadir", data.get("datadir")),
        ("logdir", data.get("logdir")),
        ("devices", data.get("devices_file")),
        # not shown before: a recorder down was said only in the running jobs' reasons
        ("recorder", data.get("recorder") if data.get("recorder") != "online" else None),
        # its state file damaged or taking no writes (it was in --json only: a review)
        ("storage", data.get("storage_error")),
        ("storage", data.get("recorder_storage_error")),  # the recorder's store (full, locked)
    ]
    away = data.get("nodes_away")
    if isinstance(away, Mapping):  # a lost node was in `tomato status nodes` only
        fields += [("node", f"{n} {state}") for n, state in away.items()]
    spools = data.get("node_storage_errors")
    if isinstance(spools, Mapping):  # each node's spool (its batches wait elsewhere)
        fields += [("storage", v) for v in spools.values()]
    warned = data.get("broker_warnings")
    if isinstance(warned, list):  # what an external broker does not do (brokercheck.py)
        fields += [("warning", w) for w in warned]
    lines = [msg] + [f"  {k + ':':<10} {v}" for k, v in fields if v is not None]
    return "\n".join(lines)


def _pipelines(msg: str, data: Any) -> str:
    rows = _rows(data)
    if not rows:
        return "no pipelines"
    return table(
        rows,
        [
            ("name", "pipeline"),
            ("sampleid", "sample"),
            ("ready", "ready"),
            ("jobid", "job"),
            ("roles", "roles"),
        ],
    )


def _devices(msg: str, data: Any) -> str:
    rows = _rows(data)
    if not rows:
        return "no devices"
    return table(
        rows,
        [
            ("name", "device"),
            ("driver", "driver"),
            ("address", "address"),
            ("channels", "channels"),
            ("node", "node"),
        ],
    )


def _components(msg: str, data: Any) -> str:
    rows = [{**r, "where": f"{r.get('device')}/{r.get('channel')}"} for r in _rows(data)]
    if not rows:
        return "no components"
    cols = [
        ("where", "device/channel"),
        ("name", "component"),
        ("node", "node"),
        ("state", "state"),
        ("registered", "registered"),
        ("jobid", "job"),
        ("capabilities", "capabilities"),
    ]
    return table(rows, cols) + errors_below((r["where"], r.get("error")) for r in rows)


def _nodes(msg: str, data: Any) -> str:
    now = time.time()
    rows = []
    for r in _rows(data):
        beat = r.get("heartbeat")
        # the scheduler's own clock (heartbeat_age): the node's clock may be off
        age = r.get("heartbeat_age")
        if not isinstance(age, int | float):
            age = now - beat if isinstance(beat, int | float) else None
        off = r.get("clock_offset")
        clock = f"{off:+.1f} s" if isinstance(off, int | float) else None
        if clock and r.get("clock_skewed"):
            clock += " (clock skew!)"
        drivers = r.get("drivers") if isinstance(r.get("drivers"), Mapping) else {}
        spooled = r.get("spool_pending")
        if spooled and r.get("state") != "online":  # its last word, maybe stored since (a
            spooled = f"{spooled} (as last heard)"  # count that worried an admin's tour)
        rows.append(
            {
                **r,
                "spool_pending": spooled,
                "beat": f"{age:.1f} s ago" if age is not None else None,
                "clock": clock,
                "ncomp": len(r.get("components") or []),
                "drv": [k for k, v in (drivers or {}).items() if (v or {}).get("loaded")],
            }
        )
    if not rows:
        return "no nodes"
    return table(
        rows,
        [
            ("node", "node"),
            ("state", "state"),
            ("host", "host"),
            ("pid", "pid"),
            ("ncomp", "components"),
            ("drv", "drivers loaded"),
            ("spool_pending", "spooled"),
            ("beat", "heartbeat"),
            ("clock", "clock offset"),
        ],
    ) + errors_below(
        # a spool that takes no writes (a full disk) was said in the node's own log only
        # (a randomized fault round): its status carries it
        (r["node"], f"spool: {r['spool_error']}")
        for r in rows
        if r.get("spool_error")
    )


def _drivers(msg: str, data: Any) -> str:
    rows = []
    for r in _rows(data):
        nodes = r.get("nodes") if isinstance(r.get("nodes"), Mapping) else {}
        where = []
        errors = []
        for node, info in (nodes or {}).items():
            info = info if isinstance(info, Mapping) else {}
            ok = "loaded" if info.get("loaded") else "not loaded"
            ver = f" {info['version']}" if info.get("version") else ""
            where.append(f"{node}: {ok}{ver}")
            if info.get("error"):
                errors.append(f"{node}: {info['error']}")
        rows.append({**r, "where": where, "errors": errors or None})
    if not rows:
        return "no drivers"
    cols = [("name", "driver"), ("where", "nodes"), ("settings", "settings")]
    notes = ((r.get("name"), e) for r in rows for e in r["errors"] or ())
    return table(rows, cols) + errors_below(notes)


HUMAN = {
    "scheduler": _scheduler,
    "pipelines": _pipelines,
    "devices": _devices,
    "components": _components,
    "nodes": _nodes,
    "drivers": _drivers,
}


def show(opts: Opts, section: str) -> None:
    """``tomato status <section>``: one request, the Reply printed (typer-free: also the
    fast path's)."""
    if section == "tomato":  # tomato's name of the default section: the scheduler
        section = "scheduler"
    ctx = opts.context()
    reply = run_request(
        ctx, ctx.topics.scheduler_cmd("status"), {"what": section}, timeout=opts.timeout
    )
    human = HUMAN[section]
    if section == "scheduler":
        came_by = str(ctx.url)
        opts.output().reply(reply, lambda data: _scheduler(reply.msg, data, came_by))
        return
    opts.output().reply(reply, lambda data: human(reply.msg, data))
