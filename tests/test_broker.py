"""The embedded broker: retained messages reach only clients that subscribed to them."""

from __future__ import annotations

from tests.conftest import RunningBroker
from tomato_mqtt.transport.client import AsyncClient, Message


async def test_retained_messages_do_not_leak_to_other_clients(
    broker: RunningBroker, instance: str
) -> None:
    root = f"tomato/v2/{instance}"
    async with AsyncClient(broker.url) as a:
        # someone subscribed to the private status topics, and one is retained
        await a.subscribe(f"{root}/private/#", handler=lambda m: None)
        await a.publish(f"{root}/private/status", b"secret", retain=True)
        got: list[Message] = []
        async with AsyncClient(broker.url) as b:
            await b.subscribe(f"{root}/public/#")  # no handler: everything goes to the stream
            # the broker sends connect-time retained messages before it handles this
            await a.publish(f"{root}/public/ping", b"x")
            while not got or not got[-1].topic.endswith("/public/ping"):
                got.append(await b.next_message(5))
        assert [m.topic for m in got] == [f"{root}/public/ping"], [m.topic for m in got]
        # a client that does subscribe still gets the retained message
        async with AsyncClient(broker.url) as c:
            await c.subscribe(f"{root}/private/#")
            msg = await c.next_message(5)
            assert (msg.topic, msg.payload) == (f"{root}/private/status", b"secret")
