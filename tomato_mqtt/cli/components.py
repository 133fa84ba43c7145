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
import contextvars
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

import typer

from tomato_mqtt.cli import common
from tomato_mqtt.cli.passata_core import (
    AWAY_WAIT,
    READS,
    RETAINED_WAIT,
    Refused,
    kv,
    message,
    node_away,
    waits_briefly,
    when,
)
from tomato_mqtt.transport.client import Message
from tomato_mqtt.transport.rpc import NoResponder, Requester
from tomato_mqtt.waits import wait_for
from tomato_mqtt.wire.messages import ComponentMeta, DecodeError, Reply, decode

__all__ = [
    "AWAY_WAIT",
    "NODE_AWAY",
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

#: what the scheduler says of the component's node while it is not online ("" while it
#: is, or without a scheduler): set by :func:`run` for its ``op`` (``passata last`` said
#: "`passata measure` takes one now" of a component whose node was never started)
NODE_AWAY: contextvars.ContextVar[str] = contextvars.ContextVar("NODE_AWAY", default="")


def run(
    component: str,
    op: Op,
    human: Callable[[str, Any], str],
    opts: common.Opts,
    asks_node: bool = True,
) -> None:
    """Resolve the component, run ``op`` on it, print the Reply, exit 0 or 1.
    ``asks_node``: ``op`` asks the component's node (not only what is retained), so a
    node the scheduler has as not online is waited for briefly (AWAY_WAIT)."""

    async def go(req: Requester) -> Reply:
        try:
            listed: list[Any] = []
            name = await resolve(req, component, opts.timeout, listed)
            known = listed[0] if listed else None
            away = node_away(known, name)
            NODE_AWAY.set(away if waits_briefly(known, name) else "")
            if not NODE_AWAY.get() or not asks_node:
                return await op(req, name)
            # its node is not online: a short wait, then what the scheduler knows (as
            # passata_core's path over TCP)
            wait = min(opts.timeout, AWAY_WAIT)
            try:
                return await wait_for(op(req, name), wait)
            except (asyncio.TimeoutError, NoResponder) as e:
                raise NoResponder(
                    f"no node hosting {name} answered within {wait:g} s — {away}",
                    e.topic if isinstance(e, NoResponder) else "",  # (denied() reads it)
                ) from None
        except Refused as e:
            return Reply(id="", success=False, msg=str(e))

    reply = common.run_async(opts.context(), go, opts.timeout)
    opts.output().reply(reply, lambda data: human(reply.msg, data))


def cmd(op: str, args: Mapping[str, Any], timeout: float) -> Op:
    async def call(req: Requester, name: str) -> Reply:
        return await req.request(
            req.topics.component_user_cmd(name, op),
            dict(args),
            timeout=timeout,
            who=f"node hosting {name}",
            # a read is sent again while no answer comes, as over TCP (passata_core): one
            # sent while the node restarts is dropped by the broker (nobody subscribes)
            resend=op in READS,
        )

    return call


# -- resolving names -----------------------------------------------------------------------
async def resolve(
    req: Requester, want: str, timeout: float, listed: list[Any] | None = None
) -> str:
    """The full component name for ``want`` (full name, device/channel, or slug): as the
    client library resolves it (``client/names.py``), refused with the known names;
    ``listed`` gets the scheduler's list of components when it answered."""
    from tomato_mqtt.client import names

    try:
        return await names.resolve(req, want, timeout, listed=listed)
    except names.UnknownComponent as e:
        raise Refused(str(e)) from None


async def retained(req: Requester, topic: str, wait: float) -> bytes | None:
    """The retained message on ``topic``, or None when nothing comes within ``wait``."""
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def on_msg(msg: Message) -> None:
        if msg.payload and not got.done():
            got.set_result(msg.payload)

    await req.client.subscribe(topic, handler=on_msg)
    try:
        return await wait_for(got, wait)
    except asyncio.TimeoutError:
        return None
    finally:
        with contextlib.suppress(Exception):
            await req.client.unsubscribe(topic, handler=on_msg)


async def meta(req: Requester, name: str, timeout: float) -> ComponentMeta:
    topic = req.topics.component_meta(name)
    raw = await retained(req, topic, min(timeout, RETAINED_WAIT))
    if raw is None:
        raise Refused(f"no node has announced component {name} (nothing retained on {topic})")
    try:
        return decode(ComponentMeta, raw, topic)
    except DecodeError as e:
        raise Refused(str(e)) from None
