"""``passata``: talk to one component directly (status, attrs, get/set, reset, measure).

A pure MQTT client of the node that hosts the component (``component/<c>/cmd/<op>``
and the retained ``component/<c>/meta``, ``/last``); how a component is named and found
is in components.py. This file: the component's state, its tasks and measurements; the
attribute commands (attrs, capabilities, constants, get, set) are in passata_attrs.py.
"""

from __future__ import annotations

import typer

from tomato_mqtt.cli import common, components, passata_attrs, passata_core
from tomato_mqtt.cli.components import ComponentArg, ForceOpt, Refused
from tomato_mqtt.cli.version import add_version
from tomato_mqtt.transport.rpc import Requester
from tomato_mqtt.wire.messages import DecodeError, LastPoint, Reply, decode

__all__ = ["app", "main"]

app = typer.Typer(
    cls=common.CommandFirst,
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
    passata_core.run_cmd(component, "status", {}, passata_core.status_human, opts)


@app.command()
@common.options(common.CLIENT, timeout=10.0)
def reset(component: ComponentArg, force: ForceOpt = False, *, opts: common.Opts) -> None:
    """Reset the component; refused while a task runs unless --force (which stops it)."""
    passata_core.run_cmd(component, "reset", {"force": force}, passata_core.message, opts)


@app.command()
@common.options(common.CLIENT, timeout=10.0)
def register(component: ComponentArg, opts: common.Opts) -> None:
    """Register the component with its driver again (e.g. after re-plugging)."""
    passata_core.run_cmd(component, "register", {}, passata_core.message, opts)


@app.command()
@common.options(common.CLIENT)
def measure(component: ComponentArg, opts: common.Opts) -> None:
    """Take one measurement now (outside any task)."""
    passata_core.run_cmd(component, "measure", {}, passata_core.point_human, opts)


@app.command()
@common.options(common.CLIENT)
def last(component: ComponentArg, opts: common.Opts) -> None:
    """The latest point the component published (retained, also when idle)."""

    async def call(req: Requester, name: str) -> Reply:
        topic = req.topics.component_last(name)
        raw = await components.retained(req, topic, min(opts.timeout, components.RETAINED_WAIT))
        if raw is None:
            # (said "no point yet" of one that measured before the stack restarted: the
            # embedded broker keeps no retained message across its restart, a tour)
            away = components.NODE_AWAY.get()  # (measure needs the node: said why not)
            raise Refused(
                f"{name} has no point retained on {topic}: none since the broker and its node"
                " last started" + (f" — {away}" if away else " (`passata measure` takes one now)")
            )
        try:
            point = decode(LastPoint, raw, topic)
        except DecodeError as e:
            raise Refused(str(e)) from None
        data = point.model_dump(mode="json", exclude={"schema_"})
        return Reply(id="", success=True, msg=f"last point of {name}", data=data)

    components.run(component, call, passata_core.point_human, opts, asks_node=False)


app.add_typer(passata_attrs.app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
