"""Forgetting one request's unacknowledged publishes, not every one of the client.

A broker that closes the connection of a publish its rules forbid (Aedes) would close every
new connection too while paho sends that publish again at each reconnect: the client
library forgets it (``AsyncClient.drop_unacknowledged``). It forgot every unacknowledged
publish of the client, so a request of another thread sharing the client, in flight at that
moment, failed with the forbidden one (session 53's note). Now only the request's own
copies go; here on the embedded broker, behind a relay that swallows what the client sends
(no PUBACK comes) and then cuts the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest

from tests.conftest import RunningBroker
from tests.stack import free_port
from tomato_mqtt.transport.client import AsyncClient, Message

pytestmark = pytest.mark.timeout(60)


class Relay:
    """A TCP relay to the broker: with ``swallow`` set, what a client sends goes nowhere;
    :meth:`cut` closes every connection it carries."""

    def __init__(self, port: int) -> None:
        self.port = free_port()
        self.to = port
        self.swallow = False
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        br, bw = await asyncio.open_connection("127.0.0.1", self.to)
        self.writers += [w, bw]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    if not (up and self.swallow):
                        dst.write(data)
                        await dst.drain()
            dst.close()

        await asyncio.gather(pipe(r, bw, True), pipe(br, w, False))

    def cut(self) -> None:
        for w in self.writers:
            w.close()
        self.writers.clear()

    async def stop(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


async def test_one_request_s_publishes_are_forgotten_and_the_others_sent_again(
    broker: RunningBroker, instance: str
) -> None:
    relay = Relay(broker.port)
    await relay.start()
    got: asyncio.Queue[Message] = asyncio.Queue()
    watcher = AsyncClient(broker.url, client_id=f"watch-{uuid.uuid4().hex[:6]}")
    c = AsyncClient(f"mqtt://127.0.0.1:{relay.port}", client_id=f"c-{uuid.uuid4().hex[:6]}")
    a, b = f"{instance}/a", f"{instance}/b"
    try:
        await watcher.connect()
        await watcher.subscribe(f"{instance}/#", handler=got.put_nowait)
        await c.connect()
        relay.swallow = True  # sent, never acknowledged: in flight
        await c.publish(a, b"forbidden", wait=False)
        await c.publish(b, b"another thread's request", wait=False)
        await c.publish(a, b"forbidden", wait=False)  # the request's copy (resend)
        await c.publish(a, b"a later request on that topic", wait=False)
        paho = c._paho
        assert paho is not None
        for _ in range(100):  # paho sends from its own step of the loop
            if paho._inflight_messages == 4:
                break
            await asyncio.sleep(0.02)
        assert paho._inflight_messages == 4, paho._inflight_messages

        assert c.drop_unacknowledged(a, b"forbidden") == 2
        # paho's count of what is in flight went down with them: at its limit, later
        # publishes would have waited for PUBACKs that never come
        assert paho._inflight_messages == 2, paho._inflight_messages

        relay.swallow = False
        relay.cut()  # the client connects again and sends what is left, as paho does
        arrived: list[tuple[str, bytes]] = []
        with contextlib.suppress(asyncio.TimeoutError):
            while True:  # the two kept, then a second for a forgotten one that came
                m = await asyncio.wait_for(got.get(), 10 if len(arrived) < 2 else 1)
                arrived.append((m.topic, m.payload))
        assert sorted(arrived) == [
            (a, b"a later request on that topic"),
            (b, b"another thread's request"),
        ], arrived
        # and the client goes on: a publish now is acknowledged
        await c.publish(b, b"after", timeout=10)
        assert (await asyncio.wait_for(got.get(), 10)).payload == b"after"
    finally:
        await c.disconnect()
        await watcher.disconnect()
        await relay.stop()


async def test_without_a_topic_every_unacknowledged_publish_is_forgotten(
    broker: RunningBroker, instance: str
) -> None:
    relay = Relay(broker.port)
    await relay.start()
    c = AsyncClient(f"mqtt://127.0.0.1:{relay.port}", client_id=f"c-{uuid.uuid4().hex[:6]}")
    try:
        await c.connect()
        relay.swallow = True
        waiting = asyncio.ensure_future(c.publish(f"{instance}/x", b"1", timeout=30))
        await c.publish(f"{instance}/y", b"2", wait=False)
        await asyncio.sleep(0.2)
        assert c.drop_unacknowledged() == 2
        assert c._paho is not None and c._paho._inflight_messages == 0
        with pytest.raises(Exception, match="dropped unacknowledged"):
            await asyncio.wait_for(waiting, 5)  # whoever waited for its PUBACK is told
    finally:
        await c.disconnect()
        await relay.stop()
