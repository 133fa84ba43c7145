"""``tomato status <section>``: the scheduler's view of itself, pipelines, devices, …

Read-only: builds the reply data of ``scheduler/cmd/status`` from the scheduler's state.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pydantic import JsonValue

from tomato_mqtt.errors import BROKEN_DRIVER
from tomato_mqtt.model.jobs import PipelineState
from tomato_mqtt.services.scheduler.store import StateStore
from tomato_mqtt.transport.rpc import CommandError, Result

if TYPE_CHECKING:
    from tomato_mqtt.services.scheduler.service import SchedulerService

__all__ = ["pipeline_info", "status_section"]


def pipeline_info(svc: SchedulerService, p: PipelineState) -> dict[str, JsonValue]:
    """tomato 2.2's ``Pipeline`` (name, ready, jobid, sampleid, components) plus ``roles``."""
    lay = svc.layout.pipelines.get(p.name)
    roles = dict(lay.roles) if lay else {}
    out: dict[str, JsonValue] = p.model_dump(mode="json")
    out["components"] = list(roles.values())
    out["roles"] = dict(roles)
    return out


def _roles(svc: SchedulerService) -> dict[str, str]:
    """component -> its role (the first pipeline naming it), as tomato's Component.role."""
    out: dict[str, str] = {}
    for lay in svc.layout.pipelines.values():
        for role, cmp in lay.roles.items():
            out.setdefault(cmp, role)
    return out


def _pipelines(svc: SchedulerService, store: StateStore) -> dict[str, JsonValue]:
    return {p.name: pipeline_info(svc, p) for p in store.pipelines()}


def _devices(svc: SchedulerService) -> dict[str, JsonValue]:
    """Every device of the devices file with all its channels, also one no pipeline
    uses (as tomato lists them), by name."""
    devs: dict[str, Any] = {
        d.name: {
            "name": d.name,
            "driver": d.driver,
            "address": d.address,
            "channels": list(d.channels),
            "pollrate": d.pollrate,
            "node": d.node,
        }
        for d in svc.layout.devices.values()
    }
    for c in svc.layout.components.values():  # (a layout built without devices)
        d = devs.setdefault(
            c.device,
            {
                "name": c.device,
                "driver": c.driver,
                "address": c.address,
                "channels": [],
                "pollrate": c.pollrate,
                "node": c.node,
            },
        )
        if c.channel not in d["channels"]:
            d["channels"].append(c.channel)
    return devs


def _components(svc: SchedulerService) -> dict[str, JsonValue]:
    roles = _roles(svc)
    out: dict[str, JsonValue] = {}
    for name, c in svc.layout.components.items():
        meta = svc.metas.get(name)
        st = svc.cstatus.get(name)
        node = svc.nodes.get(c.node)
        state: str = st.state if st else "unregistered"
        jobid = st.job if st else None
        away = None  # why its node is not online, as its retained status says it
        if node is None or node.state != "online":
            state = "lost" if node else "no node"
            away = svc.lost.said(c.node) if node else svc.lost.not_seen(c.node)
            if jobid not in svc.runners:  # its node's last word, of a job that ended since
                jobid = None  # (an outside run: "lost, job 5" after job 5 had ended ce)
        out[name] = {
            "name": name,
            "driver": c.driver,
            "device": c.device,
            "address": c.address,
            "channel": c.channel,
            "role": roles.get(name),
            "capabilities": list[JsonValue](meta.capabilities) if meta else [],
            "node": c.node,
            "state": state,
            # registered on its node: a meta another node announced before the component
            # was moved showed "no node" beside "registered: yes" (a newcomer's tour)
            # and in this run of its node: an online node whose status does not list it
            # has not been configured with it yet, and the meta is its last run's (after
            # `tomato stop; tomato start` on a broker that ran on, start said ready, then
            # status showed `registered: false` for ~0.1 s: a CI run, 1 in 4)
            "registered": bool(
                meta
                and meta.registered
                and meta.node == c.node
                and (node is None or node.state != "online" or name in node.components)
            ),
            "jobid": jobid,
            # (None for a node stopped or lost: its components' retained status said
            # why, `tomato status components` did not: a review)
            "error": away
            or (meta.error if meta else None)
            or (st.error if st else None)
            or svc.unheard_of(name),
        }
    return out


#: what a driver setting's value reads as to a login that is not an admin
HIDDEN = "(hidden: admins only)"


def _drivers(svc: SchedulerService, settings_shown: bool) -> dict[str, JsonValue]:
    """Tomato's Driver objects; ``settings_shown``: False for a login that is not an
    admin, which sees each setting's name only (they may hold an instrument's password:
    every reader read them, a hostile tour)."""
    drivers: dict[str, Any] = {}
    for c in svc.layout.components.values():
        d = drivers.setdefault(
            c.driver,
            {
                "name": c.driver,
                "version": None,
                # tomato runs a process per driver; here drivers live in the nodes
                "port": None,
                "pid": None,
                "spawned_at": None,
                "connected_at": None,
                "settings": {},
                "nodes": {},
            },
        )
        held = svc.settings.drivers.get(c.driver, {})
        d["settings"] = held if settings_shown else {str(k): HIDDEN for k in held}
        node = svc.nodes.get(c.node)
        info = node.drivers.get(c.driver) if node else None
        if c.node not in d["nodes"]:  # (once a node: a broken component's error is kept)
            d["nodes"][c.node] = (
                info.model_dump(mode="json", by_alias=True)
                if info
                else {"loaded": False, "error": "node not online" if not node else None}
            )
        if info and info.version and d["version"] is None:
            d["version"] = info.version
        meta = svc.metas.get(c.name)
        if info and meta and meta.node == c.node and (meta.error or "").startswith(BROKEN_DRIVER):
            # its code failed a component of it: `tomato status drivers` showed the driver
            # loaded, no error (a driver author's tour); the first such component says why
            here = d["nodes"][c.node]
            if not here.get("error"):
                here["error"] = f"component {c.name}: {meta.error}"
    return drivers


def _nodes_away(svc: SchedulerService) -> dict[str, str]:
    """node -> its state, of the nodes that host components and are not online, or were
    not seen (`tomato status` said "online / running / queued" with a remote node lost:
    an admin's tour)."""
    hosting = {c.node for c in svc.layout.components.values()}
    away = {
        n: str(st.state)
        for n, st in svc.nodes.items()
        if st.state != "online" and n in hosting  # (not one the devices file dropped)
    }
    away |= {n: "not seen" for n in hosting - set(svc.nodes)}
    return dict(sorted(away.items()))


def status_section(
    svc: SchedulerService, store: StateStore, what: str, settings_shown: bool = True
) -> Result:
    """The reply of ``status`` for one section (see ``wire.commands.StatusData``).

    Shaped as tomato 2.2's replies: a section is a name -> object mapping, and the
    scheduler's own status carries tomato's Daemon fields (``status``, ``port``,
    ``appdir``, ``pips``, ``devs``, ``drvs``, ``cmps``) next to ours.
    """
    match what:
        case "scheduler":
            pres = svc._presence("online")
            data: Any = pres.model_dump(mode="json", by_alias=True)
            data["datadir"] = str(svc.settings.datadir)
            # where the services log (an admin could not find them: a start without -L
            # logged to the default folder, and status named every folder but that one)
            data["logdir"] = str(svc.settings.logdir)
            data["devices_file"] = str(svc.settings.devices_file)
            # the recorder's store too: `tomato status` named the state file's faults only
            data["recorder"], data["recorder_storage_error"] = svc.presence_view.recorder_view()
            data["node_storage_errors"] = {
                n: st.spool_error for n, st in svc.nodes.items() if st.spool_error
            }
            data["nodes_away"] = _nodes_away(svc)
            data["status"] = "running"
            data["port"] = svc.settings.mqtt.port
            data["appdir"] = str(svc.settings.appdir) if svc.settings.appdir else None
            data["pips"] = _pipelines(svc, store)
            data["devs"] = _devices(svc)
            data["drvs"] = _drivers(svc, settings_shown)
            data["cmps"] = _components(svc)
            return Result(
                f"scheduler of {svc.settings.mqtt.instance} is running "
                f"(pid {os.getpid()}, {pres.jobs_running} job(s) running, "
                f"{pres.jobs_queued} queued)",
                data,
            )
        case "pipelines":
            pips = _pipelines(svc, store)
            return Result(f"{len(pips)} pipeline(s)", pips)
        case "devices":
            devs = _devices(svc)
            return Result(f"{len(devs)} device(s)", devs)
        case "components":
            cmps = _components(svc)
            return Result(f"{len(cmps)} component(s)", cmps)
        case "nodes":
            nodes: dict[str, JsonValue] = {n: svc.presence_view.node_view(n) for n in svc.nodes}
            return Result(f"{len(nodes)} node(s)", nodes)
        case "drivers":
            drvs = _drivers(svc, settings_shown)
            return Result(f"{len(drvs)} driver(s)", drvs)
    raise CommandError(f"unknown status section {what!r}", code="bad_request")
