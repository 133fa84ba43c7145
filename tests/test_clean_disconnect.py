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
from collections.abc import AsyncIterator

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


class _SlowAcks:
    """A TCP relay to the broker that hands the client what the broker sends
    ``delay`` s late (in order), and notes when each packet passed: PUBACKs toward the
    client, the DISCONNECT from it."""

    def __init__(self, port: int, delay: float) -> None:
        self.port, self.delay = port, delay
        self.pubacks: list[float] = []  # when each PUBACK was handed to the client
        self.disconnect: float | None = None  # when the client's DISCONNECT came
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _relay(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        br, bw = await asyncio.open_connection("127.0.0.1", self.port)

        async def up() -> None:  # client -> broker, at once
            async for kind, packet in _packets(cr):
                if kind == 14:
                    self.disconnect = time.monotonic()
                bw.write(packet)
            bw.close()

        later: asyncio.Queue[tuple[float, int, bytes] | None] = asyncio.Queue()

        async def down() -> None:  # broker -> client: read at once, handed on late
            async for kind, packet in _packets(br):
                later.put_nowait((time.monotonic() + self.delay, kind, packet))
            later.put_nowait(None)

        async def hand_on() -> None:  # each packet `delay` after it came, in order
            while (item := await later.get()) is not None:
                due, kind, packet = item
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                cw.write(packet)
                await cw.drain()
                if kind == 4:
                    self.pubacks.append(time.monotonic())
            cw.close()

        with contextlib.suppress(Exception):
            await asyncio.gather(up(), down(), hand_on())


async def _packets(r: asyncio.StreamReader) -> AsyncIterator[tuple[int, bytes]]:
    """(type, bytes) of each MQTT packet read from ``r`` until it ends."""
    while True:
        try:
            head = await r.readexactly(1)
            size, shift, raw = 0, 0, b""
            while True:  # the remaining length: 1-4 bytes, 7 bits each
                b = await r.readexactly(1)
                raw += b
                size |= (b[0] & 0x7F) << shift
                shift += 7
                if not b[0] & 0x80:
                    break
            body = await r.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        yield head[0] >> 4, head + raw + body


async def test_a_disconnect_waits_for_the_acks_of_what_was_published(
    broker: RunningBroker, instance: str
) -> None:
    """A node that stops publishes its components' `lost` statuses (QoS 1) and
    disconnects: amqtt on Python 3.13 dropped those not acknowledged yet when the
    DISCONNECT came (1 of 4 arrived). The DISCONNECT now leaves once the broker has
    acknowledged them (at most DISCONNECT_ACK_WAIT): here, acknowledgements that reach
    the client 0.3 s late, which on any Python show whether it waited."""
    relay = _SlowAcks(broker.port, delay=0.3)
    port = await relay.start()
    c = AsyncClient(f"mqtt://127.0.0.1:{port}", client_id=f"{instance}-acks", reconnect=False)
    try:
        await c.connect()
        for i in range(4):
            await c.publish(f"{instance}/c{i}/status", b"lost", qos=1, retain=True, wait=False)
        await c.disconnect()
        assert relay.disconnect is not None
        assert len(relay.pubacks) == 4, relay.pubacks
        # every acknowledgement reached the client before its DISCONNECT left it
        assert max(relay.pubacks) <= relay.disconnect, (relay.pubacks, relay.disconnect)
    finally:
        assert relay.server is not None
        relay.server.close()
