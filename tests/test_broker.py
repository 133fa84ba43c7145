"""The embedded broker: retained messages reach only clients that subscribed to them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import AmqttBroker, RunningBroker
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


async def test_a_message_is_delivered_at_most_at_its_published_qos(
    broker: RunningBroker, instance: str
) -> None:
    """MQTT 3.1.1 delivers at min(published, granted) QoS [MQTT-3.8.4-6]: amqtt 0.12
    delivered at the subscription's, so a QoS 0 publish reached a QoS 2 subscriber as
    QoS 2 (an outside audit; Mosquitto was right)."""
    topic = f"tomato/v2/{instance}/qos/probe"
    async with AsyncClient(broker.url) as sub, AsyncClient(broker.url) as pub:
        await sub.subscribe(topic, qos=2)
        got: list[int] = []
        for qos in (0, 1, 2):
            await pub.publish(topic, f"q{qos}".encode(), qos=qos)
            got.append((await sub.next_message(5)).qos)
        assert got == [0, 1, 2], got


async def test_an_open_stack_s_websocket_listener_takes_no_page_of_another_site(
    tmp_path: object,
) -> None:
    """Found by a security review: on an open stack (no logins, the default) any web page
    the lab PC's browser opened could connect to the broker's WebSocket listener and, as
    every client there may, stop the stack. Browsers send their page's Origin: only this
    PC's own pages are taken; MQTT clients (no Origin) as before."""
    import websockets
    from tomato_mqtt_broker import BrokerConfig, EmbeddedBroker

    from tests.stack import free_port

    ws = free_port()
    b = EmbeddedBroker(BrokerConfig(port=free_port(), ws_port=ws))
    await b.start()
    try:
        uri = f"ws://127.0.0.1:{ws}/"
        for origin in ("http://evil.example", "http://127.0.0.1.evil.example:8765", "null"):
            try:
                async with websockets.connect(uri, subprotocols=["mqtt"], origin=origin):  # type: ignore[list-item,arg-type]
                    raise AssertionError(f"a page of {origin} was let in")
            except websockets.InvalidStatus as e:
                assert e.response.status_code == 403, e
        for local in (None, "http://localhost:8765", "http://127.0.0.1:9000"):
            async with websockets.connect(uri, subprotocols=["mqtt"], origin=local) as c:  # type: ignore[list-item,arg-type]
                assert c.subprotocol == "mqtt"
        async with AsyncClient(f"ws://127.0.0.1:{ws}") as c:  # an MQTT client over WebSockets
            assert c.is_connected
    finally:
        await b.stop()


@pytest.mark.parametrize("secured", [False, True])
async def test_a_paho_client_over_websockets_stays_connected_past_20_s(
    tmp_path: Path, secured: bool
) -> None:
    """Found chasing a `passata get` over ws:// that waited in vain: the WebSocket
    listener pinged every 20 s (websockets' default), paho read the ping's payload as
    MQTT bytes and dropped the connection, so every paho client over WebSockets was cut
    off every 20 s and reconnected, losing what it had asked. The listener sends no
    pings (MQTT's keep-alive does that job); a client idle for 22 s stays connected."""
    import threading

    import paho.mqtt.client as paho
    from tomato_mqtt_broker import BrokerConfig, EmbeddedBroker

    from tests.security_env import USERS, write_users
    from tests.stack import free_port

    ws = free_port()
    users = str(write_users(tmp_path / "users").path) if secured else None
    b = EmbeddedBroker(BrokerConfig(port=free_port(), ws_port=ws, password_file=users))
    await b.start()
    try:
        events: list[str] = []
        up = threading.Event()
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="idle", transport="websockets")
        if secured:
            c.username_pw_set("rita", USERS["rita"][0])
        c.on_connect = lambda *a: (events.append(f"connect {a[3]}"), up.set())
        c.on_disconnect = lambda *a: events.append(f"disconnect {a[3]}")
        # (the handshake blocks: off the loop that serves the broker)
        await asyncio.to_thread(c.connect, "127.0.0.1", ws, keepalive=60)
        c.loop_start()
        try:
            assert await asyncio.to_thread(up.wait, 10), events
            await asyncio.sleep(22)
            assert events == ["connect Success"], events
        finally:
            # (off the loop that serves the broker: paho's WebSocket close waits for the
            # broker's answer, and blocked here it hung the test's loop for good, a CI run)
            await asyncio.to_thread(c.disconnect)
            await asyncio.to_thread(c.loop_stop)
    finally:
        await b.stop()


async def test_a_connection_that_is_no_websocket_handshake_is_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A fault run: a `tomato start` on the port next to a running stack's (its WebSocket
    listener) asked there whether a scheduler answers, and left two tracebacks of three
    parts each in that stack's broker.log. One line each now, saying what happened."""
    from tomato_mqtt_broker import BrokerConfig, EmbeddedBroker

    from tests.stack import free_port

    ws = free_port()
    b = EmbeddedBroker(BrokerConfig(port=free_port(), ws_port=ws))
    await b.start()
    try:
        _r, w = await asyncio.open_connection("127.0.0.1", ws)  # an MQTT CONNECT, as a probe
        w.write(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")
        await w.drain()
        await asyncio.sleep(0.3)
        w.close()
        for _ in range(50):
            if "WebSocket listener was refused" in caplog.text:
                break
            await asyncio.sleep(0.05)
    finally:
        await b.stop()
    said = [r for r in caplog.records if r.name == "websockets.server"]
    assert said and all(r.exc_info is None for r in said), caplog.text
    assert "did not receive a valid HTTP request" in said[0].getMessage(), caplog.text
    assert "Traceback" not in caplog.text, caplog.text


async def test_filters_nobody_holds_leave_nothing_in_the_broker() -> None:
    """A soak: the embedded broker grew ~1 MB per 1,000 jobs for good. amqtt kept an
    empty entry (and its key) for every topic filter once unsubscribed, also after the
    client disconnected: the client library's Job.wait subscribes to two filters per job
    and unsubscribes. Filters nobody holds now go; those still held stay."""
    from tomato_mqtt_broker import BrokerConfig, EmbeddedBroker

    from tests.stack import free_port

    port = free_port()
    b = EmbeddedBroker(BrokerConfig(port=port, ws_port=0))
    await b.start()
    try:
        table = b._broker._subscriptions
        async with AsyncClient(f"mqtt://127.0.0.1:{port}") as other:
            await other.subscribe("lab/keep/#")
            async with AsyncClient(f"mqtt://127.0.0.1:{port}") as c:
                await c.subscribe("lab/keep/#")
                before = len(table)
                for i in range(300):
                    await c.subscribe(f"lab/job/{i}/status")
                    await c.unsubscribe(f"lab/job/{i}/status")
                assert len(table) == before, len(table)  # 300 more before
                for i in range(50):  # held when the client goes
                    await c.subscribe(f"lab/held/{i}")
                assert len(table) == before + 50
            for _ in range(100):
                if len(table) < before + 50:
                    break
                await asyncio.sleep(0.05)
            assert set(table) == {"lab/keep/#"}, sorted(table)[:5]
            assert [s.client_id for s, _qos in table["lab/keep/#"]] == [other.client_id]
            got: list[bytes] = []
            await other.subscribe("lab/keep/x", handler=lambda m: got.append(m.payload))
            await other.publish("lab/keep/x", b"still routed", qos=1)
            for _ in range(100):
                if got:
                    break
                await asyncio.sleep(0.05)
            assert got and got[0] == b"still routed", got
    finally:
        await b.stop()


def test_the_filter_tree_offers_exactly_the_filters_amqtt_matches() -> None:
    """The broker finds a topic's subscribers through a tree of the filters' levels
    (``_offered``) and amqtt's own match: the same filters as amqtt's match of every one,
    for random filters and topics with wildcards, empty levels, ``$`` topics and
    malformed filters."""
    import logging
    import random
    import types

    from amqtt.broker import Broker
    from tomato_mqtt_broker.server import _filter_tree, _offered

    rng = random.Random(15)
    me = types.SimpleNamespace(logger=logging.getLogger("test-broker-matching"))

    def match(topic: str, f: str) -> bool:
        return bool(Broker._matches(me, topic, f))  # type: ignore[arg-type]

    words = ["a", "b", "c", "", "$SYS", "tomato", "\0"]
    levels = [*words, "+", "+", "#", "a+", "#b"]
    for _ in range(300):
        filters = {
            "/".join(rng.choice(levels) for _ in range(rng.randint(1, 4)))
            for _ in range(rng.randint(1, 30))
        }
        tree = _filter_tree(filters)
        for _ in range(20):
            # a '+' or '#' level: a last will's topic (amqtt refuses them only in a PUBLISH)
            topic = "/".join(rng.choice([*words, "+", "#"]) for _ in range(rng.randint(1, 5)))
            want = {f for f in filters if match(topic, f)}
            got = [f for f in _offered(tree, topic.split("/")) if match(topic, f)]
            assert len(got) == len(set(got)), (topic, got)
            assert set(got) == want, (topic, sorted(filters))
    # a filter ending in '#' also matches its parent level [MQTT-4.7.1-2]
    assert list(_offered(_filter_tree(["a/#"]), ["a"])) == ["a/#"]


async def test_a_subscription_made_after_a_topic_was_broadcast_gets_its_next_message(
    broker: RunningBroker, instance: str
) -> None:
    """The broker remembers which filters a topic matched: a filter added (or removed)
    since must count for that topic's next message."""
    topic = f"tomato/v2/{instance}/component/x/data"
    async with AsyncClient(broker.url) as pub, AsyncClient(broker.url) as early:
        await early.subscribe(topic)
        await pub.publish(topic, b"1")
        assert (await early.next_message(5)).payload == b"1"  # the topic's filters are known
        marker = f"tomato/v2/{instance}/marker"
        async with AsyncClient(broker.url) as late:
            await late.subscribe(f"tomato/v2/{instance}/component/+/data")
            await late.subscribe(marker)
            await pub.publish(topic, b"2")
            assert (await late.next_message(5)).payload == b"2"
            assert (await early.next_message(5)).payload == b"2"
            await late.unsubscribe(f"tomato/v2/{instance}/component/+/data")
            await pub.publish(topic, b"3")
            await pub.publish(marker, b"m")
            assert (await early.next_message(5)).payload == b"3"
            assert (await late.next_message(5)).topic == marker  # not "3"


def test_a_topic_of_many_plus_levels_is_matched_in_linear_time() -> None:
    """A '+' level of a topic follows the tree's '+' child once: twice (as its own level
    and as '+') doubled the nodes at every level, and a last will on ``+/+/.../+`` (22
    levels) stopped the broker for 2.7 s (a review)."""
    import threading

    from tomato_mqtt_broker.server import _filter_tree, _offered

    plus = "/".join(["+"] * 60)
    tree = _filter_tree([plus, "#", "a/#"])
    got: list[dict[str, None]] = []
    t = threading.Thread(target=lambda: got.append(_offered(tree, plus.split("/"))), daemon=True)
    t.start()
    t.join(5.0)
    assert not t.is_alive(), "matching 60 '+' levels did not end within 5 s"
    assert set(got[0]) == {plus, "#"}


async def test_filters_with_a_nul_level_stop_no_one_s_messages(
    broker: RunningBroker, instance: str
) -> None:
    """amqtt takes U+0000 in a filter: the tree kept the filters ending at a node under
    the key "\0", and a filter ``x/\0`` beside ``x`` broke every later broadcast, for
    every client (a review). Nor does a topic with such a level lose its message."""
    root = f"tomato/v2/{instance}"
    async with AsyncClient(broker.url) as odd, AsyncClient(broker.url) as other:
        await other.subscribe(f"{root}/#")
        await odd.subscribe(f"{root}/x")
        await odd.subscribe(f"{root}/x/\0")
        for topic in (f"{root}/x", f"{root}/y", f"{root}/x/\0"):
            await odd.publish(topic, b"1")
            assert (await other.next_message(5)).topic == topic
        got = {(await odd.next_message(5)).topic for _ in range(2)}
        assert got == {f"{root}/x", f"{root}/x/\0"}


async def test_a_last_will_on_a_wildcard_topic_is_refused(
    broker: RunningBroker, instance: str
) -> None:
    """A last will is published as any message, and a message's topic has no wildcards
    [MQTT-3.3.2-2]: amqtt refused them in a PUBLISH and took them in a will."""
    from tomato_mqtt.transport.client import Will
    from tomato_mqtt.transport.types import MqttError

    will = Will(f"tomato/v2/{instance}/+/status", b"gone")
    c = AsyncClient(broker.url, will=will)
    with pytest.raises(MqttError):
        await c.connect(timeout=5)
    await c.disconnect()
    async with AsyncClient(broker.url, will=Will(f"tomato/v2/{instance}/a/status", b"gone")):
        pass  # a will on a plain topic is taken


async def test_a_long_topic_is_matched_but_not_remembered(
    broker: RunningBroker, instance: str
) -> None:
    """A topic may be 64 KB long: remembering 4,096 of them held ~270 MB (a review)."""
    from tomato_mqtt_broker.server import MATCHED_TOPIC_CHARS

    long = f"tomato/v2/{instance}/" + "l" * MATCHED_TOPIC_CHARS
    async with AsyncClient(broker.url) as c:
        await c.subscribe(f"tomato/v2/{instance}/#")
        await c.publish(long, b"1")
        assert (await c.next_message(5)).topic == long
        await c.publish(f"tomato/v2/{instance}/short", b"2")
        assert (await c.next_message(5)).topic == f"tomato/v2/{instance}/short"
    assert isinstance(broker, AmqttBroker) and broker._broker is not None
    matched = broker._broker._broker._matched
    assert f"tomato/v2/{instance}/short" in matched and long not in matched


async def test_a_start_failing_without_words_names_what_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A chaos run's `tomato start` failed with "cannot start the embedded MQTT broker on
    127.0.0.1:21238: Broker instance can't be started:" and nothing after the colon:
    amqtt wraps what failed in its own sentence, and that exception had no text. The
    error names the type of what failed then, and a failure with text is said once."""
    import amqtt.broker
    from tomato_mqtt_broker import BrokerConfig, EmbeddedBroker

    from tests.stack import free_port

    faults: list[Exception] = [TimeoutError(), OSError(98, "Address already in use")]

    async def fails(self: object, *args: object) -> None:
        raise faults[0]

    monkeypatch.setattr(amqtt.broker.Broker, "_create_server_instance", fails)
    said = []
    for _ in range(2):
        b = EmbeddedBroker(BrokerConfig(port=free_port(), ws_port=0))
        with pytest.raises(OSError) as e:
            await b.start()
        said.append(str(e.value).split(": ", 1)[1])
        faults.pop(0)
    assert said == [
        "Broker instance can't be started: TimeoutError",
        "Broker instance can't be started: [Errno 98] Address already in use",
    ], said
