"""``passata``: talk to one component directly (status, attrs, get/set, reset, measure).

A pure MQTT client of the node that hosts the component (``component/<c>/cmd/<op>``
and the retained ``component/<c>/meta``, ``/last``); how a component is named and found
is in components.py. This file: the component's state, its tasks and measurements; the
attribute commands (attrs, capabilities, constants, get, set) are in passata_attrs.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import typer

from tomato_mqtt.cli import common, components, passata_attrs
from tomato_mqtt.cli.components import ComponentArg, ForceOpt, Refused
from tomato_mqtt.cli.version import add_version
from tomato_mqtt.transport.rpc import Requester
from tomato_mqtt.wire.messages import DecodeError, LastPoint, Reply, decode

__all__ = ["app", "main"]

app = typer.Typer(
    name="passata",
    help="Inspect and drive one component of a tomato-mqtt stack directly.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
add_version(app)


@app.command()
@common.options(common.CLIENT)
def status(component: ComponentArg, opts: common.Opts) -> None:
    """The component's state: idle / running / error, its job and task, status attrs."""
    components.run(component, components.cmd("status", {}, opts.timeout), _status_human, opts)


@app.command()
@common.options(common.CLIENT, timeout=10.0)
def reset(component: ComponentArg, force: ForceOpt = False, *, opts: common.Opts) -> None:
    """Reset the component; refused while a task runs unless --force (which stops it)."""
    op = components.cmd("reset", {"force": force}, opts.timeout)
    components.run(component, op, components.message, opts)


@app.command()
@common.options(common.CLIENT, timeout=10.0)
def register(component: ComponentArg, opts: common.Opts) -> None:
    """Register the component with its driver again (e.g. after re-plugging)."""
    op = components.cmd("register", {}, opts.timeout)
    components.run(component, op, components.message, opts)


@app.command()
@common.options(common.CLIENT)
def measure(component: ComponentArg, opts: common.Opts) -> None:
    """Take one measurement now (outside any task)."""
    op = components.cmd("measure", {}, opts.timeout)
    components.run(component, op, _point_human, opts)


@app.command()
@common.options(common.CLIENT)
def last(component: ComponentArg, opts: common.Opts) -> None:
    """The latest point the component published (retained, also when idle)."""

    async def call(req: Requester, name: str) -> Reply:
        topic = req.topics.component_last(name)
        raw = await components.retained(req, topic, min(opts.timeout, components.RETAINED_WAIT))
        if raw is None:
            raise Refused(f"{name} has published no point yet (nothing retained on {topic})")
        try:
            point = decode(LastPoint, raw, topic)
        except DecodeError as e:
            raise Refused(str(e)) from None
        data = point.model_dump(mode="json", exclude={"schema_"})
        return Reply(id="", success=True, msg=f"last point of {name}", data=data)

    components.run(component, call, _point_human, opts)


# -- human output --------------------------------------------------------------------------
def _status_human(msg: str, data: Any) -> str:
    if not isinstance(data, Mapping):
        return msg
    fields: dict[str, Any] = {
        "component": data.get("name"),
        "node": data.get("node"),
        "state": data.get("state"),
        "job": data.get("jobid", data.get("job")),
        "task": data.get("task"),
        "technique": data.get("technique"),
        "started": components.when(data.get("started_at")) if data.get("started_at") else None,
        "attrs": data.get("attrs") or None,
        "error": data.get("error"),
    }
    last = data.get("last_task")
    if isinstance(last, Mapping):
        fields["last task"] = (
            f"job {last.get('jobid', last.get('job'))} task {last.get('task')}: "
            f"{last.get('reason')}, "
            f"{last.get('npoints')} point(s)"
        )
    return components.kv({k: v for k, v in fields.items() if v is not None})


def _point_human(msg: str, data: Any) -> str:
    if not isinstance(data, Mapping):
        return msg
    units = data.get("units") if isinstance(data.get("units"), Mapping) else {}
    values = data.get("vars", data.get("values"))  # LastPoint: "vars" since schema 2
    values = values if isinstance(values, Mapping) else {}
    out: dict[str, Any] = {"time": components.when(data.get("uts"))}
    for k, v in (values or {}).items():
        u = (units or {}).get(k)
        out[k] = f"{v} {u}" if u else v
    job = data.get("jobid", data.get("job"))
    if job is not None:
        out["job"] = f"{job} (task {data.get('task')})"
    return components.kv(out)


app.add_typer(passata_attrs.app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
