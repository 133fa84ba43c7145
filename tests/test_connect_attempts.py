"""Connecting to a broker that takes the TCP connection and never answers (frozen).

Found by an outside check: a node started against a frozen broker (SIGSTOPped Mosquitto,
a server that accepts and says nothing) waited for the CONNACK without end and without
a word: the per-attempt wait was the whole connect timeout (a year for a node). Each
attempt is now bounded (``ATTEMPT_MAX``), so the failure is told (``on_retry``: the
services log it) and the attempt made again.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.stack import free_port
from tomato_mqtt.transport import client as client_mod
from tomato_mqtt.transport.client import AsyncClient, MqttError


async def test_a_broker_that_never_answers_is_told_and_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_mod, "ATTEMPT_MAX", 0.5, raising=False)
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.append(w)  # takes the connection and the CONNECT, answers nothing

    port = free_port()
    server = await asyncio.start_server(silent, "127.0.0.1", port)
    failures: list[Exception] = []
    c = AsyncClient(f"mqtt://127.0.0.1:{port}", client_id="frozen-probe", reconnect=False)
    try:
        with pytest.raises(MqttError):
            await c.connect(timeout=3.0, retry=True, on_retry=failures.append)
        # told at each attempt and tried again (before: one attempt, silent, 3 s long)
        assert len(failures) >= 3, failures
        assert len(accepted) >= 3, len(accepted)
    finally:
        with contextlib.suppress(Exception):
            await c.disconnect()
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()
