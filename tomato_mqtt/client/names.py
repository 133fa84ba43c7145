"""Naming a component as ``passata`` does: the full name, ``device/channel``, or a slug.

A component's full name is tomato's ``driver:(address,channel)``; people know it as
``device/channel`` (``dev-counter/1``), and topics carry its slug. :func:`resolve` maps
any of these to the full name through the scheduler's list of components (``status
components``), or, when no scheduler answers, through the retained metas the nodes
publish; a name that matches no component is refused at once with the known ones
(:class:`UnknownComponent`), instead of a request that nobody answers.

The matching itself is :mod:`tomato_mqtt.wire.names` (pure and light: the CLI's
one-shot path uses it too); this module asks the stack.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tomato_mqtt.wire.names import (
    RETAINED_WAIT,
    SCHEDULER_WAIT,
    UnknownComponent,
    announced_meta,
    from_scheduler,
    not_announced,
    nothing_on,
    pick,
)

if TYPE_CHECKING:
    from tomato_mqtt.transport.rpc import Requester

__all__ = ["UnknownComponent", "resolve"]


async def resolve(
    req: Requester,
    want: str,
    timeout: float,
    announced: Sequence[Mapping[str, Any]] | None = None,
    listed: list[Any] | None = None,
) -> str:
    """The full name of the component ``want`` names (see the module docstring), asked
    over ``req``'s connection; :class:`UnknownComponent` when there is none.

    ``announced``: the metas a subscriber of them already holds (the dashboard), used
    without a scheduler instead of subscribing to them again (a second subscription to
    the same filter would replace, then remove, the subscriber's own). ``listed`` gets
    the scheduler's list of components (its Reply) when it answered."""
    # asyncio and the transport here, not at the top: the pure part above stays light
    import asyncio
    import contextlib

    from tomato_mqtt.transport.client import Message
    from tomato_mqtt.transport.rpc import NoResponder
    from tomato_mqtt.waits import wait_for

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
    if r is not None and listed is not None:
        listed.append(r)
    name = from_scheduler(want, r)
    if name is not None:
        return name
    # no scheduler: find it among the components the nodes have announced
    if announced is not None:
        name = pick(want, announced)
        if name is None:
            if not announced:
                raise NoResponder(nothing_on(topics.instance), topics.scheduler_cmd("status"))
            raise not_announced(want, announced)
        return name
    metas: list[Mapping[str, Any]] = []
    found: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_meta(msg: Message) -> None:  # paho's callback, on this loop: hand over only
        meta = announced_meta(msg.payload)
        if meta is None:
            return
        metas.append(meta)
        name = pick(want, metas)
        if name is not None and not found.done():
            found.set_result(name)

    flt = topics.all_component_meta()
    await req.client.subscribe(flt, handler=on_meta)
    try:
        return await wait_for(found, min(timeout, RETAINED_WAIT))
    except asyncio.TimeoutError:
        if not metas:  # nothing at all on this instance: not a wrong name
            raise NoResponder(nothing_on(topics.instance), topics.scheduler_cmd("status")) from None
        raise not_announced(want, metas) from None
    finally:
        with contextlib.suppress(Exception):
            await req.client.unsubscribe(flt, handler=on_meta)
