"""The CLI's one-shot requests to the scheduler are sent again while no answer comes
(``oneshot.RESEND_AFTER``), so a scheduler that (re)starts meanwhile gets them: the
broker drops a request while nobody subscribes to its topic. A real embedded broker and
a real responder that starts late; over WebSockets, a link that delays the broker's
bytes (a copy sent before the reply subscription was answered into nothing, and the
real request then dropped as a duplicate: found by a review)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from tomato_mqtt_broker import BrokerConfig, EmbeddedBroker

from tests.stack import free_port
from tomato_mqtt.config.url import BrokerURL
from tomato_mqtt.transport import oneshot
from tomato_mqtt.transport.client import AsyncClient, Message
from tomato_mqtt.transport.rpc import Responder, Result
from tomato_mqtt.wire.topics import Topics


@contextlib.asynccontextmanager
async def _broker(instance: str) -> AsyncIterator[tuple[int, int]]:
    port, ws = free_port(), free_port()
    b = EmbeddedBroker(BrokerConfig(host="127.0.0.1", port=port, ws_port=ws, instance=instance))
    await b.start()
    try:
        yield port, ws
    finally:
        await b.stop()


async def _responder(port: int, topics: Topics, calls: list[float]) -> AsyncClient:
    """A scheduler-like responder of one op, ``ping``: counts the calls it runs."""
    c = AsyncClient(f"mqtt://127.0.0.1:{port}")
    await c.connect(timeout=10)

    async def ping(_args: object) -> Result:
        calls.append(time.monotonic())
        return Result("pong", {"ok": True})

    resp = Responder(c, topics, {"ping": ping}, name="scheduler")
    pending: set[asyncio.Task[None]] = set()

    def on_msg(m: Message) -> None:
        t = asyncio.ensure_future(resp.handle(m, "ping"))
        pending.add(t)
        t.add_done_callback(pending.discard)

    await c.subscribe(topics.scheduler_cmds(), handler=on_msg)
    return c


async def _ping(url: BrokerURL, topics: Topics) -> oneshot.Reply:
    """The CLI's one-shot request to the scheduler (resent while unanswered), in a thread."""
    return await asyncio.to_thread(
        oneshot.request,
        url,
        topics.scheduler_cmd("ping"),
        topics.reply,
        {},
        timeout=10,
        who="scheduler",
        resend=True,
    )


async def test_a_request_sent_before_the_scheduler_listens_is_answered(instance: str) -> None:
    topics = Topics(instance)
    calls: list[float] = []
    async with _broker(instance) as (port, _ws):
        url = BrokerURL.parse(f"mqtt://127.0.0.1:{port}")
        ask = asyncio.create_task(_ping(url, topics))
        await asyncio.sleep(1.5)  # the first send went to nobody: the broker dropped it
        late = await _responder(port, topics, calls)
        try:
            reply = await ask
            assert reply.success and reply.msg == "pong"
            assert len(calls) == 1  # the copies that reached it ran once
            # without resend, as before for a node's ops: nobody answers the first send
            with pytest.raises(oneshot.NoAnswer):
                await asyncio.to_thread(
                    oneshot.request,
                    url,
                    "tomato/v2/nobody/cmd",
                    topics.reply,
                    {},
                    timeout=1.5,
                    who="nobody",
                )
        finally:
            await late.disconnect()


async def test_a_slow_websocket_link_is_answered_once(instance: str) -> None:
    topics = Topics(instance)
    calls: list[float] = []

    async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, delay: float) -> None:
        try:
            while data := await r.read(65536):
                await asyncio.sleep(delay)
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    async with _broker(instance) as (port, ws):

        async def link(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
            br, bw = await asyncio.open_connection("127.0.0.1", ws)
            await asyncio.gather(pump(cr, bw, 0.0), pump(br, cw, 0.6))  # 0.6 s each way back

        proxy = free_port()
        server = await asyncio.start_server(link, "127.0.0.1", proxy)
        resp = await _responder(port, topics, calls)
        try:
            url = BrokerURL.parse(f"ws://127.0.0.1:{proxy}")
            reply = await _ping(url, topics)
            assert reply.success and reply.msg == "pong"
            assert len(calls) == 1
        finally:
            await resp.disconnect()
            server.close()
