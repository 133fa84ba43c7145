"""What ``passata``'s commands share on the asyncio client: the retained metas and last
points of a component, and the command path over WebSockets.

A component is named as in tomato, ``driver:(address,channel)``, or as
``device/channel``; the latter is resolved through the scheduler's list of components,
or, without a scheduler, the retained metas the nodes publish. The commands that only ask
the component's node run without asyncio or typer (passata_core.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

import typer

from tomato_mqtt.cli import common
from tomato_mqtt.cli.passata_core import (
    RETAINED_WAIT,
    SCHEDULER_WAIT,
    Refused,
    from_scheduler,
    known,
    kv,
    message,
    pick,
    when,
)
from tomato_mqtt.transport.client import Message
from tomato_mqtt.transport.rpc import NoResponder, Requester
from tomato_mqtt.wire.messages import ComponentMeta, DecodeError, Reply, decode

__all__ = [
    "RETAINED_WAIT",
    "ComponentArg",
    "ForceOpt",
    "Op",
    "Refused",
    "cmd",
    "kv",
    "message",
    "meta",
    "resolve",
    "retained",
    "run",
    "when",
]

ComponentArg = Annotated[
    str,
    typer.Argument(help="component: 'driver:(address,channel)' or 'device/channel'"),
]
ForceOpt = Annotated[bool, typer.Option("--force", "-f", help="also while a task runs")]

Op = Callable[[Requester, str], Awaitable[Reply]]


def run(component: str, op: Op, human: Callable[[str, Any], str], opts: common.Opts) -> None:
    """Resolve the component, run ``op`` on it, print the Reply, exit 0 or 1."""

    async def go(req: Requester) -> Reply:
        try:
            name = await resolve(req, component, opts.timeout)
            return await op(req, name)
        except Refused as e:
            return Reply(id="", success=False, msg=str(e))

    reply = common.run_async(opts.context(), go, opts.timeout)
    opts.output().reply(reply, lambda data: human(reply.msg, data))


def cmd(op: str, args: Mapping[str, Any], timeout: float) -> Op:
    async def call(req: Requester, name: str) -> Reply:
        return await req.request(
            req.topics.component_cmd(name, op),
            dict(args),
            timeout=timeout,
            who=f"node hosting {name}",
        )

    return call


# -- resolving names -----------------------------------------------------------------------
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
    name = from_scheduler(want, r)
    if name is not None:
        return name
    # no scheduler: find it among the components the nodes have announced
    metas: list[Mapping[str, Any]] = []
    found: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_meta(msg: Message) -> None:
        try:
            meta = decode(ComponentMeta, msg.payload, msg.topic)
        except DecodeError:
            return
        metas.append(meta.model_dump())
        name = pick(want, metas)
        if name is not None and not found.done():
            found.set_result(name)

    flt = topics.all_component_meta()
    await req.client.subscribe(flt, handler=on_meta)
    try:
        return await asyncio.wait_for(found, min(timeout, RETAINED_WAIT))
    except asyncio.TimeoutError:
        raise Refused(
            f"unknown component {want!r}: no scheduler answered and no node has announced "
            f"it (announced: {known(metas)})"
        ) from None
    finally:
        with contextlib.suppress(Exception):
            await req.client.unsubscribe(flt)


async def retained(req: Requester, topic: str, wait: float) -> bytes | None:
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


async def meta(req: Requester, name: str, timeout: float) -> ComponentMeta:
    topic = req.topics.component_meta(name)
    raw = await retained(req, topic, min(timeout, RETAINED_WAIT))
    if raw is None:
        raise Refused(f"no node has announced component {name} (nothing retained on {topic})")
    try:
        return decode(ComponentMeta, raw, topic)
    except DecodeError as e:
        raise Refused(str(e)) from None
