"""``tomato status <section>``: the scheduler's view of itself, pipelines, devices, …

Read-only: builds the reply data of ``scheduler/cmd/status`` from the scheduler's state.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pydantic import JsonValue

from tomato_mqtt.services.scheduler.store import StateStore
from tomato_mqtt.transport.rpc import CommandError, Result

if TYPE_CHECKING:
    from tomato_mqtt.services.scheduler.service import SchedulerService

__all__ = ["status_section"]


def status_section(svc: SchedulerService, store: StateStore, what: str) -> Result:
    """The reply of ``status`` for one section (see ``wire.commands.StatusData``)."""
    match what:
        case "scheduler":
            pres = svc._presence("online")
            data: Any = pres.model_dump(mode="json", by_alias=True)
            data["datadir"] = str(svc.settings.datadir)
            data["devices_file"] = str(svc.settings.devices_file)
            return Result(
                f"scheduler of {svc.settings.mqtt.instance} is running "
                f"(pid {os.getpid()}, {pres.jobs_running} job(s) running, "
                f"{pres.jobs_queued} queued)",
                data,
            )
        case "pipelines":
            pips: list[JsonValue] = []
            for p in store.pipelines():
                lay = svc.layout.pipelines.get(p.name)
                pips.append(p.model_dump(mode="json") | {"roles": dict(lay.roles) if lay else {}})
            return Result(f"{len(pips)} pipeline(s)", pips)
        case "devices":
            devs: dict[str, Any] = {
                d.name: {
                    "name": d.name,
                    "driver": d.driver,
                    "address": d.address,
                    "channels": list(d.channels),
                    "node": d.node,
                }
                for d in svc.layout.devices.values()
            }
            listed = set(devs)
            for c in svc.layout.components.values():  # (a layout built without devices)
                if c.device in listed:
                    continue
                d = devs.setdefault(
                    c.device,
                    {
                        "name": c.device,
                        "driver": c.driver,
                        "address": c.address,
                        "channels": [],
                        "node": c.node,
                    },
                )
                d["channels"].append(c.channel)
            return Result(f"{len(devs)} device(s)", list(devs.values()))
        case "components":
            out: list[JsonValue] = []
            for name, c in svc.layout.components.items():
                meta = svc.metas.get(name)
                st = svc.cstatus.get(name)
                node = svc.nodes.get(c.node)
                state: str = st.state if st else "unregistered"
                if node is None or node.state != "online":
                    state = "lost" if node else "no node"
                out.append(
                    {
                        "name": name,
                        "device": c.device,
                        "driver": c.driver,
                        "address": c.address,
                        "channel": c.channel,
                        "node": c.node,
                        "state": state,
                        "registered": bool(meta and meta.registered),
                        "capabilities": list[JsonValue](meta.capabilities) if meta else [],
                        "job": st.job if st else None,
                        "error": (meta.error if meta else None) or (st.error if st else None),
                    }
                )
            return Result(f"{len(out)} component(s)", out)
        case "nodes":
            nodes: list[JsonValue] = [svc.presence_view.node_view(n) for n in svc.nodes]
            return Result(f"{len(nodes)} node(s)", nodes)
        case "drivers":
            drivers: dict[str, Any] = {}
            for c in svc.layout.components.values():
                d = drivers.setdefault(c.driver, {"name": c.driver, "nodes": {}, "settings": {}})
                d["settings"] = svc.settings.drivers.get(c.driver, {})
                node = svc.nodes.get(c.node)
                info = node.drivers.get(c.driver) if node else None
                d["nodes"][c.node] = (
                    info.model_dump(mode="json", by_alias=True)
                    if info
                    else {"loaded": False, "error": "node not online" if not node else None}
                )
            return Result(f"{len(drivers)} driver(s)", list(drivers.values()))
    raise CommandError(f"unknown status section {what!r}", code="bad_request")
