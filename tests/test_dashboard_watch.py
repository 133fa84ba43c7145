"""What pages may make the dashboard ask the scheduler (found by a security audit: each
``{"t": "watch"}`` on the live socket asked for the whole job, payload included, without
a limit; 300 of them on 8 anonymous sockets took the dashboard to 1.4 GB and the
scheduler to 10 s of CPU). Measured here as requests that reach the scheduler."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.browser import running_dashboard
from tests.conftest import RunningBroker
from tests.inproc import client, inproc_stack
from tests.test_dashboard_cmd import _controls
from tomato_mqtt.services.dashboard import web
from tomato_mqtt.services.dashboard.service import QUEUE_BYTES_MAX, WATCH_BURST, Viewer
from tomato_mqtt.transport.client import AsyncClient
from tomato_mqtt.wire.topics import Topics

PLAIN = (
    "version: '2.2'\nuser: {identifier: u}\nsample: {identifier: s1}\nmethod: "
    "[{component_role: counter, technique_name: count, max_duration: 1,"
    " sampling_interval: 0.1}]\n"
)


async def _count(spy: AsyncClient, asked: list[str]) -> None:
    async for m in spy.messages():
        if "/cmd/job_status/" in m.topic:
            asked.append(m.topic)


async def _until(ws: aiohttp.ClientWebSocketResponse, t: str, job: int) -> list[Any]:
    """The page's messages up to the first ``t`` about ``job``."""
    seen = []
    while True:
        m = await ws.receive_json(timeout=10)
        seen.append(m)
        if m["t"] == t and m.get("id") == job:
            return seen


async def test_watches_without_limit_ask_the_scheduler_a_bounded_number_of_times(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    url = f"mqtt://127.0.0.1:{broker.port}"
    asked: list[str] = []
    async with (
        inproc_stack(broker.port, tmp_path / "st", instance) as st,
        running_dashboard(url, instance) as dash,
        client(url) as spy,
        aiohttp.ClientSession() as http,
    ):
        await _controls(dash)  # its login may read jobs: a watch asks for the whole job
        job = int((await st.call("job_submit", {"payload_text": PLAIN})).id)
        await spy.subscribe(Topics(instance).scheduler_cmds())
        counter = asyncio.ensure_future(_count(spy, asked))
        try:
            socks = [await http.ws_connect(dash.address() + "ws") for _ in range(8)]
            for ws in socks:
                assert (await ws.receive_json(timeout=10))["t"] == "hello"
            t0 = time.monotonic()
            for _ in range(40):  # 320 watches of one job on 8 sockets: one request
                for ws in socks:
                    await ws.send_json({"t": "watch", "job": job})
            for ws in socks:  # every page gets the whole job
                await _until(ws, "jobdata", job)
            assert time.monotonic() - t0 < 2, "took longer than a kept job is fresh"
            assert len(asked) == 1, asked
            # one socket opening 200 jobs in a row, then the one it stays on: a few
            # requests, pages opened at its rate, and it ends on the last it asked for
            ws = await http.ws_connect(dash.address() + "ws")
            socks.append(ws)
            assert (await ws.receive_json(timeout=10))["t"] == "hello"
            for other in range(1000, 1200):
                await ws.send_json({"t": "watch", "job": other})
            await ws.send_json({"t": "watch", "job": job})
            seen = await _until(ws, "jobdata", job)
            opened = [m["id"] for m in seen if m["t"] == "job"]
            assert opened[-1] == job and len(opened) <= WATCH_BURST + 4, opened
            assert len(asked) <= 1 + WATCH_BURST + 4, len(asked)
            # not ours: ignored, the socket stays open
            for junk in ("[1]", '{"t": "watch", "job": 1e999}', '{"t": "watch", "job": -1}'):
                await ws.send_str(junk)
            await ws.send_json({"t": "watch", "job": None})
            await ws.send_json({"t": "watch", "job": job})
            await _until(ws, "job", job)
            assert len(dash._fetching) <= 1 and len(dash._fetched) <= 2
            for w in socks:
                await w.close()
        finally:
            counter.cancel()
            await asyncio.gather(counter, return_exceptions=True)


def test_a_page_that_does_not_read_holds_a_bounded_queue() -> None:
    """A socket that reads nothing while it asks for job after job: its queue was bounded
    by count only (200 messages of a whole job each); now by size too, and the page is
    sent the full state again once it reads."""
    page = Viewer(session=None)  # type: ignore[arg-type]
    page.send({"t": "hello", "big": "x" * (2 * QUEUE_BYTES_MAX)})  # the first always goes
    assert not page.behind
    page.queue.get_nowait()
    page.queued = 0
    while not page.behind:
        page.send({"t": "jobdata", "job": "x" * 2**20})
    assert page.queued <= QUEUE_BYTES_MAX


_WS_HEADERS = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


async def test_pages_open_at_once_are_bounded(
    broker: RunningBroker, tmp_path: Path, instance: str, monkeypatch: Any
) -> None:
    # 4 places, one kept for signed-in users: 3 for pages nobody signed in to (100 such
    # pages from 7 addresses locked everyone out: an outside check)
    monkeypatch.setattr(web, "VIEWERS_MAX", 4)
    monkeypatch.setattr(web, "VIEWERS_SIGNED_IN", 1)
    url = f"mqtt://127.0.0.1:{broker.port}"
    async with running_dashboard(url, instance) as dash, aiohttp.ClientSession() as http:
        socks = [await http.ws_connect(dash.address() + "ws") for _ in range(3)]
        for ws in socks:
            assert (await ws.receive_json(timeout=10))["t"] == "hello"
        try:
            async with http.ws_connect(dash.address() + "ws"):
                raise AssertionError("a 4th page was served")
        except aiohttp.WSServerHandshakeError as e:
            assert e.status == 503, e
        async with aiohttp.ClientSession() as plain:
            resp = await plain.get(dash.address() + "ws", headers=_WS_HEADERS)
            assert resp.status == 503 and "or sign in" in await resp.text()
        await socks[0].close()
        for _ in range(100):  # its place is free again
            if len(dash.viewers) < 3:
                break
            await asyncio.sleep(0.05)
        async with http.ws_connect(dash.address() + "ws") as ws:
            assert (await ws.receive_json(timeout=10))["t"] == "hello"
        for ws in socks[1:]:
            await ws.close()


async def test_one_address_holds_only_a_few_pages(
    broker: RunningBroker, tmp_path: Path, instance: str, monkeypatch: Any
) -> None:
    """A review: one address could hold all the pages (the limit was global only), so
    one client on the lab network locked every user out with idle sockets."""
    monkeypatch.setattr(web, "VIEWERS_PER_ADDRESS", 2)
    url = f"mqtt://127.0.0.1:{broker.port}"
    async with running_dashboard(url, instance) as dash, aiohttp.ClientSession() as http:
        socks = [await http.ws_connect(dash.address() + "ws") for _ in range(2)]
        for ws in socks:
            assert (await ws.receive_json(timeout=10))["t"] == "hello"
        try:
            async with http.ws_connect(dash.address() + "ws"):
                raise AssertionError("a 3rd page of one address was served")
        except aiohttp.WSServerHandshakeError as e:
            assert e.status == 429, e
        for ws in socks:
            await ws.close()


async def test_a_page_that_floods_its_socket_is_closed(
    broker: RunningBroker, instance: str
) -> None:
    """A security round: 16 pages nobody signed in to sent 524,800 messages in 10 s, each
    parsed, for half a core of the dashboard's. A socket that sends more than
    WS_MESSAGES_PER_S in a second is closed (1008); a page sends one per click."""
    url = f"mqtt://127.0.0.1:{broker.port}"
    async with running_dashboard(url, instance) as dash, aiohttp.ClientSession() as http:
        calm = await http.ws_connect(dash.address() + "ws")
        ws = await http.ws_connect(dash.address() + "ws")
        for each in (calm, ws):
            assert (await each.receive_json(timeout=10))["t"] == "hello"
        for _ in range(3 * web.WS_MESSAGES_PER_S):  # (over a second of a slow machine too)
            await ws.send_str("[1]")
        while True:
            m = await ws.receive(timeout=10)
            if m.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                break
        assert ws.close_code == web.WS_TOO_MANY, ws.close_code
        await calm.send_json({"t": "watch", "job": None})  # the other page is served on
        assert not calm.closed
        await calm.close()


async def test_going_back_to_the_overview_costs_no_watch(
    broker: RunningBroker, tmp_path: Path, instance: str
) -> None:
    """A review: a page going back to the overview (``job: null``) spent one of its
    watches a second, so the next job it opened could wait."""
    url = f"mqtt://127.0.0.1:{broker.port}"
    async with running_dashboard(url, instance) as dash:
        page = Viewer(session=None)  # type: ignore[arg-type]
        page.job, page.allowance = 5, 1.0
        dash.ask_watch(page, None)
        assert page.job is None and not page.wanting
        assert page.allowance >= 1.0, page.allowance  # its one token is still there
