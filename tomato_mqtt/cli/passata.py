"""``passata``: talk to one component directly (status, attrs, get/set, reset, measure).

A pure MQTT client of the node that hosts the component (``component/<c>/cmd/<op>``
and the retained ``component/<c>/meta``, ``/last``). A component is named as in tomato,
``driver:(address,channel)``, or as ``device/channel``; the latter is resolved through
the scheduler's list of components, or, without a scheduler, the retained metas.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from tomato_mqtt.cli import common
from tomato_mqtt.cli.common import (
    AppDirOpt,
    BrokerOpt,
    InstanceOpt,
    JsonOpt,
    Output,
    PortOpt,
    TimeoutOpt,
    YamlOpt,
)
from tomato_mqtt.transport.client import Message
from tomato_mqtt.transport.rpc import NoResponder, Requester
from tomato_mqtt.wire.messages import ComponentMeta, DecodeError, LastPoint, Reply, decode
from tomato_mqtt.wire.topics import slug

__all__ = ["app", "main"]

app = typer.Typer(
    name="passata",
    help="Inspect and drive one component of a tomato-mqtt stack directly.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ComponentArg = Annotated[
    str,
    typer.Argument(help="component: 'driver:(address,channel)' or 'device/channel'"),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="also while a task runs")]

# how long to wait for a retained message that should be there
RETAINED_WAIT = 2.0
# the scheduler normally answers in milliseconds; without one, fall back to the metas
SCHEDULER_WAIT = 1.5


class _Refused(Exception):
    """A problem found on this side (unknown component, nothing retained)."""


Op = Callable[[Requester, str], Awaitable[Reply]]


def _run(
    component: str,
    op: Op,
    human: Callable[[str, Any], str],
    port: int | None,
    broker: str | None,
    instance: str | None,
    appdir: Path | None,
    timeout: float,
    yaml_: bool,
    json_: bool,
) -> None:
    """Resolve the component, run ``op`` on it, print the Reply, exit 0 or 1."""
    ctx = common.context(port=port, broker=broker, instance=instance, appdir=appdir)

    async def go(req: Requester) -> Reply:
        try:
            name = await resolve(req, component, timeout)
            return await op(req, name)
        except _Refused as e:
            return Reply(id="", success=False, msg=str(e))

    reply = common.run_async(ctx, go, timeout)
    Output(yaml_, json_).reply(reply, lambda data: human(reply.msg, data))


def _cmd(op: str, args: Mapping[str, Any], timeout: float) -> Op:
    async def call(req: Requester, name: str) -> Reply:
        return await req.request(
            req.topics.component_cmd(name, op),
            dict(args),
            timeout=timeout,
            who=f"node hosting {name}",
        )

    return call


# -- resolving names -----------------------------------------------------------------------
def _is_full_name(name: str) -> bool:
    return ":(" in name and name.endswith(")")


def _pick(want: str, comps: Sequence[Mapping[str, Any]]) -> str | None:
    """The full name of the component ``want`` names, among the known ones."""
    for c in comps:
        if want == c.get("name"):
            return str(c["name"])
    for c in comps:
        if want == f"{c.get('device')}/{c.get('channel')}" or want == slug(str(c.get("name"))):
            return str(c["name"])
    of_device = [c for c in comps if c.get("device") == want]
    if len(of_device) == 1:
        return str(of_device[0]["name"])
    return None


def _known(comps: Sequence[Mapping[str, Any]]) -> str:
    names = sorted(f"{c.get('device')}/{c.get('channel')} = {c.get('name')}" for c in comps)
    return "; ".join(names) or "none"


async def resolve(req: Requester, want: str, timeout: float) -> str:
    """The full component name for ``want`` (full name, device/channel, or slug)."""
    topics = req.topics
    try:
        r = await req.request(
            topics.scheduler_cmd("status"),
            {"what": "components"},
            timeout=min(timeout, SCHEDULER_WAIT),
            who="scheduler",
        )
    except NoResponder:
        r = None
    if r is not None and r.success and isinstance(r.data, list):
        comps = [c for c in r.data if isinstance(c, Mapping)]
        name = _pick(want, comps)
        if name is None:
            raise _Refused(f"unknown component {want!r} (known: {_known(comps)})")
        return name
    if _is_full_name(want):
        return want
    # no scheduler: find it among the components the nodes have announced
    metas: list[Mapping[str, Any]] = []
    found: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_meta(msg: Message) -> None:
        try:
            meta = decode(ComponentMeta, msg.payload, msg.topic)
        except DecodeError:
            return
        metas.append(meta.model_dump())
        name = _pick(want, metas)
        if name is not None and not found.done():
            found.set_result(name)

    flt = topics.all_component_meta()
    await req.client.subscribe(flt, handler=on_meta)
    try:
        return await asyncio.wait_for(found, min(timeout, RETAINED_WAIT))
    except asyncio.TimeoutError:
        raise _Refused(
            f"unknown component {want!r}: no scheduler answered and no node has announced "
            f"it (announced: {_known(metas)})"
        ) from None
    finally:
        with contextlib.suppress(Exception):
            await req.client.unsubscribe(flt)


async def _retained(req: Requester, topic: str, wait: float) -> bytes | None:
    """The retained message on ``topic``, or None when nothing comes within ``wait``."""
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def on_msg(msg: Message) -> None:
        if msg.payload and not got.done():
            got.set_result(msg.payload)

    await req.client.subscribe(topic, handler=on_msg)
    try:
        return await asyncio.wait_for(got, wait)
    except asyncio.TimeoutError:
        return None
    finally:
        with contextlib.suppress(Exception):
            await req.client.unsubscribe(topic)


async def _meta(req: Requester, name: str, timeout: float) -> ComponentMeta:
    topic = req.topics.component_meta(name)
    raw = await _retained(req, topic, min(timeout, RETAINED_WAIT))
    if raw is None:
        raise _Refused(f"no node has announced component {name} (nothing retained on {topic})")
    try:
        return decode(ComponentMeta, raw, topic)
    except DecodeError as e:
        raise _Refused(str(e)) from None


def _meta_op(pick: Callable[[ComponentMeta], Any], what: str, timeout: float) -> Op:
    async def call(req: Requester, name: str) -> Reply:
        meta = await _meta(req, name, timeout)
        msg = f"{what} of {name}"
        if not meta.registered:
            msg += f" (not registered: {meta.error})" if meta.error else " (not registered)"
        return Reply(id="", success=True, msg=msg, data=pick(meta))

    return call


# -- human output --------------------------------------------------------------------------
def _msg(msg: str, _data: Any) -> str:
    return msg


def _kv(data: Mapping[str, Any], indent: str = "") -> str:
    width = max((len(str(k)) for k in data), default=0) + 1
    return "\n".join(f"{indent}{str(k) + ':':<{width}} {_show(v)}" for k, v in data.items())


def _show(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, Mapping):
        return ", ".join(f"{k}={_show(x)}" for k, x in v.items()) or "-"
    if isinstance(v, list):
        return ", ".join(_show(x) for x in v) or "-"
    return str(v)


def _when(uts: Any) -> str:
    if not isinstance(uts, int | float):
        return "-"
    t = datetime.datetime.fromtimestamp(uts).astimezone()
    return t.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _status_human(msg: str, data: Any) -> str:
    if not isinstance(data, Mapping):
        return msg
    fields: dict[str, Any] = {
        "component": data.get("name"),
        "node": data.get("node"),
        "state": data.get("state"),
        "job": data.get("job"),
        "task": data.get("task"),
        "technique": data.get("technique"),
        "started": _when(data.get("started_at")) if data.get("started_at") else None,
        "attrs": data.get("attrs") or None,
        "error": data.get("error"),
    }
    last = data.get("last_task")
    if isinstance(last, Mapping):
        fields["last task"] = (
            f"job {last.get('job')} task {last.get('task')}: {last.get('reason')}, "
            f"{last.get('npoints')} point(s)"
        )
    return _kv({k: v for k, v in fields.items() if v is not None})


def _attrs_human(msg: str, data: Any) -> str:
    if not isinstance(data, Mapping) or not data:
        return f"{msg}: none"
    rows = [{"attr": k, **v} for k, v in data.items() if isinstance(v, Mapping)]
    cols = [
        ("attr", "attr"),
        ("type", "type"),
        ("units", "units"),
        ("rw", "rw"),
        ("minimum", "min"),
        ("maximum", "max"),
        ("options", "options"),
    ]
    if any("value" in r for r in rows):
        cols.append(("value", "value"))
    return common.table(rows, cols)


def _list_human(msg: str, data: Any) -> str:
    if not data:
        return f"{msg}: none"
    return "\n".join(str(x) for x in data)


def _dict_human(msg: str, data: Any) -> str:
    if not isinstance(data, Mapping) or not data:
        return f"{msg}: none"
    return _kv(data)


def _point_human(msg: str, data: Any) -> str:
    if not isinstance(data, Mapping):
        return msg
    units = data.get("units") if isinstance(data.get("units"), Mapping) else {}
    values = data.get("values") if isinstance(data.get("values"), Mapping) else {}
    out: dict[str, Any] = {"time": _when(data.get("uts"))}
    for k, v in (values or {}).items():
        u = (units or {}).get(k)
        out[k] = f"{v} {u}" if u else v
    if data.get("job") is not None:
        out["job"] = f"{data['job']} (task {data.get('task')})"
    return _kv(out)


# -- commands ------------------------------------------------------------------------------
@app.command()
def status(
    component: ComponentArg,
    port: PortOpt = None,
    broker: BrokerOpt = None,
    instance: InstanceOpt = None,
    appdir: AppDirOpt = None,
    timeout: TimeoutOpt = 5.0,
    yaml_: YamlOpt = False,
    json_: JsonOpt = False,
) -> None:
    """The component's state: idle / running / error, its job and task, status attrs."""
    _run(
        component,
        _cmd("status", {}, timeout),
        _status_human,
        port,
        broker,
        instance,
        appdir,
        timeout,
        yaml_,
        json_,
    )


@app.command()
def attrs(
    component: ComponentArg,
    port: PortOpt = None,
    broker: BrokerOpt = None,
    instance: InstanceOpt = None,
    appdir: AppDirOpt = None,
    timeout: TimeoutOpt = 5.0,
    yaml_: YamlOpt = False,
    json_: JsonOpt = False,
) -> None:
    """The component's attributes: type, units, read/write, limits, options, value."""

    async def call(req: Requester, name: str) -> Reply:
        meta = await _meta(req, name, timeout)
        data: dict[str, Any] = {
            k: v.model_dump(mode="json", exclude_none=True) for k, v in meta.attrs.items()
        }
        if meta.registered and data:
            with contextlib.suppress(NoResponder):
                r = await _cmd("get_attr", {"attrs": sorted(data)}, timeout)(req, name)
                if r.success and isinstance(r.data, dict):
                    for k, v in r.data.items():
                        if k in data:
                            data[k]["value"] = v
        return Reply(id="", success=True, msg=f"{len(data)} attr(s) of {name}", data=data)

    _run(component, call, _attrs_human, port, broker, instance, appdir, timeout, yaml_, json_)


@app.command()
def capabilities(
    component: ComponentArg,
    port: PortOpt = None,
    broker: BrokerOpt = None,
    instance: InstanceOpt = None,
    appdir: AppDirOpt = None,
    timeout: TimeoutOpt = 5.0,
    yaml_: YamlOpt = False,
    json_: JsonOpt = False,
) -> None:
    """The techniques the component can run."""
    op = _meta_op(lambda m: sorted(m.capabilities), "capabilities", timeout)
    _run(component, op, _list_human, port, broker, instance, appdir, timeout, yaml_, json_)


@app.command()
def constants(
    component: ComponentArg,
    port: PortOpt = None,
    broker: BrokerOpt = None,
    instance: InstanceOpt = None,
    appdir: AppDirOpt = None,
    timeout: TimeoutOpt = 5.0,
    yaml_: YamlOpt = False,
    json_: JsonOpt = False,
) -> None:
    """The component's constants (fixed facts the driver reports)."""
    op = _meta_op(lambda m: dict(m.constants), "constants", timeout)
    _run(component, op, _dict_human, port, broker, instance, appdir, timeout, yaml_, json_)


@app.command()
def get(
    component: ComponentArg,
    names: Annotated[list[str], typer.Argument(metavar="ATTRS...", help="attribute names")],
    port: PortOpt = None,
    broker: BrokerOpt = None,
    instance: InstanceOpt = None,
    appdir: AppDirOpt = None,
    timeout: TimeoutOpt = 5.0,
    yaml_: YamlOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Read attributes of the component."""
    op = _cmd("get_attr", {"attrs": list(names)}, timeout)
    _run(component, op, _dict_human, port, broker, instance, appdir, timeout, yaml_, json_)


@app.command("set")
def set_(
    component: ComponentArg,
    attr: Annotated[str, typer.Argument(help="attribute name")],
    val: Annotated[str, typer.Argument(help="new value, e.g. 5, red, '1 s'")],
    force: ForceOpt = False,
    port: PortOpt = None,
    broker: BrokerOpt = None,
    instance: InstanceOpt = None,
    appdir: AppDirOpt = None,
    timeout: TimeoutOpt = 5.0,
    yaml_: YamlOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Set an attribute (the driver converts and checks the value); refused while a task
    runs unless --force."""
    op = _cmd("set_attr", {"attr": attr, "val": val, "force": force}, timeout)
    _run(component, op, _msg, port, broker, instance, appdir, timeout, yaml_, json_)


@app.command()
def reset(
    component: ComponentArg,
    force: ForceOpt = False,
    port: PortOpt = None,
    broker: BrokerOpt = None,
    instance: InstanceOpt = None,
    appdir: AppDirOpt = None,
    timeout: TimeoutOpt = 10.0,
    yaml_: YamlOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Reset the component; refused while a task runs unless --force (which stops it)."""
    op = _cmd("reset", {"force": force}, timeout)
    _run(component, op, _msg, port, broker, instance, appdir, timeout, yaml_, json_)


@app.command()
def register(
    component: ComponentArg,
    port: PortOpt = None,
    broker: BrokerOpt = None,
    instance: InstanceOpt = None,
    appdir: AppDirOpt = None,
    timeout: TimeoutOpt = 10.0,
    yaml_: YamlOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Register the component with its driver again (e.g. after re-plugging)."""
    op = _cmd("register", {}, timeout)
    _run(component, op, _msg, port, broker, instance, appdir, timeout, yaml_, json_)


@app.command()
def measure(
    component: ComponentArg,
    port: PortOpt = None,
    broker: BrokerOpt = None,
    instance: InstanceOpt = None,
    appdir: AppDirOpt = None,
    timeout: TimeoutOpt = 5.0,
    yaml_: YamlOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Take one measurement now (outside any task)."""
    op = _cmd("measure", {}, timeout)
    _run(component, op, _point_human, port, broker, instance, appdir, timeout, yaml_, json_)


@app.command()
def last(
    component: ComponentArg,
    port: PortOpt = None,
    broker: BrokerOpt = None,
    instance: InstanceOpt = None,
    appdir: AppDirOpt = None,
    timeout: TimeoutOpt = 5.0,
    yaml_: YamlOpt = False,
    json_: JsonOpt = False,
) -> None:
    """The latest point the component published (retained, also when idle)."""

    async def call(req: Requester, name: str) -> Reply:
        topic = req.topics.component_last(name)
        raw = await _retained(req, topic, min(timeout, RETAINED_WAIT))
        if raw is None:
            raise _Refused(f"{name} has published no point yet (nothing retained on {topic})")
        try:
            point = decode(LastPoint, raw, topic)
        except DecodeError as e:
            raise _Refused(str(e)) from None
        data = point.model_dump(mode="json", exclude={"schema_"})
        return Reply(id="", success=True, msg=f"last point of {name}", data=data)

    _run(component, call, _point_human, port, broker, instance, appdir, timeout, yaml_, json_)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
