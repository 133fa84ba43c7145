"""A clean disconnect is clean even while messages pour in: no last will after it.

A service stops by publishing ``offline`` (retained) and disconnecting; its last will
(``lost``) must not follow. Closing a TCP socket that still holds unread incoming data
sends a RST instead of a FIN, and a broker that gets the RST before it has read the
DISCONNECT drops it unread and publishes the will: ``tomato stop`` then showed the
scheduler ``lost`` after ``offline`` (seen under load: the nodes' last statuses arrive
at the scheduler while it disconnects). The client now half-closes after DISCONNECT and
waits for the broker to close.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from tests.conftest import RunningBroker
from tomato_mqtt.transport.client import AsyncClient, Will


async def test_no_last_will_after_a_disconnect_with_unread_messages(
    broker: RunningBroker, instance: str
) -> None:
    status, busy = f"{instance}/svc/status", f"{instance}/busy"
    flooder = AsyncClient(broker.url, client_id=f"{instance}-flood")
    watcher = AsyncClient(broker.url, client_id=f"{instance}-watch")
    await flooder.connect()
    await watcher.connect()
    stop = asyncio.Event()

    async def flood() -> None:  # a steady stream the service never reads fast enough
        while not stop.is_set():
            for _ in range(10):
                await flooder.publish(busy, b"x" * 200, qos=0, wait=False)
            await asyncio.sleep(0.002)

    flooding = asyncio.ensure_future(flood())
    try:
        for attempt in range(5):
            svc = AsyncClient(
                broker.url,
                client_id=f"{instance}-svc",
                will=Will(status, b"lost", retain=True),
                reconnect=False,
            )
            await svc.connect()
            await svc.subscribe(busy, handler=lambda _m: None)
            await svc.publish(status, b"offline", retain=True)
            time.sleep(0.05)  # the loop is busy: messages wait unread in the socket
            await svc.disconnect()
            await asyncio.sleep(0.3)  # a will would be published by now
            await watcher.subscribe(status)
            got = await watcher.next_message(5.0)
            await watcher.unsubscribe(status)
            assert got.payload == b"offline", f"attempt {attempt}: the will followed"
            while watcher.take_message() is not None:
                pass
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await flooding
        await flooder.disconnect()
        await watcher.disconnect()
