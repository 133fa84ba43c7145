"""The CLI's own MQTT 3.1.1 session (transport/session.py) against real brokers.

amqtt (the embedded default) and Mosquitto: a request answered by an asyncio client of
the project, several requests and a retained message on one connection, payloads whose
length takes 1 to 3 bytes to encode, and the faults: nobody answers, the broker stops
mid-call, a malformed packet.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest

from tests.conftest import RunningBroker
from tomato_mqtt.config.url import BrokerURL
from tomato_mqtt.transport import oneshot
from tomato_mqtt.transport.client import AsyncClient, Message
from tomato_mqtt.transport.session import Session, SessionError
from tomato_mqtt.wire.messages import Reply, Request, decode, encode
from tomato_mqtt.wire.topics import Topics


@pytest.fixture(params=["amqtt", "mosquitto"])
def any_broker(request: pytest.FixtureRequest) -> RunningBroker:
    return request.getfixturevalue("broker" if request.param == "amqtt" else "mosquitto")  # type: ignore[no-any-return]


async def _echo(
    c: AsyncClient, topics: Topics, op: str, pending: list[asyncio.Future[None]]
) -> None:
    topic = topics.scheduler_cmd(op)

    def answer(msg: Message) -> None:
        req = decode(Request, msg.payload, msg.topic)
        reply = Reply(id=req.id, success=True, msg=op, data=req.args)
        pending.append(asyncio.ensure_future(c.publish(req.reply_to, encode(reply))))

    await c.subscribe(topic, handler=answer)


@pytest.mark.parametrize("size", [10, 200, 20_000, 3_000_000])
async def test_request_and_reply_of_every_length_encoding(
    any_broker: RunningBroker, instance: str, size: int
) -> None:
    topics = Topics(instance)
    url = BrokerURL.parse(any_broker.url)
    pending: list[asyncio.Future[None]] = []
    blob = "x" * size  # 10 B: 1-byte length; 200 B: 2; 20 kB: 3; 3 MB: 4
    async with AsyncClient(url) as c:
        await _echo(c, topics, "echo", pending)
        rep = await asyncio.to_thread(
            oneshot.request,
            url,
            topics.scheduler_cmd("echo"),
            topics.reply,
            {"b": blob},
            timeout=10,
        )
        await asyncio.gather(*pending)
    assert rep.success and rep.msg == "echo" and rep.data == {"b": blob}


async def test_exchange_asks_twice_and_reads_retained_on_one_connection(
    any_broker: RunningBroker, instance: str
) -> None:
    topics = Topics(instance)
    url = BrokerURL.parse(any_broker.url)
    pending: list[asyncio.Future[None]] = []
    meta = topics.component_meta("dev:(a,1)")
    async with AsyncClient(url) as c:
        await _echo(c, topics, "one", pending)
        await _echo(c, topics, "two", pending)
        await c.publish(meta, json.dumps({"name": "dev:(a,1)"}).encode(), retain=True)

        def go() -> tuple[Reply | oneshot.Reply, ...]:
            with oneshot.Exchange(url, topics.reply, timeout=5) as ex:
                a = ex.request(topics.scheduler_cmd("one"), {"n": 1}, timeout=5)
                raw = ex.retained(meta, 5)
                b = ex.request(topics.scheduler_cmd("two"), {"n": 2}, timeout=5)
                missing = ex.retained(topics.component_meta("dev:(nobody,1)"), 0.3)
            assert raw is not None and json.loads(raw) == {"name": "dev:(a,1)"}
            assert missing is None
            return a, b

        a, b = await asyncio.to_thread(go)
        await asyncio.gather(*pending)
    assert (a.msg, a.data) == ("one", {"n": 1})
    assert (b.msg, b.data) == ("two", {"n": 2})


async def test_nobody_answers_is_no_answer_in_time(
    any_broker: RunningBroker, instance: str
) -> None:
    topic = Topics(instance).scheduler_cmd("status")
    url = BrokerURL.parse(any_broker.url)
    with pytest.raises(oneshot.NoAnswer, match=rf"no scheduler answered on {topic} within 0.3 s"):
        await asyncio.to_thread(
            oneshot.request, url, topic, Topics(instance).reply, timeout=0.3, who="scheduler"
        )


async def test_broker_stopping_mid_call_is_a_clear_error_not_a_hang(
    broker: RunningBroker, instance: str
) -> None:
    topics = Topics(instance)
    url = BrokerURL.parse(broker.url)
    ex = oneshot.Exchange(url, topics.reply, timeout=5)
    await asyncio.to_thread(ex.__enter__)  # the broker runs in this loop: connect off it
    try:
        await broker.stop()
        with pytest.raises(oneshot.OneShotError) as err:
            await asyncio.to_thread(ex.request, topics.scheduler_cmd("status"), {}, timeout=5)
    finally:
        ex.__exit__(None, None, None)
    assert "NoAnswer" not in type(err.value).__name__  # the connection broke: said at once
    assert str(url) in str(err.value)


def test_a_malformed_length_is_refused() -> None:
    s = Session(BrokerURL(), "x")
    s._buf = bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01])  # a 5-byte remaining length
    with pytest.raises(SessionError, match="malformed packet"):
        s._split()
    s._buf = bytes([0x30, 0x80])  # incomplete: wait for more
    assert s._split() is None


def test_a_shutdown_from_another_thread_ends_a_wait_and_a_connect_yet_to_come() -> None:
    """`tomato start`'s wait (cli/ready.py): its supervisor gone, another thread shuts
    the session down; a read in progress ends at once, and so does a connect that had
    not made its socket yet (the port listens, nobody answers: it waited its timeout)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)  # accepted by the kernel, never served: CONNACK never comes
        url = BrokerURL(host="127.0.0.1", port=listener.getsockname()[1])
        early = Session(url, "t-early")
        early.shutdown()  # before its connect made a socket
        t0 = time.monotonic()
        with pytest.raises(SessionError, match="shut down"):
            early.connect(10.0)
        assert time.monotonic() - t0 < 2.0
        early.close()
        waiting = Session(url, "t-waiting")
        threading.Timer(0.3, waiting.shutdown).start()
        t0 = time.monotonic()
        with pytest.raises(SessionError):
            waiting.connect(10.0)  # waits for a CONNACK: ended by the shutdown
        assert time.monotonic() - t0 < 2.0
        waiting.close()


def test_a_host_name_that_is_not_known_is_said_as_such() -> None:
    """A newcomer's tour: ``-b mqtt://nosuchhost.invalid:1883`` read "Name or service not
    known — is tomato-mqtt running?": a broker that is down, not a name to check."""
    from tomato_mqtt.config.url import BrokerURL
    from tomato_mqtt.transport.session import Session, SessionExplained

    s = Session(BrokerURL.parse("mqtt://nosuchhost.invalid:1883"), "t-dns")
    with pytest.raises(SessionExplained) as e:
        s.connect(10.0)
    assert "cannot find the host 'nosuchhost.invalid'" in str(e.value), e.value
    assert "check its name" in str(e.value)
    s.close()
