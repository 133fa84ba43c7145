"""The asyncio MQTT client against the embedded broker: acked pub/sub, reconnect, last will.

The scenarios are plain coroutines taking a broker, so tests/test_mosquitto.py runs the
very same ones against Mosquitto.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import uuid

import pytest

from tests.conftest import RunningBroker
from tomato_mqtt.transport.client import (
    AsyncClient,
    BrokerURL,
    Message,
    MqttError,
    Will,
    topic_matches,
)
from tomato_mqtt.wire.topics import Topics

T = 10.0  # generous upper bound for anything that should take milliseconds


async def next_on(client: AsyncClient, topic: str, timeout: float = T) -> Message:
    """The next message on ``topic`` from the client's stream (others are skipped)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        msg = await client.next_message(max(0.01, deadline - loop.time()))
        if msg.topic == topic:
            return msg


# -- scenarios (also run against Mosquitto) ---------------------------------------------
async def check_pubsub(b: RunningBroker, topics: Topics) -> None:
    topic = topics.component_data("example_counter:(example-addr,1)")
    async with (
        AsyncClient(b.url, client_id=f"{topics.instance}-sub") as sub,
        AsyncClient(b.url, client_id=f"{topics.instance}-pub") as pub,
    ):
        await sub.subscribe(topics.all_component_data())  # returns after the SUBACK
        await pub.publish(topic, b'{"n": 1}', qos=1)  # returns after the PUBACK
        msg = await next_on(sub, topic)
        assert msg.payload == b'{"n": 1}'
        assert msg.qos == 1
        assert not msg.retain

        # retained: a later subscriber gets the current state at once, flagged retained
        status = topics.scheduler_status()
        await pub.publish(status, b'{"state": "online"}', retain=True)
        await sub.subscribe(status)
        msg = await next_on(sub, status)
        assert msg.payload == b'{"state": "online"}'
        async with AsyncClient(b.url, client_id=f"{topics.instance}-late") as late:
            await late.subscribe(status)
            msg = await next_on(late, status)
            assert msg.retain
            assert msg.payload == b'{"state": "online"}'
        await pub.publish(status, b"", retain=True)  # clear the retained message


async def check_reconnect(b: RunningBroker, topics: Topics, client_id: str = "") -> None:
    topic = topics.job_event(1)
    reconnected = asyncio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    async with AsyncClient(
        b.url, client_id=client_id or f"{topics.instance}-sub", on_connect=on_reconnect
    ) as sub:
        await sub.subscribe(topics.all_job_events())
        async with AsyncClient(b.url, client_id=f"{topics.instance}-pub1") as pub:
            await pub.publish(topic, b"before")
            assert (await next_on(sub, topic)).payload == b"before"

        await b.stop()
        # QoS 1 while the broker is away: queued by the client, sent on reconnect, acked
        queued = asyncio.create_task(sub.publish(topics.job_event(2), b"queued", timeout=T))
        await b.start()  # same port
        await asyncio.wait_for(reconnected.wait(), T)
        assert sub.connects == 2
        await queued

        # The subscription is renewed right after the CONNACK; the SUBACK races with a
        # publish from another connection, so publish until it arrives (bounded).
        async with AsyncClient(b.url, client_id=f"{topics.instance}-pub2") as pub:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + T
            while True:
                await pub.publish(topic, b"after")
                try:
                    msg = await next_on(sub, topic, timeout=0.5)
                except MqttError:
                    assert loop.time() < deadline, "no message after the reconnect"
                    continue
                assert msg.payload == b"after"
                break


_WILL_CLIENT = """
import asyncio, sys
from tomato_mqtt.transport.client import AsyncClient, Will

async def main():
    url, topic = sys.argv[1], sys.argv[2]
    will = Will(topic, b'{"state": "lost"}', qos=1, retain=True)
    async with AsyncClient(url, client_id=sys.argv[3], will=will) as c:
        await c.publish(topic, b'{"state": "online"}', retain=True)
        print("ready", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


async def check_last_will(b: RunningBroker, topics: Topics) -> None:
    topic = topics.node_status("instrument-pc")
    async with AsyncClient(b.url, client_id=f"{topics.instance}-watch") as watch:
        await watch.subscribe(topic)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WILL_CLIENT,
            b.url,
            topic,
            f"{topics.instance}-node",
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line.strip() == b"ready"
            assert (await next_on(watch, topic)).payload == b'{"state": "online"}'
            proc.send_signal(signal.SIGKILL)  # no DISCONNECT: the broker must send the will
            await asyncio.wait_for(proc.wait(), T)
            assert (await next_on(watch, topic)).payload == b'{"state": "lost"}'
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    # the will was retained: a newcomer learns that the node is lost
    async with AsyncClient(b.url, client_id=f"{topics.instance}-late") as late:
        await late.subscribe(topic)
        msg = await next_on(late, topic)
        assert msg.retain
        assert msg.payload == b'{"state": "lost"}'
        await late.publish(topic, b"", retain=True)


# -- tests on the embedded broker -----------------------------------------------------------
async def test_publish_subscribe_with_ack(broker: RunningBroker, instance: str) -> None:
    await check_pubsub(broker, Topics(instance))


async def test_reconnect_resubscribes(
    broker: RunningBroker, instance: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "tomato_mqtt.transport.client")
    tail = uuid.uuid4().hex[:16]  # a service's unguessable client id (docs/security.md)
    await check_reconnect(broker, Topics(instance), f"recorder-{instance}-{tail}")
    # its log says the connection went and that it is back (a node's log said "lost …
    # (Unspecified error)" three times and never that it was back: an admin's tour)
    said = [r.getMessage() for r in caplog.records]
    lost = [s for s in said if " lost the connection to " in s]
    assert lost and "(the broker closed it or went away)" in lost[0], said
    assert any(s.endswith(f"connected to {broker.url} again") for s in said), said
    # without the id's tail: logs are readable by other users of the PC, and the tail
    # keeps another login from taking the id over on Mosquitto (a hostile tour)
    assert lost[0].startswith(f"recorder-{instance}-… lost the connection"), lost
    assert not [s for s in said if tail in s], said


async def test_last_will_when_process_is_killed(broker: RunningBroker, instance: str) -> None:
    await check_last_will(broker, Topics(instance))


async def test_handler_subscription_bypasses_the_stream(
    broker: RunningBroker, instance: str
) -> None:
    topics = Topics(instance)
    got: asyncio.Queue[Message] = asyncio.Queue()
    async with AsyncClient(broker.url) as c:
        await c.subscribe(topics.reply("me"), handler=got.put_nowait)
        await c.subscribe(topics.all_job_status())
        await c.publish(topics.reply("me"), b"r")
        await c.publish(topics.job_status(3), b"s")
        assert (await asyncio.wait_for(got.get(), T)).payload == b"r"
        assert (await next_on(c, topics.job_status(3))).payload == b"s"
        assert got.empty()


async def test_connect_to_nothing_fails_clearly(instance: str) -> None:
    from tests.conftest import free_port

    port = free_port()
    with pytest.raises(MqttError, match=f"127.0.0.1:{port}"):
        await AsyncClient(f"mqtt://127.0.0.1:{port}").connect(timeout=2.0)


def test_broker_url_parsing() -> None:
    u = BrokerURL.parse("mqtts://user:p%40ss@broker.lab:8884")
    assert (u.host, u.port, u.tls) == ("broker.lab", 8884, True)
    assert (u.username, u.password) == ("user", "p@ss")
    assert BrokerURL.parse("localhost").port == 1883
    assert BrokerURL.parse("ws://h").transport == "websockets"
    with pytest.raises(ValueError, match="scheme"):
        BrokerURL.parse("http://h")


def test_topic_matches() -> None:
    t = Topics("lab1")
    assert topic_matches(t.all_component_data(), t.component_data("COM3"))
    assert not topic_matches(t.all_component_data(), t.component_last("COM3"))
    assert topic_matches(t.all(), t.job_status(12))


def test_will_is_frozen() -> None:
    w = Will("a/b", b"x")
    assert (w.qos, w.retain) == (1, True)


def test_topic_matches_follows_mqtt_rules() -> None:
    # the pure-Python matcher agrees with paho's on the spec's cases
    import paho.mqtt.client as paho

    cases = [
        ("a/+/c", "a/b/c"),
        ("a/+/c", "a/b/d"),
        ("a/#", "a"),
        ("a/#", "a/b/c"),
        ("#", "a/b"),
        ("+", "a"),
        ("+", "a/b"),
        ("a/+", "a/"),
        ("a/b", "a/b/c"),
        ("+/+", "/a"),
        ("a/b/#", "a/bc"),
    ]
    for f, t in cases:
        assert topic_matches(f, t) == paho.topic_matches_sub(f, t), (f, t)


async def test_a_slow_consumer_drops_only_droppable_messages(
    broker: RunningBroker, instance: str
) -> None:
    """Data (droppable) beyond the bound is dropped and counted; statuses never are."""
    topics = Topics(instance)
    async with (
        AsyncClient(broker.url, max_queued_droppable=5) as c,
        AsyncClient(broker.url) as pub,
    ):
        await c.subscribe(topics.all_component_data(), droppable=True)
        await c.subscribe(topics.all_job_status())
        for i in range(20):
            await pub.publish(topics.component_data("c1"), str(i).encode())
            await pub.publish(topics.job_status(i + 1), str(i).encode())
        # wait until all 40 were received (or dropped) by the slow consumer
        got: list[Message] = []
        while len(got) + c.dropped < 40:
            got.append(await c.next_message(T))
        data = [m for m in got if "/data" in m.topic]
        status = [m for m in got if "/status" in m.topic]
        assert len(status) == 20
        assert len(data) + c.dropped == 20
        assert c.dropped >= 15 - 5  # at most 5 waited at any time, plus those taken meanwhile
        assert [m.payload for m in status] == [str(i).encode() for i in range(20)]


async def test_publishes_nobody_waits_for_leave_nothing_behind(
    broker: RunningBroker, instance: str
) -> None:
    """Found by a soak run (the scheduler 45 -> 80 MB over 1,850 jobs) and tracemalloc: an
    ack of a publish nobody waited for (``wait=False``) left a resolved future behind,
    up to 65,535 per client, and a later message of the same id, after the ids wrapped,
    took that old ack for its own."""
    async with AsyncClient(broker.url, client_id=f"{instance}-quiet") as c:
        for i in range(500):
            await c.publish(f"t/{instance}/x", str(i).encode(), wait=False)
        await c.publish(f"t/{instance}/x", b"last")  # waits: every ack before it came
        await asyncio.sleep(0.2)
        assert c._acks == {}, len(c._acks)


async def check_second_subscription_keeps_qos(broker: RunningBroker, topics: Topics) -> None:
    """A review: a second subscription to a filter at QoS 0 (several per filter since
    b78ae0f) sent SUBSCRIBE at QoS 0, which MQTT 3.1.1 makes the filter's new QoS
    (Mosquitto does; amqtt keeps the first): the first one's QoS 1 messages came at QoS
    0. The filter is subscribed at the highest QoS any of its subscriptions asked for."""
    topic = topics.job_status(7)
    first: asyncio.Queue[Message] = asyncio.Queue()
    second: asyncio.Queue[Message] = asyncio.Queue()
    async with AsyncClient(broker.url) as c, AsyncClient(broker.url) as pub:
        await c.subscribe(topic, qos=1, handler=first.put_nowait)
        await c.subscribe(topic, qos=0, handler=second.put_nowait)
        await pub.publish(topic, b"s", qos=1)
        got = await asyncio.wait_for(first.get(), T)
        assert got.qos == 1, got
        assert (await asyncio.wait_for(second.get(), T)).payload == b"s"


async def test_a_second_subscription_to_a_filter_keeps_the_first_one_s_qos(
    broker: RunningBroker, instance: str
) -> None:
    await check_second_subscription_keeps_qos(broker, Topics(instance))
